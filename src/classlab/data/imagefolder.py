"""``imagefolder``: your own pictures in class folders, brought to one square size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classlab.config import DataConfig
from classlab.data.base import Arrays, ArraysWithVal, DataError

# --------------------------------------------------------------------------- imagefolder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_LAYOUT = "expected <dir>/train/<class>/*.png|jpg, <dir>/test/<class>/*, optional <dir>/val/"


def visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)


def _to_rgb(img):
    """RGB of any Pillow mode. 16- and 32-bit integer greys (``I;16``, ``I``) are scaled to
    8 bits first: Pillow's own conversion clips them at 255 (a mostly white picture)."""
    from PIL import Image

    if img.mode.startswith("I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() <= 65535 else float(a.max())
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def read_image(path: Path, size: int, mode: str = "resize") -> np.ndarray:
    """One picture as uint8 ``[size, size, 3]`` RGB, loaded with Pillow (EXIF orientation
    applied; palette, grey and alpha images converted to RGB).

    ``mode``: ``resize`` scales to ``size x size`` (aspect ratio not kept);
    ``center_crop`` scales the shorter side to ``size`` (aspect kept), then keeps the
    central ``size x size`` square. Both resample bilinearly (antialiased when shrinking).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as f:
            img = _to_rgb(ImageOps.exif_transpose(f))
        w, h = img.size
        if mode == "center_crop":
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.resize((nw, nh), Image.Resampling.BILINEAR).crop(
                (left, top, left + size, top + size))
        elif mode == "resize":
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        else:
            raise DataError(f"data.resize: unknown value {mode!r}; allowed: resize, "
                            "center_crop")
        arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read the image: {e}") from None
    if arr.shape != (size, size, 3):  # pragma: no cover - Pillow always gives this
        raise DataError(f"{path}: unexpected image shape {arr.shape}")
    return arr


def _read_split(split_dir: Path, classes: list[str], size: int, mode: str,
                root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``split_dir/<class>/``, as uint8 ``[N,3,size,size]`` and labels."""
    index = {c: i for i, c in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    for d in visible_dirs(split_dir):
        if d.name not in index:
            raise DataError(f"{d}: class {d.name!r} is not in {root / 'train'} (train classes: "
                            f"{', '.join(classes)})")
        found = image_files(d)
        if split_dir.name == "train" and not found:
            raise DataError(f"{d}: no images ({', '.join(IMAGE_SUFFIXES)})")
        files += [(p, index[d.name]) for p in found]
    if not files:
        raise DataError(f"{split_dir}: no images in class folders; {_LAYOUT}")
    x = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (p, _) in enumerate(files):
        x[i] = read_image(p, size, mode)
    y = np.array([label for _, label in files], dtype=np.int64)
    return (torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
            torch.from_numpy(y))


def read_image_folder(root: Path, size: int = 32,
                      mode: str = "resize") -> Arrays | ArraysWithVal:
    """Read ``root/train/<class>/*``, ``root/test/<class>/*`` and, when present,
    ``root/val/<class>/*``. Classes are the sorted folder names under ``train/`` (the same
    label numbers for every split); a test or val class missing from train is an error, a
    split may lack some classes. Files are read in name order; other files and hidden
    entries are ignored. Returns :data:`Arrays`, or :data:`ArraysWithVal` with a ``val/``."""
    root = Path(root)
    train_dir, test_dir, val_dir = root / "train", root / "test", root / "val"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DataError(f"{d}: missing; {_LAYOUT}")
    classes = [d.name for d in visible_dirs(train_dir)]
    if not classes:
        raise DataError(f"{train_dir}: no class folders; {_LAYOUT}")
    try:
        from PIL import Image  # noqa: F401
    except ImportError:
        raise DataError("data.name=imagefolder needs Pillow: pip install pillow") from None
    x_train, y_train = _read_split(train_dir, classes, size, mode, root)
    x_test, y_test = _read_split(test_dir, classes, size, mode, root)
    if not val_dir.is_dir():
        return x_train, y_train, x_test, y_test, classes
    x_val, y_val = _read_split(val_dir, classes, size, mode, root)
    return x_train, y_train, x_test, y_test, classes, x_val, y_val


def load_imagefolder(cfg: DataConfig, root: Path) -> Arrays | ArraysWithVal:
    return read_image_folder(root, cfg.image_size, cfg.resize)


def count_images(root: Path) -> tuple[int, bool]:
    """(pictures under ``root/train/<class>/``, whether ``root/val/`` exists) without reading
    any picture: what a schedule trace needs to know of the training set."""
    train_dir = Path(root) / "train"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: missing; {_LAYOUT}")
    n = sum(len(image_files(d)) for d in visible_dirs(train_dir))
    return n, (Path(root) / "val").is_dir()

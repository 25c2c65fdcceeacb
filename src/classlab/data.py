"""Datasets: CIFAR-10 and CIFAR-100 (binary or Python pickles, optional download), your own
pictures in class folders (``imagefolder``) and a synthetic stand-in.

Everything is held in memory as uint8 tensors ``[N, 3, H, W]`` (32x32 except imagefolder's
``data.image_size``) with int64 labels; the trainer normalises with the train split's
per-channel ``mean``/``std``. Loading is deterministic: the validation split and the subset
are stratified and seeded by ``data.seed`` only, so the same config always yields identical
tensors.

Every failure a user can cause (missing or corrupted files, a bad download, an unsafe
archive) is raised as :class:`DataError` with a one-line message naming the file or URL.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from classlab.config import DataConfig


class DataError(RuntimeError):
    """One-line, user-facing message (no traceback is shown to users)."""


# Published MD5s of the official files. The readers look these tables up at call time, so a
# test can monkeypatch them with the MD5s of its own small files; checking is never skipped.
CIFAR10_BIN_MD5S: dict[str, str] = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
CIFAR10_PY_MD5S: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddbe9f1e0b2c0ab8ff8d",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"  # cifar-10-python.tar.gz

PY_FOLDER = "cifar-10-batches-py"
BIN_FOLDER = "cifar-10-batches-bin"
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_TEST_BATCH = "test_batch"
_IMG = 3 * 32 * 32  # bytes per image: 1024 R, then 1024 G, then 1024 B, each row-major
_REDOWNLOAD = "delete it and download again"

# (x_train uint8 [N,3,32,32], y_train int64 [N], x_test, y_test, class names)
Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]
# ... followed by (x_val, y_val): a dataset that comes with its own validation split
ArraysWithVal = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str],
                      torch.Tensor, torch.Tensor]


@dataclass
class Splits:
    train_x: torch.Tensor  # uint8 [N,3,H,W], CPU
    train_y: torch.Tensor  # int64 [N]
    val_x: torch.Tensor  # uint8 [M,3,H,W] (M may be 0)
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]  # per-channel mean of the train split's pixels / 255
    std: tuple[float, float, float]  # per-channel (population) std of the same


def default_data_dir() -> Path:
    """``$CLASSLAB_DATA`` if set and non-empty, else ``~/.cache/classlab``."""
    env = os.environ.get("CLASSLAB_DATA", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "classlab"


# --------------------------------------------------------------------------- file reading


def _read_checked(path: Path, md5s: Mapping[str, str]) -> bytes:
    """The file's bytes, after checking its MD5 against ``md5s[path.name]``.

    Reading once and hashing the in-memory bytes costs ~0.3 s for all of CIFAR-10 (180 MB).
    """
    if not path.is_file():
        raise DataError(f"{path}: missing; {_REDOWNLOAD}")
    expected = md5s.get(path.name)
    if expected is None:
        raise DataError(f"{path}: no expected checksum known for this file name")
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if hashlib.md5(buf).hexdigest() != expected:
        raise DataError(f"{path}: checksum mismatch (file truncated or corrupted); {_REDOWNLOAD}")
    return buf


def _check_labels(path: Path, y: np.ndarray, n_classes: int) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(f"{path}: labels outside 0..{n_classes - 1}; {_REDOWNLOAD}")


def _to_tensors(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.ascontiguousarray(np.concatenate(xs)).reshape(-1, 3, 32, 32)
    y = np.concatenate(ys).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _class_names(meta: Path) -> list[str]:
    """Class names of a binary release: one a line, blank lines skipped."""
    try:
        classes = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{meta}: cannot read class names: {getattr(e, 'strerror', None) or e}"
                        ) from None
    if not classes:
        raise DataError(f"{meta}: no class names in it")
    return classes


def read_cifar10_bin(folder: Path, md5s: Mapping[str, str] | None = None) -> Arrays:
    """Read the binary CIFAR-10 release (``cifar-10-batches-bin``).

    Each record is 3073 bytes: a label byte, then the image as 3 planes (R, G, B) of 32x32
    row-major bytes, which is exactly ``[3, 32, 32]`` C order. ``md5s`` maps file names to
    expected MD5s (default: :data:`CIFAR10_BIN_MD5S`, the published ones).
    """
    folder = Path(folder)
    md5s = CIFAR10_BIN_MD5S if md5s is None else md5s
    classes = _class_names(folder / "batches.meta.txt")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / f"{name}.bin"
        buf = _read_checked(path, md5s)
        if len(buf) == 0 or len(buf) % (1 + _IMG):
            raise DataError(f"{path}: wrong size {len(buf)} bytes (not whole 3073-byte records);"
                            f" {_REDOWNLOAD}")
        rec = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 1 + _IMG)  # [n, 3073], no copy
        y = rec[:, 0].astype(np.int64)
        _check_labels(path, y, len(classes))
        return rec[:, 1:], y

    parts = [batch(n) for n in _TRAIN_BATCHES]
    x_train, y_train = _to_tensors([p[0] for p in parts], [p[1] for p in parts])
    xt, yt = batch(_TEST_BATCH)
    x_test, y_test = _to_tensors([xt], [yt])
    return x_train, y_train, x_test, y_test, classes


def _numpy_core():  # numpy >= 2 moved numpy.core to numpy._core (the old name warns)
    try:
        from numpy import _core as core
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy import core
    return core


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts/lists/numbers/bytes and numpy arrays, never arbitrary callables.

    The batch files' MD5s are checked first, but batches.meta is not in the published table,
    and a pickle can run code: allow exactly what numpy array pickles (Python 2 or 3) need.
    """

    def find_class(self, module: str, name: str):
        core = _numpy_core()
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of Python 3 bytes
        }
        for mod in ("numpy.core", "numpy._core"):
            allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
            allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed") from None


def _unpickle(path: Path, buf: bytes, what: str = "CIFAR-10") -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(buf), encoding="bytes").load()
    except Exception as e:  # any malformed pickle: report the file, one line
        raise DataError(f"{path}: not a {what} pickle ({type(e).__name__}); {_REDOWNLOAD}"
                        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a {what} pickle (no dict inside); {_REDOWNLOAD}")
    return obj


def _pickled_batch(path: Path, md5s: Mapping[str, str], label_key: bytes, n_classes: int,
                   *release: str) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 [N,3072], y int64 [N]) of one checked python-release pickle; ``label_key`` is
    b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100)."""
    d = _unpickle(path, _read_checked(path, md5s), *release)
    key = label_key.decode()
    try:
        x = np.asarray(d[b"data"])
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: no data/{key} in it; {_REDOWNLOAD}") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != _IMG or y.shape != x.shape[:1]:
        raise DataError(f"{path}: unexpected data {x.dtype}{list(x.shape)} with "
                        f"{y.size} labels; {_REDOWNLOAD}")
    _check_labels(path, y, n_classes)
    return x, y


def read_cifar10_py(folder: Path, md5s: Mapping[str, str] | None = None) -> Arrays:
    """Read the Python CIFAR-10 release (``cifar-10-batches-py``, as torchvision unpacks it).

    Each batch is a pickled dict with ``b"data"`` (uint8 ``[n, 3072]``, same R/G/B plane
    layout as the binary release) and ``b"labels"``; ``batches.meta`` holds
    ``b"label_names"``. ``md5s`` defaults to :data:`CIFAR10_PY_MD5S`.
    """
    folder = Path(folder)
    md5s = CIFAR10_PY_MD5S if md5s is None else md5s
    meta_path = folder / "batches.meta"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; {_REDOWNLOAD}")
    meta = _unpickle(meta_path, meta_path.read_bytes())
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except (KeyError, TypeError, UnicodeDecodeError):
        raise DataError(f"{meta_path}: no label_names in it; {_REDOWNLOAD}") from None

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _pickled_batch(folder / name, md5s, b"labels", len(classes))

    parts = [batch(n) for n in _TRAIN_BATCHES]
    x_train, y_train = _to_tensors([p[0] for p in parts], [p[1] for p in parts])
    xt, yt = batch(_TEST_BATCH)
    x_test, y_test = _to_tensors([xt], [yt])
    return x_train, y_train, x_test, y_test, classes


# --------------------------------------------------------------------------- download


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract ``tar`` into ``dest``, refusing anything but plain files and folders inside it.

    All members are checked before anything is written, so a rejected archive leaves
    ``dest`` untouched. Rejected: absolute paths (POSIX or Windows style), any ``..``
    component, symlinks, hardlinks, devices, fifos and other special members.
    """
    dest = Path(dest)
    root = dest.resolve()
    members = tar.getmembers()
    for m in members:
        name = m.name
        why = None
        if not name:
            why = "empty name"
        elif name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
            why = "absolute path"
        elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
            why = "'..' in path"
        elif m.issym() or m.islnk():
            why = "link"
        elif not (m.isfile() or m.isdir()):
            why = "special file (device, fifo, ...)"
        elif not (root / name).resolve().is_relative_to(root):
            why = "outside the destination"
        if why:
            raise DataError(f"unsafe archive member {name!r}: {why}; refusing to extract")
    dest.mkdir(parents=True, exist_ok=True)
    if hasattr(tarfile, "data_filter"):  # second line of defence where Python has it
        tar.extractall(dest, members=members, filter="data")
    else:  # pragma: no cover - old Pythons; our checks above already ran
        tar.extractall(dest, members=members)


def download_cifar10(
    root: Path,
    url: str,
    *,
    archive_md5: str = CIFAR10_ARCHIVE_MD5,
    file_md5s: dict[str, str] = CIFAR10_PY_MD5S,
    timeout: float = 60,
) -> Path:
    """Download and unpack the Python CIFAR-10 archive into ``root/cifar-10-batches-py``
    (see :func:`download_release`)."""
    return download_release(root, url, folder=PY_FOLDER, archive_md5=archive_md5,
                            file_md5s=file_md5s, timeout=timeout, tag="cifar10")


def download_release(
    root: Path,
    url: str,
    *,
    folder: str,
    archive_md5: str,
    file_md5s: Mapping[str, str],
    timeout: float = 60,
    tag: str = "data",
) -> Path:
    """Download a ``.tar.gz`` release holding ``folder/`` and unpack it into ``root/folder``.

    The archive goes to a temp file inside ``root`` and is checked against ``archive_md5``;
    it is unpacked into a temp folder inside ``root``, each batch is checked against
    ``file_md5s``, and only then is the folder renamed into place (atomic on one file
    system). On any failure everything created is removed (``root`` too if it was created
    here and is empty), so no partial data folder is ever left. ``timeout`` is in seconds per
    network operation. Returns the data folder.
    """
    root = Path(root)
    final = root / folder
    if final.exists():
        raise DataError(f"{final} already exists; delete it to download again")
    created_root = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {root}: {e.strerror or e}") from None
    tmp_archive: Path | None = None
    tmp_dir: Path | None = None
    ok = False
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{tag}-", suffix=".tar.gz.part", dir=root)
        except OSError as e:
            raise DataError(f"cannot write into {root}: {e.strerror or e}") from None
        tmp_archive = Path(tmp_name)
        digest = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
                while chunk := r.read(1 << 20):  # 1 MiB at a time: ~170 MB archives
                    digest.update(chunk)
                    f.write(chunk)
        except urllib.error.HTTPError as e:
            raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise DataError(f"cannot download {url}: {e.reason}") from None
        except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, cut
            # transfers (IncompleteRead), malformed URLs, a full disk
            raise DataError(f"cannot download {url}: {e}") from None
        got = digest.hexdigest()
        if got != archive_md5:
            raise DataError(f"{url}: archive checksum mismatch (got {got}, expected "
                            f"{archive_md5}); download interrupted or wrong file")
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{tag}-extract-", dir=root))
        try:
            with tarfile.open(tmp_archive, "r:gz") as tar:
                safe_extract(tar, tmp_dir)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{url}: cannot unpack the archive: {e}") from None
        unpacked = tmp_dir / folder
        if not unpacked.is_dir():
            raise DataError(f"{url}: the archive holds no {folder} folder")
        for name in file_md5s:
            _read_checked(unpacked / name, file_md5s)
        try:
            os.rename(unpacked, final)
        except OSError as e:
            raise DataError(f"cannot move the data into {final}: {e.strerror or e}") from None
        ok = True
        return final
    finally:
        if tmp_archive is not None:
            tmp_archive.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not ok and created_root:
            try:
                root.rmdir()  # only succeeds when empty: never removes anything else
            except OSError:
                pass


# --------------------------------------------------------------------------- datasets


def _load_cifar10(cfg: DataConfig, root: Path) -> Arrays:
    # Also accept the batches folder itself as root (e.g. --data-dir .../cifar-10-batches-bin).
    if root.name in (PY_FOLDER, BIN_FOLDER) and root.is_dir():
        root = root.parent
    py, bn = root / PY_FOLDER, root / BIN_FOLDER
    if py.is_dir():
        return read_cifar10_py(py)
    if bn.is_dir():
        return read_cifar10_bin(bn)
    if cfg.download:  # tables looked up now, not at def time, so tests can swap them
        folder = download_cifar10(root, cfg.url, archive_md5=CIFAR10_ARCHIVE_MD5,
                                  file_md5s=CIFAR10_PY_MD5S)
        return read_cifar10_py(folder)
    raise DataError(f"no CIFAR-10 under {root}: expected {py} or {bn}; pass --data-dir, or set "
                    "data.download=true")


# 10 classes, each a (colour, shape) pair: every colour and every shape occurs in two
# classes, so neither colour alone nor shape alone is enough, yet both are easy to see.
_SYN_CLASSES = [
    ("red", "square"), ("green", "circle"), ("blue", "triangle"), ("yellow", "cross"),
    ("magenta", "ring"), ("blue", "square"), ("red", "circle"), ("yellow", "triangle"),
    ("magenta", "cross"), ("green", "ring"),
]
_SYN_RGB = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230),
            "yellow": (230, 210, 40), "magenta": (210, 50, 210)}
_SYN_SHAPES = ["square", "circle", "triangle", "cross", "ring"]


def _synthetic_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 [n,3,32,32]) and balanced labels, vectorised over images."""
    y = rng.permutation(np.arange(n) % len(_SYN_CLASSES))
    shape_of = np.array([_SYN_SHAPES.index(s) for _, s in _SYN_CLASSES])[y]  # [n]
    rgb = np.array([_SYN_RGB[c] for c, _ in _SYN_CLASSES], dtype=np.float32)[y]  # [n,3]
    rgb = rgb + rng.uniform(-30, 30, size=(n, 3)).astype(np.float32)  # colour jitter

    r = rng.uniform(7.5, 11.5, size=(n, 1, 1)).astype(np.float32)  # size, pixels
    cy = rng.uniform(11.0, 21.0, size=(n, 1, 1)).astype(np.float32)  # centre, pixels
    cx = rng.uniform(11.0, 21.0, size=(n, 1, 1)).astype(np.float32)
    grid = np.arange(32, dtype=np.float32)
    dy, dx = grid[None, :, None] - cy, grid[None, None, :] - cx  # [n,32,1], [n,1,32]
    ady, adx = np.abs(dy), np.abs(dx)
    d2 = dy * dy + dx * dx
    masks = np.stack(np.broadcast_arrays(  # [5,n,32,32], one per shape
        np.maximum(ady, adx) <= 0.8 * r,  # square
        d2 <= r * r,  # circle
        (dy >= -r) & (dy <= 0.8 * r) & (adx <= (dy + r) / 1.8),  # triangle, apex up
        ((adx <= 0.3 * r) & (ady <= r)) | ((ady <= 0.3 * r) & (adx <= r)),  # cross
        (d2 <= r * r) & (d2 >= (0.55 * r) ** 2),  # ring
    ))
    mask = np.take_along_axis(masks, shape_of[None, :, None, None], axis=0)[0]  # [n,32,32]

    # Background: a random dark-to-mid grey per image plus per-pixel noise (std 12 levels).
    bg = rng.uniform(0, 100, size=(n, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 12, size=(n, 3, 32, 32)).astype(np.float32)
    img = np.where(mask[:, None], rgb[:, :, None, None], bg) + noise
    return np.clip(img, 0, 255).round().astype(np.uint8), y.astype(np.int64)


def _load_synthetic(cfg: DataConfig, root: Path) -> Arrays:
    """A small learnable dataset made in memory; ``root`` is unused. Deterministic in seed."""
    n = cfg.synthetic_size
    x_tr, y_tr = _synthetic_images(n, np.random.default_rng([cfg.seed, 0]))
    x_te, y_te = _synthetic_images(max(n // 2, 1), np.random.default_rng([cfg.seed, 1]))
    classes = [f"{c} {s}" for c, s in _SYN_CLASSES]
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
            torch.from_numpy(y_te), classes)


# name -> loader(cfg, root); more entries (cifar100, imagefolder) are added at the end of
# this file. A loader returns Arrays, or ArraysWithVal to supply the validation split itself.
DATASETS: dict[str, Callable[[DataConfig, Path], Arrays | ArraysWithVal]] = {
    "cifar10": _load_cifar10,
    "synthetic": _load_synthetic,
}


# --------------------------------------------------------------------------- splits


def _quotas(counts: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` over classes in proportion to ``counts`` (largest remainder method).

    Each quota is floor or ceil of ``k * count / total`` and the quotas sum to ``k``; ties
    of the remainder go to the lower class index, so the result is deterministic.
    """
    total = int(counts.sum())
    exact = counts * k / total
    q = np.floor(exact).astype(np.int64)
    rest = k - int(q.sum())
    order = np.lexsort((np.arange(len(counts)), -(exact - q)))  # biggest remainder first
    q[order[:rest]] += 1
    return q


def _stratified_pick(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``k`` items of ``y``, stratified by label, chosen at random."""
    labels, counts = np.unique(y, return_counts=True)
    picked = [rng.permutation(np.flatnonzero(y == c))[:q]
              for c, q in zip(labels, _quotas(counts, k), strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _mean_std(x: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std of uint8 ``[N,3,H,W]`` pixels, in units of /255.

    Chunks of 1024 images go to float32 ``[3, pixels]`` (12 MB; torch's summation is
    pairwise, so float32 partial sums are accurate to ~1e-7), totals are kept in float64.
    This avoids a 1 GB float copy of 45k CIFAR images and takes ~0.15 s for them.
    """
    s = torch.zeros(3, dtype=torch.float64)
    sq = torch.zeros(3, dtype=torch.float64)
    for chunk in x.split(1024):
        c = chunk.reshape(chunk.shape[0], 3, -1).transpose(0, 1).reshape(3, -1).float()
        s += c.sum(dim=1).double()
        sq += (c * c).sum(dim=1).double()
    n = max(x.shape[0] * x.shape[2] * x.shape[3], 1)
    mean = s / n
    var = (sq / n - mean * mean).clamp_min(0)
    m, sd = (mean / 255).tolist(), (var.sqrt() / 255).tolist()
    return (m[0], m[1], m[2]), (sd[0], sd[1], sd[2])


def load_splits(cfg: DataConfig, root: Path | None = None) -> Splits:
    """Load ``cfg.name`` and split it into train / validation / test.

    ``root``: None means ``cfg.dir`` if set, else :func:`default_data_dir`. The validation
    split holds ``round(cfg.val_split * N_train)`` images, stratified by class and seeded by
    ``cfg.seed``; then ``cfg.subset > 0`` keeps a stratified, seeded subset of the remaining
    train images. Train and validation keep the original relative order; test is untouched.
    A loader that returns its own validation split (:data:`ArraysWithVal`, e.g. imagefolder
    with a ``val/`` folder) gets that one instead, and ``cfg.val_split`` is not used.
    """
    if root is None:
        root = Path(cfg.dir).expanduser() if cfg.dir else default_data_dir()
    loader = DATASETS.get(cfg.name)
    if loader is None:
        raise DataError(f"unknown dataset {cfg.name!r}; allowed: {', '.join(sorted(DATASETS))}")
    loaded = loader(cfg, Path(root))
    x, y, test_x, test_y, classes = loaded[:5]
    given_val = loaded[5:7] if len(loaded) == 7 else None  # e.g. imagefolder's val/ folder

    y_np = y.numpy()
    n = len(y_np)
    if given_val is not None:  # the dataset brings its own validation split: carve nothing
        val_idx = np.zeros(0, dtype=np.int64)
    else:
        n_val = round(cfg.val_split * n)
        if n_val >= n:
            raise DataError(f"data.val_split={cfg.val_split} leaves no training images out "
                            f"of {n}")
        # Independent streams for the val split and the subset, both from data.seed only.
        val_idx = _stratified_pick(y_np, n_val, np.random.default_rng([cfg.seed, 0]))
    keep = np.ones(n, dtype=bool)
    keep[val_idx] = False
    train_idx = np.flatnonzero(keep)
    if cfg.subset > 0:
        if cfg.subset > len(train_idx):
            raise DataError(f"data.subset={cfg.subset} is more than the {len(train_idx)} "
                            "training images left after the validation split")
        sub = _stratified_pick(y_np[train_idx], cfg.subset, np.random.default_rng([cfg.seed, 1]))
        train_idx = train_idx[sub]

    ti, vi = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    train_x = x[ti]
    val_x, val_y = given_val if given_val is not None else (x[vi], y[vi])
    mean, std = _mean_std(train_x)
    return Splits(train_x=train_x, train_y=y[ti], val_x=val_x, val_y=val_y,
                  test_x=test_x, test_y=test_y, classes=list(classes), mean=mean, std=std)


# =========================================================================== more datasets
# CIFAR-100 (the same two releases as CIFAR-10) and "imagefolder" (your own pictures).

# --------------------------------------------------------------------------- CIFAR-100

CIFAR100_PY_MD5S: dict[str, str] = {  # published (torchvision's table)
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}
CIFAR100_ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # cifar-100-python.tar.gz
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# No per-file MD5s are published for the binary release (only for its archive), so its two
# files are checked by exact size (whole records, and this many) and label ranges instead.
CIFAR100_BIN_RECORDS: dict[str, int] = {"train.bin": 50_000, "test.bin": 10_000}
C100_PY_FOLDER = "cifar-100-python"
C100_BIN_FOLDER = "cifar-100-binary"
_C100_COARSE = 20  # superclasses; the labels used here are the 100 fine ones


def _cifar10_default_url() -> str:
    return DataConfig().url


def read_cifar100_py(folder: Path, md5s: Mapping[str, str] | None = None) -> Arrays:
    """Read the Python CIFAR-100 release (``cifar-100-python``): pickled dicts ``train`` and
    ``test`` with ``b"data"`` (uint8 ``[n, 3072]``, CIFAR-10's R/G/B plane layout) and
    ``b"fine_labels"``; ``meta`` holds ``b"fine_label_names"``. ``md5s`` defaults to
    :data:`CIFAR100_PY_MD5S`. Labels are the 100 fine classes."""
    folder = Path(folder)
    md5s = CIFAR100_PY_MD5S if md5s is None else md5s
    meta_path = folder / "meta"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; {_REDOWNLOAD}")
    meta = _unpickle(meta_path, meta_path.read_bytes(), "CIFAR-100")
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in meta[b"fine_label_names"]]
    except (KeyError, TypeError, UnicodeDecodeError):
        raise DataError(f"{meta_path}: no fine_label_names in it; {_REDOWNLOAD}") from None
    if not classes:
        raise DataError(f"{meta_path}: no class names in it; {_REDOWNLOAD}")

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _pickled_batch(folder / name, md5s, b"fine_labels", len(classes), "CIFAR-100")
        return _to_tensors([x], [y])

    x_train, y_train = split("train")
    x_test, y_test = split("test")
    return x_train, y_train, x_test, y_test, classes


def read_cifar100_bin(folder: Path, records: Mapping[str, int] | None = None) -> Arrays:
    """Read the binary CIFAR-100 release (``cifar-100-binary``): ``train.bin`` and
    ``test.bin`` of 3074-byte records (coarse label byte, fine label byte, then the image as
    in CIFAR-10), class names in ``fine_label_names.txt``. ``records`` maps file names to
    the expected record counts (default :data:`CIFAR100_BIN_RECORDS`)."""
    folder = Path(folder)
    records = CIFAR100_BIN_RECORDS if records is None else records
    classes = _class_names(folder / "fine_label_names.txt")
    size = 2 + _IMG

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing; {_REDOWNLOAD}")
        try:
            buf = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
        expected = records[name] * size
        if len(buf) != expected:
            raise DataError(f"{path}: wrong size {len(buf)} bytes, expected {expected} "
                            f"({records[name]} records of {size} bytes); {_REDOWNLOAD}")
        rec = np.frombuffer(buf, dtype=np.uint8).reshape(-1, size)
        _check_labels(path, rec[:, 0].astype(np.int64), _C100_COARSE)
        y = rec[:, 1].astype(np.int64)
        _check_labels(path, y, len(classes))
        return _to_tensors([rec[:, 2:]], [y])

    x_train, y_train = split("train.bin")
    x_test, y_test = split("test.bin")
    return x_train, y_train, x_test, y_test, classes


def download_cifar100(
    root: Path,
    url: str = CIFAR100_URL,
    *,
    archive_md5: str | None = None,
    file_md5s: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Path:
    """Download and unpack the Python CIFAR-100 archive into ``root/cifar-100-python``
    (see :func:`download_release`); MD5s default to the published ones."""
    return download_release(
        root, url, folder=C100_PY_FOLDER,
        archive_md5=CIFAR100_ARCHIVE_MD5 if archive_md5 is None else archive_md5,
        file_md5s=CIFAR100_PY_MD5S if file_md5s is None else file_md5s, timeout=timeout,
        tag="cifar100")


def _load_cifar100(cfg: DataConfig, root: Path) -> Arrays:
    if root.name in (C100_PY_FOLDER, C100_BIN_FOLDER) and root.is_dir():
        root = root.parent
    py, bn = root / C100_PY_FOLDER, root / C100_BIN_FOLDER
    if py.is_dir():
        return read_cifar100_py(py)
    if bn.is_dir():
        return read_cifar100_bin(bn)
    if cfg.download:
        # data.url defaults to CIFAR-10's archive; left at that default, fetch CIFAR-100's.
        url = CIFAR100_URL if cfg.url == _cifar10_default_url() else cfg.url
        return read_cifar100_py(download_cifar100(root, url))
    raise DataError(f"no CIFAR-100 under {root}: expected {py} or {bn}; pass --data-dir, or "
                    "set data.download=true")


# --------------------------------------------------------------------------- imagefolder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_LAYOUT = "expected <dir>/train/<class>/*.png|jpg, <dir>/test/<class>/*, optional <dir>/val/"


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)


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
            img = ImageOps.exif_transpose(f).convert("RGB")
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
    for d in _visible_dirs(split_dir):
        if d.name not in index:
            raise DataError(f"{d}: class {d.name!r} is not in {root / 'train'} (train classes: "
                            f"{', '.join(classes)})")
        found = _image_files(d)
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
    classes = [d.name for d in _visible_dirs(train_dir)]
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


def _load_imagefolder(cfg: DataConfig, root: Path) -> Arrays | ArraysWithVal:
    return read_image_folder(root, cfg.image_size, cfg.resize)


DATASETS.update({
    "cifar100": _load_cifar100,
    "imagefolder": _load_imagefolder,
})

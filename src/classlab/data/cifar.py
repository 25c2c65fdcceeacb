"""CIFAR-10 and CIFAR-100, from either official release (binary or Python pickles), each file
checked against its published MD5 (or, for CIFAR-100's binary release, its exact size), and
optionally downloaded."""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from classlab.config import DataConfig
from classlab.data.base import REDOWNLOAD, Arrays, DataError, check_labels, read_checked, to_tensors
from classlab.data.download import download_release

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
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
_IMG = 3 * 32 * 32  # bytes per image: 1024 R, then 1024 G, then 1024 B, each row-major

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
        buf = read_checked(path, md5s)
        if len(buf) == 0 or len(buf) % (1 + _IMG):
            raise DataError(f"{path}: wrong size {len(buf)} bytes (not whole 3073-byte records);"
                            f" {REDOWNLOAD}")
        rec = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 1 + _IMG)  # [n, 3073], no copy
        y = rec[:, 0].astype(np.int64)
        check_labels(path, y, len(classes))
        return rec[:, 1:], y

    parts = [batch(n) for n in TRAIN_BATCHES]
    x_train, y_train = to_tensors([p[0] for p in parts], [p[1] for p in parts])
    xt, yt = batch(TEST_BATCH)
    x_test, y_test = to_tensors([xt], [yt])
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
        raise DataError(f"{path}: not a {what} pickle ({type(e).__name__}); {REDOWNLOAD}"
                        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a {what} pickle (no dict inside); {REDOWNLOAD}")
    return obj


def _pickled_batch(path: Path, md5s: Mapping[str, str], label_key: bytes, n_classes: int,
                   *release: str) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 [N,3072], y int64 [N]) of one checked python-release pickle; ``label_key`` is
    b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100)."""
    d = _unpickle(path, read_checked(path, md5s), *release)
    key = label_key.decode()
    try:
        x = np.asarray(d[b"data"])
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: no data/{key} in it; {REDOWNLOAD}") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != _IMG or y.shape != x.shape[:1]:
        raise DataError(f"{path}: unexpected data {x.dtype}{list(x.shape)} with "
                        f"{y.size} labels; {REDOWNLOAD}")
    check_labels(path, y, n_classes)
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
        raise DataError(f"{meta_path}: missing; {REDOWNLOAD}")
    meta = _unpickle(meta_path, meta_path.read_bytes())
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except (KeyError, TypeError, UnicodeDecodeError):
        raise DataError(f"{meta_path}: no label_names in it; {REDOWNLOAD}") from None

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _pickled_batch(folder / name, md5s, b"labels", len(classes))

    parts = [batch(n) for n in TRAIN_BATCHES]
    x_train, y_train = to_tensors([p[0] for p in parts], [p[1] for p in parts])
    xt, yt = batch(TEST_BATCH)
    x_test, y_test = to_tensors([xt], [yt])
    return x_train, y_train, x_test, y_test, classes



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



def load_cifar10(cfg: DataConfig, root: Path) -> Arrays:
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
        raise DataError(f"{meta_path}: missing; {REDOWNLOAD}")
    meta = _unpickle(meta_path, meta_path.read_bytes(), "CIFAR-100")
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in meta[b"fine_label_names"]]
    except (KeyError, TypeError, UnicodeDecodeError):
        raise DataError(f"{meta_path}: no fine_label_names in it; {REDOWNLOAD}") from None
    if not classes:
        raise DataError(f"{meta_path}: no class names in it; {REDOWNLOAD}")

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _pickled_batch(folder / name, md5s, b"fine_labels", len(classes), "CIFAR-100")
        return to_tensors([x], [y])

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
            raise DataError(f"{path}: missing; {REDOWNLOAD}")
        try:
            buf = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
        expected = records[name] * size
        if len(buf) != expected:
            raise DataError(f"{path}: wrong size {len(buf)} bytes, expected {expected} "
                            f"({records[name]} records of {size} bytes); {REDOWNLOAD}")
        rec = np.frombuffer(buf, dtype=np.uint8).reshape(-1, size)
        check_labels(path, rec[:, 0].astype(np.int64), _C100_COARSE)
        y = rec[:, 1].astype(np.int64)
        check_labels(path, y, len(classes))
        return to_tensors([rec[:, 2:]], [y])

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


def load_cifar100(cfg: DataConfig, root: Path) -> Arrays:
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



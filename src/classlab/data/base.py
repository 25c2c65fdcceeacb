"""The dataset contract: what a loader returns, the splits training uses, the one error."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REDOWNLOAD = "delete it and download again"


class DataError(RuntimeError):
    """One-line, user-facing message (no traceback is shown to users)."""


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
    # The training split's indexing (classlab.data.labels): the training-split index of each
    # row of train_x (None: every image, in order), the labels before data.label_noise (per
    # row; None: no noise), every changed label as (index, true, given) rows over the whole
    # training split, and the training-split indices data.exclude left out.
    train_index: torch.Tensor | None = None  # int64 [N]
    train_y_true: torch.Tensor | None = None  # int64 [N]
    noise: torch.Tensor | None = None  # int64 [F,3]
    excluded: torch.Tensor | None = None  # int64 [X]


def default_data_dir() -> Path:
    """``$CLASSLAB_DATA`` if set and non-empty, else ``~/.cache/classlab``."""
    env = os.environ.get("CLASSLAB_DATA", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "classlab"


# MD5s that read_checked computed in this process: absolute path -> (bytes, mtime_ns, md5).
# The run folder's data record (classlab.data.record) reuses them instead of reading the
# 180 MB of CIFAR-10 a second time; an entry counts only while size and mtime still match.
VERIFIED: dict[str, tuple[int, int, str]] = {}


def read_checked(path: Path, md5s: Mapping[str, str]) -> bytes:
    """The file's bytes, after checking its MD5 against ``md5s[path.name]``.

    Reading once and hashing the in-memory bytes costs ~0.3 s for all of CIFAR-10 (180 MB).
    """
    if not path.is_file():
        raise DataError(f"{path}: missing; {REDOWNLOAD}")
    expected = md5s.get(path.name)
    if expected is None:
        raise DataError(f"{path}: no expected checksum known for this file name")
    try:
        before = path.stat()  # taken before reading: a later change shows as a new mtime
        buf = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if hashlib.md5(buf).hexdigest() != expected:
        raise DataError(f"{path}: checksum mismatch (file truncated or corrupted); {REDOWNLOAD}")
    if before.st_size == len(buf):
        VERIFIED[str(path.resolve())] = (len(buf), before.st_mtime_ns, expected)
    return buf


def check_labels(path: Path, y: np.ndarray, n_classes: int) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(f"{path}: labels outside 0..{n_classes - 1}; {REDOWNLOAD}")


def to_tensors(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.ascontiguousarray(np.concatenate(xs)).reshape(-1, 3, 32, 32)
    y = np.concatenate(ys).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)



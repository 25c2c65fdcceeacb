"""data_dynamics.pt: the per-image training dynamics of a run (``log.data_dynamics``), written
atomically after every epoch (see :mod:`classlab.engine.margins` for what it holds).

Keys: ``version``, ``epochs`` (E), ``images`` (N), ``augmented`` (True: the values are of the
augmented images trained on), ``index`` int64 [N] (the training-split index of each row: the
indexing of label_issues.csv, label_noise.csv and data.exclude), ``labels`` int64 [N] (the
labels trained on, after any injected noise), ``margin`` float16 [E,N], ``prob`` float16
[E,N], ``rival`` int16 [E,N] and ``right`` uint8 [E,ceil(N/8)] (bits, little-endian).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classlab.rundir.checkpoint import save_checkpoint

_SHAPES = {"margin": 2, "prob": 2, "rival": 2, "right": 2, "index": 1, "labels": 1}


def save_data_dynamics(path: Path, record: dict) -> None:
    save_checkpoint(path, record)


def read_data_dynamics(path: Path) -> dict | None:
    """The record of a data_dynamics.pt, or None when it is absent, damaged or not one."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # damaged: treated as absent (it is rewritten every epoch)
        return None
    if not isinstance(rec, dict) or not all(
            isinstance(rec.get(k), torch.Tensor) and rec[k].dim() == d
            for k, d in _SHAPES.items()):
        return None
    n, e = len(rec["index"]), rec["margin"].shape[0]
    if any(rec[k].shape != (e, n) for k in ("prob", "rival", "margin")) \
            or rec["right"].shape != (e, (n + 7) // 8) or len(rec["labels"]) != n:
        return None
    return rec


def unpack_right(rec: dict) -> np.ndarray:
    """bool [E,N]: whether each image was classified right in each epoch."""
    n = len(rec["index"])
    packed = rec["right"].numpy()
    if not len(packed):
        return np.zeros((0, n), dtype=bool)
    return np.unpackbits(packed, axis=1, count=n, bitorder="little").astype(bool)

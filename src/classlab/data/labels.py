"""The training split's labels and images as training uses them: injected label noise
(``data.label_noise``) and left-out images (``data.exclude``).

Both index the **training split** as :func:`classlab.data.splits.load_splits` builds it: the
training images in their original order once the validation split (and ``data.subset``)
are taken out; index ``i`` is the ``i``-th of them. The noise is injected into the whole
training split first, then the excluded images are dropped, so a run can leave out the
suspected label errors another run with the same noise found.

Noise hits exact counts, seeded by ``data.label_noise_seed`` alone: for ``symmetric`` and
``pairs`` exactly ``round(rate * N)`` labels change, spread over the classes in proportion
to their sizes (largest remainder), each to another class (``symmetric``: spread evenly over
the other classes; ``pairs``: the class's partner); ``matrix``: for each class ``i``, its
images are split into groups of the sizes ``T[i][j] * n_i`` (largest remainder) given
label ``j``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classlab.config import DataConfig
from classlab.config.schema import CIFAR10_NOISE_PAIRS
from classlab.data.base import DataError


def quotas(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (largest remainder; ties to
    the lower index): each part is the floor or ceil of its exact share, the parts sum to
    ``total``."""
    w = np.asarray(weights, dtype=np.float64)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = w * total / w.sum()
    q = np.floor(exact + 1e-9).astype(np.int64)
    rest = total - int(q.sum())
    order = np.lexsort((np.arange(len(w)), -(exact - q)))
    q[order[:rest]] += 1
    return q


def partners(classes: list[str]) -> np.ndarray:
    """``pairs`` noise: each class id's partner (itself when it has none)."""
    k = len(classes)
    names = {c: i for i, c in enumerate(classes)}
    out = np.arange(k)
    if all(a in names and b in names for a, b in CIFAR10_NOISE_PAIRS):
        for a, b in CIFAR10_NOISE_PAIRS:
            out[names[a]], out[names[b]] = names[b], names[a]
        return out
    for i in range(0, k - 1, 2):
        out[i], out[i + 1] = i + 1, i
    return out


def transition(cfg: DataConfig, classes: list[str]) -> np.ndarray:
    """T [K,K]: row i, the fractions of class i's images given label j."""
    k, r = len(classes), cfg.label_noise
    if cfg.label_noise_kind == "matrix":
        t = np.asarray(cfg.label_noise_matrix, dtype=np.float64)
        if t.shape != (k, k):
            raise DataError(f"data.label_noise_matrix: {t.shape[0]}x{t.shape[0]}, but "
                            f"{cfg.name} has {k} classes; must be {k}x{k}")
        return t
    t = np.eye(k) * (1 - r)
    if cfg.label_noise_kind == "pairs":
        mate = partners(classes)
        t[np.arange(k), mate] += r
    elif k > 1:
        t += (1 - np.eye(k)) * r / (k - 1)
    return t


def inject_noise(y: np.ndarray, cfg: DataConfig, classes: list[str]) -> np.ndarray:
    """The labels ``y`` [N] after ``cfg``'s label noise (a copy; ``y`` itself is kept)."""
    t = transition(cfg, classes)
    k = len(classes)
    rng = np.random.default_rng([cfg.label_noise_seed, 28])
    counts = np.bincount(y, minlength=k)
    if cfg.label_noise_kind == "matrix":
        moved = [_matrix_counts(int(counts[i]), t[i], i) for i in range(k)]
    else:  # exactly round(rate * N) over all classes, then each class's to the others
        per_class = quotas(round(cfg.label_noise * len(y)), counts * (t.diagonal() < 1))
        moved = [quotas(int(per_class[i]), t[i] * (np.arange(k) != i)) for i in range(k)]
    out = y.copy()
    for i in range(k):
        members = rng.permutation(np.flatnonzero(y == i))
        start = 0
        for j in range(k):
            n = int(moved[i][j]) if j != i else 0
            out[members[start:start + n]] = j
            start += n
    return out


def _matrix_counts(n: int, row: np.ndarray, i: int) -> np.ndarray:
    """How many of class ``i``'s ``n`` images go to each class (the row's exact shares)."""
    q = quotas(n, row)
    q[i] = 0
    return q


def read_exclusion(path: str | Path, n_train: int) -> np.ndarray:
    """The sorted, unique training-split indices listed in the CSV ``path`` (an ``index``
    column, rows whose ``split`` is not ``train`` ignored; or one index per line, no
    header). Anything else, or an index outside ``0 .. n_train - 1``, is a one-line
    DataError naming data.exclude."""
    key, path = "data.exclude", Path(path)
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except FileNotFoundError:
        raise DataError(f"{key}: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{key}: {path}: cannot read it ({getattr(e, 'strerror', None) or e})"
                        ) from None
    header = [c.strip().lower() for c in rows[0]] if rows else []
    col, split, first = 0, None, 0
    if "index" in header:
        col, first = header.index("index"), 1
        split = header.index("split") if "split" in header else None
    picked = []
    for line, r in enumerate(rows[first:], start=first + 1):
        if split is not None and len(r) > split and r[split].strip() != "train":
            continue
        cell = r[col].strip() if len(r) > col else ""
        if not cell.lstrip("-").isdigit():
            raise DataError(f"{key}: {path} line {line}: {cell!r} is not an image index")
        picked.append(int(cell))
    idx = np.unique(np.asarray(picked, dtype=np.int64))
    bad = idx[(idx < 0) | (idx >= n_train)]
    if len(bad):
        more = f"; {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DataError(f"{key}: {path}: index {int(bad[0])} is outside the training set "
                        f"(0..{n_train - 1}: the {n_train:,} training images left after the "
                        f"validation split and subset){more}")
    if len(idx) >= n_train:
        raise DataError(f"{key}: {path} leaves out all {n_train:,} training images")
    return idx


@dataclass
class TrainLabels:
    """The training split as training uses it."""

    keep: np.ndarray  # int64 [M]: the training-split indices trained on, in order
    given: np.ndarray  # int64 [N]: every training-split image's label (after any noise)
    true: np.ndarray | None  # int64 [N]: the labels before the noise (None: no noise)
    excluded: np.ndarray  # int64 [X]: training-split indices left out

    @property
    def flipped(self) -> np.ndarray:
        """Training-split indices whose label the noise changed."""
        if self.true is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.true != self.given)


def training_labels(cfg: DataConfig, y: np.ndarray, classes: list[str],
                    exclude_file: Path | None = None) -> TrainLabels:
    """Noise (``cfg.label_noise*``) and exclusion (``exclude_file``, else ``cfg.exclude``)
    applied to the training split's labels ``y``."""
    noisy = cfg.label_noise > 0 or cfg.label_noise_kind == "matrix"
    given = inject_noise(y, cfg, classes) if noisy else y
    source = exclude_file if exclude_file is not None else (cfg.exclude or None)
    excluded = (read_exclusion(source, len(y)) if source is not None
                else np.zeros(0, dtype=np.int64))
    mask = np.ones(len(y), dtype=bool)
    mask[excluded] = False
    return TrainLabels(np.flatnonzero(mask), given, y.copy() if noisy else None, excluded)

"""From a loaded dataset to the splits training uses: a stratified, seeded validation split
and subset, and the training set's per-channel mean and std."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classlab.config import DataConfig
from classlab.data.base import DataError, Splits, default_data_dir
from classlab.data.labels import training_labels
from classlab.data.registry import DATASETS


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


def mean_std(x: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
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


def load_splits(cfg: DataConfig, root: Path | None = None,
                exclude_file: Path | None = None) -> Splits:
    """Load ``cfg.name`` and split it into train / validation / test.

    ``root``: None means ``cfg.dir`` if set, else :func:`default_data_dir`. The validation
    split holds ``round(cfg.val_split * N_train)`` images, stratified by class and seeded by
    ``cfg.seed``; then ``cfg.subset > 0`` keeps a stratified, seeded subset of the remaining
    train images. Train and validation keep the original relative order; test is untouched.
    A loader that returns its own validation split (:data:`ArraysWithVal`, e.g. imagefolder
    with a ``val/`` folder) gets that one instead, and ``cfg.val_split`` is not used. Then the
    training split's labels get ``cfg.label_noise`` and the images ``cfg.exclude`` lists
    (``exclude_file`` instead, e.g. a run folder's excluded.csv) are left out
    (:mod:`classlab.data.labels`).
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

    labels = training_labels(cfg, y_np[train_idx], list(classes), exclude_file)
    ti, vi = torch.from_numpy(train_idx[labels.keep]), torch.from_numpy(val_idx)
    train_x = x[ti]
    val_x, val_y = given_val if given_val is not None else (x[vi], y[vi])
    mean, std = mean_std(train_x)
    true, flipped = labels.true, labels.flipped
    return Splits(train_x=train_x, train_y=torch.from_numpy(labels.given[labels.keep]),
                  val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y,
                  classes=list(classes), mean=mean, std=std,
                  train_index=torch.from_numpy(labels.keep),
                  train_y_true=None if true is None else torch.from_numpy(true[labels.keep]),
                  noise=None if true is None else torch.from_numpy(
                      np.stack([flipped, true[flipped], labels.given[flipped]], 1)),
                  excluded=torch.from_numpy(labels.excluded))



"""A synthetic stand-in for CIFAR-10: coloured shapes on noise, made in memory (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classlab.config import DataConfig
from classlab.data.base import Arrays

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


def load_synthetic(cfg: DataConfig, root: Path) -> Arrays:
    """A small learnable dataset made in memory; ``root`` is unused. Deterministic in seed."""
    n = cfg.synthetic_size
    x_tr, y_tr = _synthetic_images(n, np.random.default_rng([cfg.seed, 0]))
    x_te, y_te = _synthetic_images(max(n // 2, 1), np.random.default_rng([cfg.seed, 1]))
    classes = [f"{c} {s}" for c, s in _SYN_CLASSES]
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
            torch.from_numpy(y_te), classes)


# name -> loader(cfg, root); more entries (cifar100, imagefolder) are added at the end of

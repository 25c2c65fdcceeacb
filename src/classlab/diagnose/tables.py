"""The diagnosis's tables: the confusion matrix, its most confused pairs, per-class accuracy."""

from __future__ import annotations

import torch


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """[K,K] int64 counts, rows = true, columns = predicted; all K classes always present."""
    return torch.bincount(y.long() * k + pred.long(), minlength=k * k).view(k, k)


def top_confused(cm: torch.Tensor, n: int = 10) -> list[tuple[int, int, int]]:
    """(true, pred, count) of the ``n`` largest non-zero off-diagonal cells, largest first
    (ties by row, then column)."""
    off = cm.clone()
    off.fill_diagonal_(0)
    flat = off.flatten()
    order = sorted(range(len(flat)), key=lambda i: (-int(flat[i]), i))
    k = cm.shape[0]
    return [(i // k, i % k, int(flat[i])) for i in order[:n] if int(flat[i]) > 0]

"""Weight-update tracking: per-layer gradient norms, weight norms and update/weight ratios.

Every ``every`` optimizer steps, :class:`DynamicsLogger` snapshots the trainable parameters
just before ``optimizer.step()`` and compares them with the weights just after it, so the
ratio ``||w_after - w_before|| / ||w_before||`` is the step the optimizer *actually* took
(momentum, Adam's scaling, weight decay and gradient clipping included). The LR (and
momentum / beta1) is recorded at every step. Rows go to a tidy CSV
(:data:`classlab.rundir.layout.DYNAMICS_FIELDS`: ``step, epoch, layer, metric, value``);
the report draws them (:mod:`classlab.report.dynamics`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from torch import nn

from classlab.optim import current_lr, current_momentum
from classlab.rundir.layout import DYNAMICS_FIELDS

LAYER_METRICS = ("grad_norm", "weight_norm", "update_ratio")


class DynamicsLogger:
    """Append rows to ``path``; call :meth:`before_step` / :meth:`after_step` around
    ``optimizer.step()`` with the global step index (0-based, counted over all epochs)."""

    def __init__(self, model: nn.Module, path: Path, every: int) -> None:
        self.every = every
        # Unwrap DDP / compile wrappers so layer names match the plain model.
        base = getattr(model, "module", model)
        base = getattr(base, "_orig_mod", base)
        self.names = [n for n, p in base.named_parameters() if p.requires_grad]
        self.params = [p for p in base.parameters() if p.requires_grad]
        new = not Path(path).exists() or Path(path).stat().st_size == 0
        self._file = open(path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(DYNAMICS_FIELDS)
        self._before: list[torch.Tensor] | None = None
        self._grad_norms: torch.Tensor | None = None

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def before_step(self, step: int) -> None:
        if not self.wants(step):
            return
        with torch.no_grad():
            self._before = [p.detach().clone() for p in self.params]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            # One fused kernel per dtype/device for all norms; a [L] float32 tensor.
            self._grad_norms = torch.stack(torch._foreach_norm(grads)).float()

    def after_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        lr, mom = current_lr(optimizer), current_momentum(optimizer)
        self._writer.writerow([step, epoch, "", "lr", repr(lr)])
        if mom is not None:
            self._writer.writerow([step, epoch, "", "momentum", repr(mom)])
        if self._before is None:
            return
        with torch.no_grad():
            w_norm = torch.stack(torch._foreach_norm(self._before)).float()
            delta = torch._foreach_sub([p.detach() for p in self.params], self._before)
            d_norm = torch.stack(torch._foreach_norm(delta)).float()
            # A zero-norm tensor (e.g. a bias initialised to 0) has no meaningful ratio.
            ratio = torch.where(w_norm > 0, d_norm / w_norm.clamp_min(1e-30),
                                torch.full_like(w_norm, float("nan")))
            table = torch.stack([self._grad_norms, w_norm, ratio], 1).cpu().tolist()
        for name, row in zip(self.names, table):
            for metric, value in zip(LAYER_METRICS, row):
                self._writer.writerow([step, epoch, name, metric, repr(value)])
        self._before = self._grad_norms = None

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

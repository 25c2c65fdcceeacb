"""One training step, the only one: forward, loss, backward, (unscale, clip), optimizer step.

Shared by the epoch loop (:func:`classlab.engine.epoch.train_one_epoch`) and the LR range
test (:mod:`classlab.tools.lr_find`), so both train exactly the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from classlab.augment.mixing import Mix, mixed_cross_entropy
from classlab.engine.amp import Amp
from classlab.engine.dynamics import DynamicsLogger


@dataclass
class StepRecipe:
    """How a training step updates the weights: everything but the batch and its index."""

    optimizer: torch.optim.Optimizer
    amp: Amp  # autocast dtype and the (fp16) gradient scaler
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # total L2 norm of the gradients (0: off)
    dynamics: DynamicsLogger | None = None  # weight-update logging (log.dynamics_every)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, params: Iterable[nn.Parameter], *,
                      grad_clip: float = 0.0, dynamics: DynamicsLogger | None = None,
                      step: int = 0, epoch: int = 0) -> None:
    """Backward of ``loss`` (scaled for fp16), then one optimizer step through ``scaler``.

    Gradients are unscaled first whenever they are measured (clipping, weight-update
    logging), so norms are in true gradient units. ``dynamics`` sees the weights just
    before and just after the step (``step`` is the global 0-based index)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0 or (dynamics is not None and dynamics.wants(step)):
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    if dynamics is not None:
        dynamics.before_step(step)
    scaler.step(optimizer)
    scaler.update()
    if dynamics is not None:
        dynamics.after_step(step, epoch, optimizer)


def train_step(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor, recipe: StepRecipe, *,
               step: int = 0, epoch: int = 0,
               mix: Mix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on the normalised, augmented batch ``xb`` ``[B,3,H,W]`` with labels ``yb``
    ``[B]``, as ``recipe`` says; ``step`` is the run's 0-based step index. Clipping applies to
    all of ``net``'s parameters. ``mix``: how ``xb`` was mixed (mixup / CutMix); the loss is
    then the cross-entropy against the mixed soft targets. Returns the detached mean loss (a
    0-d tensor, still on the device: reading it would synchronise a GPU) and the logits
    ``[B,K]``."""
    r = recipe
    with r.amp.autocast():
        logits = net(xb)
        # The loss in float32 whatever the autocast dtype: bf16 cross-entropy loses digits.
        if mix is None:
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=r.label_smoothing)
        else:
            loss = mixed_cross_entropy(logits.float(), yb, mix, r.label_smoothing)
    backward_and_step(loss, r.optimizer, r.amp.scaler, net.parameters(), grad_clip=r.grad_clip,
                      dynamics=r.dynamics, step=step, epoch=epoch)
    return loss.detach(), logits

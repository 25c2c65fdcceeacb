"""Optimizers and LR schedulers from registries.

The registries only build torch's own classes and know *when* each scheduler steps:
per batch (onecycle, cosine, linear), per epoch (step) or per epoch on a monitored
validation metric (plateau). :class:`Stepper` hides that difference from the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import lr_scheduler as lrs

from classlab.config import OptimConfig, SchedConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """One group, or two when norm weights / biases get their own weight decay or LR.

    A parameter counts as "norm or bias" when it is 1-D (BN/GN/LN affine, conv/linear bias):
    decaying those shrinks the scale of normalized activations without regularising anything.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.no_decay_norm_bias and cfg.norm_bias_lr_scale == 1.0:
        return [{"params": params, "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
    nd = [p for p in params if p.ndim <= 1]
    wd = [p for p in params if p.ndim > 1]
    return [
        {"params": wd, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
        {"params": nd, "weight_decay": 0.0 if cfg.no_decay_norm_bias else cfg.weight_decay,
         "lr": cfg.lr * cfg.norm_bias_lr_scale},
    ]


def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
                           and cfg.momentum > 0, weight_decay=cfg.weight_decay)


def _adam(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    # Adam's weight_decay is coupled: added to the gradient before the adaptive scaling.
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)


def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    # AdamW's is decoupled: w <- w - lr * wd * w, independent of the gradient scaling.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](param_groups(model, cfg), cfg)


@dataclass
class Stepper:
    """A scheduler plus when to step it: ``"batch"``, ``"epoch"``, ``"plateau"`` or ``"none"``."""

    scheduler: lrs.LRScheduler | lrs.ReduceLROnPlateau | None
    interval: str
    monitor: str = ""

    def after_batch(self) -> None:
        if self.interval == "batch":
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        """``metrics`` holds train_/val_ loss and acc; test metrics are never passed here."""
        if self.interval == "epoch":
            self.scheduler.step()
        elif self.interval == "plateau":
            self.scheduler.step(metrics[self.monitor])

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


SchedFn = Callable[[torch.optim.Optimizer, SchedConfig, int, int], Stepper]


def _onecycle(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int) -> Stepper:
    # Momentum cycling needs a momentum to cycle: SGD with momentum 0 keeps it at 0.
    has_momentum = "betas" in opt.defaults or opt.defaults.get("momentum", 0) > 0
    sched = lrs.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=epochs * steps,
        pct_start=cfg.pct_start, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor, three_phase=cfg.three_phase,
        cycle_momentum=cfg.cycle_momentum and has_momentum,
    )
    return Stepper(sched, "batch")


def _step(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int) -> Stepper:
    return Stepper(lrs.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), "epoch")


def _plateau(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int) -> Stepper:
    mode = "max" if cfg.monitor.endswith("acc") else "min"
    sched = lrs.ReduceLROnPlateau(opt, mode=mode, factor=cfg.factor, patience=cfg.patience,
                                  min_lr=cfg.min_lr)
    return Stepper(sched, "plateau", cfg.monitor)


def _warmup_then(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int,
                 decay: str) -> Stepper:
    total = epochs * steps
    warm = min(int(round(cfg.warmup_epochs * steps)), total - 1)
    rest = total - warm
    if decay == "cosine":
        base = [g["lr"] for g in opt.param_groups]
        # eta_min is one number for all groups; groups differ only by norm_bias_lr_scale, so
        # use the first group's floor (final_lr_frac * lr).
        main = lrs.CosineAnnealingLR(opt, T_max=rest, eta_min=base[0] * cfg.final_lr_frac)
    else:
        main = lrs.LinearLR(opt, start_factor=1.0, end_factor=max(cfg.final_lr_frac, 1e-8),
                            total_iters=rest)
    if warm == 0:
        return Stepper(main, "batch")
    warmup = lrs.LinearLR(opt, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
    return Stepper(lrs.SequentialLR(opt, [warmup, main], milestones=[warm]), "batch")


def _cosine(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int) -> Stepper:
    return _warmup_then(opt, cfg, epochs, steps, "cosine")


def _linear(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int) -> Stepper:
    return _warmup_then(opt, cfg, epochs, steps, "linear")


def _none(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int) -> Stepper:
    return Stepper(None, "none")


SCHEDULERS: dict[str, SchedFn] = {
    "onecycle": _onecycle,
    "step": _step,
    "plateau": _plateau,
    "cosine": _cosine,
    "linear": _linear,
    "none": _none,
}


def build_scheduler(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int,
                    steps_per_epoch: int) -> Stepper:
    return SCHEDULERS[cfg.name](opt, cfg, epochs, steps_per_epoch)


def current_lr(opt: torch.optim.Optimizer) -> float:
    """LR of the first parameter group (the one that holds the conv/linear weights)."""
    return float(opt.param_groups[0]["lr"])


def current_momentum(opt: torch.optim.Optimizer) -> float | None:
    """SGD momentum or Adam beta1 of the first group (cycled by onecycle)."""
    g = opt.param_groups[0]
    if "betas" in g:
        return float(g["betas"][0])
    return float(g["momentum"]) if "momentum" in g else None


class Lookahead:
    """Lookahead (Zhang et al. 2019, "k steps forward, 1 step back") on a model's weights,
    with airbench's late-training ramp (Keller Jordan, arXiv 2404.00498).

    Every ``every`` optimizer steps the slow copy moves toward the trained (fast) weights,
    ``slow <- decay_t * slow + (1 - decay_t) * fast``, and the fast weights restart from
    it. ``decay_t = decay**every * (t / total)**3``: ~0 early on (lookahead does nothing
    while the LR is high), up to ``decay**every`` at the end; after step ``total`` the fast
    weights are set to the slow ones. The slow copy covers every floating-point entry of
    the state dict, BatchNorm running statistics included (they then match the weights).

    Runs as an optimizer post-step hook (:meth:`attach`), so a step skipped by the fp16
    gradient scaler does not count; :meth:`state_dict` goes into checkpoints.
    """

    def __init__(self, model: nn.Module, every: int, decay: float, total: int) -> None:
        self.every, self.decay, self.total = every, decay, total
        self.steps = 0
        self.active = True  # False while an LR range test borrows the optimizer
        # state_dict() tensors share storage with the module: copy_ into them updates it
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.fast]

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_post_hook(lambda *_: self.after_step())

    @torch.no_grad()
    def after_step(self) -> None:
        if not self.active:
            return
        self.steps += 1
        if self.steps == self.total:  # end of training: the slow weights are the result
            torch._foreach_copy_(self.fast, self.slow)
        elif self.steps < self.total and self.steps % self.every == 0:
            decay = self.decay ** self.every * (self.steps / self.total) ** 3
            torch._foreach_lerp_(self.slow, self.fast, 1.0 - decay)
            torch._foreach_copy_(self.fast, self.slow)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": [t.clone() for t in self.slow]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for t, s in zip(self.slow, state["slow"]):
            t.copy_(s)

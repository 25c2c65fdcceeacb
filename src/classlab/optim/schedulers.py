"""LR schedulers by name, and when each steps: per batch (onecycle, cosine, linear), per
epoch (step) or per epoch on a monitored validation metric (plateau). :class:`Stepper` hides
that difference from the loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler as lrs

from classlab.config import SchedConfig


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

"""LR schedulers by name, and when each steps: per batch (onecycle, cosine, linear), per
epoch (step) or per epoch on a monitored validation metric (plateau). :class:`Stepper` hides
that difference from the loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim import lr_scheduler as lrs

from classlab.config import SchedConfig


@dataclass
class Window:
    """A parameter group trained for its first ``steps`` optimizer steps only (airbench's
    whitening-layer bias): its LR falls linearly from ``base`` to 0 over them, whatever the
    run's schedule does to the other groups; from step ``steps`` on its parameters are frozen
    (``requires_grad`` off, gradient dropped), so backward stops computing what only they
    needed."""

    optimizer: torch.optim.Optimizer
    index: int  # of the group: a loaded optimizer state replaces the group dicts themselves
    steps: int
    base: float
    # False under DistributedDataParallel, whose gradient buckets expect the same parameters
    # at every step: the group then stays trainable at LR 0 (no change, a little more work)
    freeze: bool = True

    def apply(self, done: int) -> None:
        """Set the group for the step after ``done`` finished steps."""
        group = self.optimizer.param_groups[self.index]
        group["lr"] = self.base * max(0.0, 1.0 - done / self.steps)
        if done >= self.steps and self.freeze:
            for p in group["params"]:
                p.requires_grad_(False)
                p.grad = None


@dataclass
class Stepper:
    """A scheduler plus when to step it: ``"batch"``, ``"epoch"``, ``"plateau"`` or ``"none"``;
    and the groups trained for the first steps only (:class:`Window`), which it steps after
    every batch whatever the interval."""

    scheduler: lrs.LRScheduler | lrs.ReduceLROnPlateau | None
    interval: str
    monitor: str = ""
    windows: list[Window] = field(default_factory=list)
    batches: int = 0  # optimizer steps taken (counted only when there are windows)

    def after_batch(self) -> None:
        if self.interval == "batch":
            self.scheduler.step()
        if self.windows:
            self.batches += 1
            self._apply_windows()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        """``metrics`` holds train_/val_ loss and acc; test metrics are never passed here."""
        if self.interval == "epoch":
            self.scheduler.step()
        elif self.interval == "plateau":
            self.scheduler.step(metrics[self.monitor])
        self._apply_windows()  # the epoch-interval schedulers just reset every group's LR

    def _apply_windows(self) -> None:
        for w in self.windows:
            w.apply(self.batches)

    def state_dict(self) -> dict:
        state = self.scheduler.state_dict() if self.scheduler is not None else {}
        return {**state, WINDOW_KEY: self.batches} if self.windows else state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.batches = int(state.pop(WINDOW_KEY, 0))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
        self._apply_windows()


WINDOW_KEY = "window_steps"  # Stepper.state_dict's count of steps, beside the scheduler's own


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
                    steps_per_epoch: int, *, freeze_windows: bool = True) -> Stepper:
    # a windowed group's base LR is read before a warm-up scheduler scales it at construction
    windows = [Window(opt, i, max(1, round(g["train_epochs"] * steps_per_epoch)), g["lr"],
                      freeze_windows) for i, g in enumerate(opt.param_groups)
               if g.get("train_epochs")]
    stepper = SCHEDULERS[cfg.name](opt, cfg, epochs, steps_per_epoch)
    stepper.windows = windows
    stepper._apply_windows()  # step 0: the windowed groups at their base LR
    return stepper

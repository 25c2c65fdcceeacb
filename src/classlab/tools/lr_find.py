"""LR range test ("LR finder", Smith 2017; fastai's ``lr_find``): train for a few hundred
steps while the learning rate grows exponentially, watch the loss, suggest a learning rate,
and put the model and optimizer back exactly as they were.

* LR of step ``i`` (0-based, ``n`` steps): ``start_lr * (end_lr / start_lr) ** (i / (n-1))``,
  set on every parameter group (groups keep their LR ratios, e.g. ``norm_bias_lr_scale``).
* Smoothed loss: ``avg_i = smooth * avg_{i-1} + (1 - smooth) * loss_i`` (``avg_{-1} = 0``),
  reported bias-corrected as ``avg_i / (1 - smooth ** (i+1))``.
* Early stop: as soon as the smoothed loss exceeds ``diverge`` x its lowest value so far, or a
  loss is not finite.
* Afterwards the model's parameters and buffers, the optimizer's state and hyperparameters,
  the grad scaler, the global RNGs and the train/eval mode are restored bit for bit.

Suggestions, both read off the smoothed loss against log10(LR) after dropping the first
``min(10, n // 5)`` and the last ``min(5, n // 5)`` recorded points (the bias-corrected
average is noisy at the start, and the end is where it diverges):

* ``steepest``: the LR where the slope ``d smoothed / d log10(lr)`` (``numpy.gradient``) is
  most negative.
* ``valley``: the longest strictly decreasing subsequence of the smoothed loss up to its
  minimum (the "descent"; ties: the one that ends first) spans steps ``a..b``; the
  suggestion is the LR at step ``(a + b) // 2``, i.e. half way between where the descent
  starts and where the loss bottoms out, on the log-LR axis. This is fastai's "valley" rule,
  computed exactly and stopped at the minimum, so that the descent cannot hop over a bump
  (an instability) to a later, nearly as low dip. It is the more conservative of the two,
  and the one printed as *the* suggestion.

The test set is never touched; batches are the normal training batches (the session's
augmentation, label smoothing, gradient clipping and precision).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from classlab.augment import PixelStats, augment, epoch_images
from classlab.config import ConfigError
from classlab.engine import (
    StepRecipe,
    backward_and_step,
    batch_indices,
    epoch_generator,
    rng_state,
    set_rng_state,
    train_step,
)
from classlab.engine.console import console
from classlab.rundir import save_figure
from classlab.rundir.files import check_output_file

__all__ = ["LRFindResult", "lr_find", "lr_range_test", "main_lr_find", "suggest_steepest",
           "suggest_valley", "sweep"]


MAX_LR = 1e6  # the largest end_lr
CSV_HEADER = "step,lr,loss,smoothed"  # the per-step values written next to the plot

# --------------------------------------------------------------------------- result


@dataclass
class LRFindResult:
    lrs: list[float]  # LR (of the first parameter group) of every step taken
    losses: list[float]  # raw training loss of every step
    smoothed: list[float]  # bias-corrected exponential moving average of the loss
    steepest: float | None  # see the module docstring; None if too few steps were taken
    valley: float | None
    start_lr: float
    end_lr: float
    steps: int  # requested
    smooth: float
    diverge: float
    stopped_early: bool
    reason: str  # why it stopped, one line
    seconds: float

    @property
    def suggestion(self) -> float | None:
        """The suggested learning rate: ``valley`` (``steepest`` if there is no valley)."""
        return self.valley if self.valley is not None else self.steepest

    def describe(self) -> str:
        """Two lines: the suggestion, and how the test went."""
        if self.suggestion is None:
            head = "No suggestion: too few steps before the loss diverged; lower --start-lr"
        else:
            head = (f"Suggested LR: {self.suggestion:.3g} (valley); steepest descent at "
                    f"{self.steepest:.3g}")
        return (f"{head}\n{len(self.lrs)} of {self.steps} steps, LR {self.start_lr:.3g} -> "
                f"{self.lrs[-1] if self.lrs else self.start_lr:.3g}: {self.reason}")

    def to_csv(self, path: str | Path) -> Path:
        """Write ``step,lr,loss,smoothed`` rows."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER.split(","))
            for i, (lr, lo, sm) in enumerate(zip(self.lrs, self.losses, self.smoothed)):
                w.writerow([i, f"{lr:.6g}", f"{lo:.6g}", f"{sm:.6g}"])
        return path

    def plot(self, path: str | Path) -> Path:
        """Write :meth:`figure` as a PNG."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_figure(self.figure(), path, dpi=120)
        return path

    def figure(self) -> Figure:
        """Loss (raw and smoothed) against LR on a log axis, both suggestions marked."""
        fig = Figure(figsize=(7.5, 4.8))
        ax = fig.subplots()
        lrs, sm = np.asarray(self.lrs), np.asarray(self.smoothed)
        ax.plot(lrs, self.losses, color="0.72", lw=0.8, label="loss per step")
        ax.plot(lrs, sm, color="C0", lw=2.0,
                label=f"smoothed (EMA {self.smooth:g}, bias-corrected)")
        for name, lr, color in (("steepest", self.steepest, "C3"),
                                ("valley", self.valley, "C2")):
            if lr is None:
                continue
            i = int(np.argmin(np.abs(np.log(lrs) - math.log(lr))))
            ax.axvline(lr, color=color, ls="--", lw=1.0)
            ax.plot([lr], [sm[i]], "o", color=color, ms=8,
                    label=f"{name}: {lr:.2e}" + (" (suggested)" if name == "valley"
                                                 else ""))
        ax.set_xscale("log")
        if len(sm):
            k = int(np.argmin(sm))
            top = min(float(sm.max()), 1.25 * float(sm[: k + 1].max()))
            bottom = min(float(sm.min()), float(np.percentile(self.losses, 1)))
            pad = 0.05 * max(top - bottom, 1e-12)
            ax.set_ylim(bottom - pad, top + pad)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        ax.set_title(f"LR range test: {len(self.lrs)} steps; {self.reason}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return fig


# --------------------------------------------------------------------------- suggestions


def _window(n: int) -> tuple[int, int]:
    """[a, b) of the points used for suggestions (first/last few dropped)."""
    return min(10, n // 5), n - min(5, n // 5)


def suggest_steepest(lrs: list[float], smoothed: list[float]) -> float | None:
    """LR of the most negative d(smoothed)/d(log10 lr); None with fewer than 5 points.

    The slope at point i is taken between points ``i - h`` and ``i + h`` with ``h`` about a
    twentieth of the sweep: a neighbour-to-neighbour slope of a curve smoothed from noisy
    per-step losses picked a wiggle at 2e-7 on real CIFAR-10 (300 steps, ResNet18/LN)."""
    if len(lrs) < 5:
        return None
    a, b = _window(len(lrs))
    x = np.log10(np.asarray(lrs[a:b], dtype=np.float64))
    s = np.asarray(smoothed[a:b], dtype=np.float64)
    h = max(1, len(s) // 20)
    if len(s) <= 2 * h:
        h = 1
    slope = (s[2 * h:] - s[:-2 * h]) / (x[2 * h:] - x[:-2 * h])  # centred at h .. len - h - 1
    return float(lrs[a + h + int(np.argmin(slope))])


def suggest_valley(lrs: list[float], smoothed: list[float]) -> float | None:
    """LR half way (in steps, i.e. in log LR) along the longest strictly decreasing
    subsequence of the smoothed loss that ends at or before its minimum; None with fewer
    than 5 points."""
    if len(lrs) < 5:
        return None
    a, b = _window(len(lrs))
    s = np.asarray(smoothed[a:b], dtype=np.float64)
    s = s[: int(np.argmin(s)) + 1]  # the descent ends at the minimum
    n = len(s)
    length = np.ones(n, dtype=np.int64)  # longest decreasing subsequence ending at i
    first = np.arange(n)  # where that subsequence starts
    for i in range(1, n):
        higher = np.flatnonzero(s[:i] > s[i])
        if len(higher):
            j = higher[np.argmax(length[higher])]  # the earliest of the longest
            length[i], first[i] = length[j] + 1, first[j]
    end = int(np.argmax(length))  # the first one to reach the maximum length
    return float(lrs[a + (int(first[end]) + end) // 2])


# --------------------------------------------------------------------------- the sweep


@contextlib.contextmanager
def preserved(model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None = None) -> Iterator[None]:
    """Restore parameters and their gradients, buffers, optimizer state and hyperparameters,
    the grad scaler, the global RNG states and every module's train/eval flag on exit,
    exactly.

    Everything is restored in place: the parameter tensors, the optimizer's param-group
    dicts and its state dict stay the same objects (schedulers keep working)."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
              for g in optimizer.param_groups]
    state = {p: copy.deepcopy(st) for p, st in optimizer.state.items()}
    opt_attrs = {k: optimizer.__dict__[k] for k in ("_opt_called",) if k in optimizer.__dict__}
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    rng = rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            model.load_state_dict(weights)
        for p, grad in zip(model.parameters(), grads):
            p.grad = grad
        for m, mode in zip(model.modules(), modes):
            m.training = mode
        for g, saved in zip(optimizer.param_groups, groups):
            for k in [k for k in g if k != "params" and k not in saved]:
                del g[k]
            g.update(saved)
        optimizer.state.clear()
        optimizer.state.update(state)
        for k in ("_opt_called",):
            if k in opt_attrs:
                optimizer.__dict__[k] = opt_attrs[k]
            else:
                optimizer.__dict__.pop(k, None)
        if scaler is not None and scaler_state:
            scaler.load_state_dict(scaler_state)
        set_rng_state(rng)


def _check_args(start_lr: float, end_lr: float, steps: int, smooth: float,
                diverge: float) -> None:
    if not (start_lr > 0 and end_lr > start_lr and math.isfinite(end_lr)):
        raise ConfigError(f"lr-find: need 0 < start_lr < end_lr, got start_lr={start_lr:g}, "
                          f"end_lr={end_lr:g}")
    if end_lr > MAX_LR:  # far past any divergence; beyond float32 it cannot even be set
        raise ConfigError(f"lr-find: end_lr={end_lr:g} is out of range; must be ≤ {MAX_LR:g}")
    if steps < 2:
        raise ConfigError(f"lr-find: steps={steps} is out of range; must be ≥ 2")
    if not 0 <= smooth < 1:
        raise ConfigError(f"lr-find: smooth={smooth:g} is out of range; must be in [0, 1)")
    if not diverge > 1:
        raise ConfigError(f"lr-find: diverge={diverge:g} is out of range; must be > 1")


@dataclass
class _Trace:
    """The sweep so far: LR, raw and smoothed loss of every step, and why it stopped."""

    smooth: float
    diverge: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    avg: float = 0.0
    best: float = math.inf
    reason: str = "completed"

    def add(self, i: int, lr: float, value: float) -> bool:
        """Record step ``i``; True when the sweep must stop (non-finite or diverged)."""
        if not math.isfinite(value):
            self.reason = f"stopped at step {i}: non-finite loss at LR {lr:.3g}"
            return True
        self.avg = self.smooth * self.avg + (1 - self.smooth) * value
        sm = self.avg / (1 - self.smooth ** (i + 1))  # bias-corrected
        self.lrs.append(lr)
        self.losses.append(value)
        self.smoothed.append(sm)
        self.best = min(self.best, sm)
        if sm > self.diverge * self.best:
            self.reason = (f"stopped at step {i}: smoothed loss {sm:.4g} > {self.diverge:g} x "
                           f"best {self.best:.4g} (diverged) at LR {lr:.3g}")
            return True
        return False


def _bar(steps: int, progress: bool):
    if not progress:
        return None
    return console().bar(steps, "LR range test", mininterval=0.5)


def sweep(model: nn.Module, optimizer: torch.optim.Optimizer,
          step_fn: Callable[[int], torch.Tensor], *, scaler: torch.amp.GradScaler | None = None,
          start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
          smooth: float = 0.98, diverge: float = 4.0, progress: bool = False) -> LRFindResult:
    """The range test: before each call of ``step_fn(i)`` (one optimizer step, returning
    its loss) every parameter group's LR is set to step ``i``'s LR, keeping the groups'
    ratios. Model, optimizer, ``scaler`` and the RNGs are restored afterwards."""
    _check_args(start_lr, end_lr, steps, smooth, diverge)
    groups = optimizer.param_groups
    base = float(groups[0]["lr"])
    ratios = [float(g["lr"]) / base if base > 0 else 1.0 for g in groups]
    trace, t0, bar = _Trace(smooth, diverge), time.perf_counter(), _bar(steps, progress)
    with preserved(model, optimizer, scaler):
        model.train()
        try:
            for i in range(steps):
                lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
                for g, r in zip(groups, ratios):
                    g["lr"] = lr * r
                stop = trace.add(i, lr, float(step_fn(i)))
                if bar is not None and not stop:
                    bar.update(1)
                    bar.set_postfix_str(f"lr={lr:.2e} loss={trace.smoothed[-1]:.4f}",
                                        refresh=False)
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()
            optimizer.zero_grad(set_to_none=True)
    return LRFindResult(
        lrs=trace.lrs, losses=trace.losses, smoothed=trace.smoothed,
        steepest=suggest_steepest(trace.lrs, trace.smoothed),
        valley=suggest_valley(trace.lrs, trace.smoothed), start_lr=start_lr, end_lr=end_lr,
        steps=steps, smooth=smooth, diverge=diverge, stopped_early=trace.reason != "completed",
        reason=trace.reason, seconds=time.perf_counter() - t0)


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    amp: Any = None,
    grad_clip: float = 0.0,
    **kw: Any,
) -> LRFindResult:
    """The range test on any model: ``loss_fn(step)`` runs the forward pass of one batch
    (inside ``amp.autocast()`` when ``amp`` is given) and returns the scalar loss; the
    backward pass and optimizer step are the training step's
    (:func:`classlab.engine.step.backward_and_step`). ``kw``: start_lr, end_lr, steps,
    smooth, diverge, progress (see :func:`sweep`)."""
    autocast = amp.autocast if amp is not None else contextlib.nullcontext
    # Without amp: a disabled scaler, whose scale/unscale/step are plain backward and step.
    scaler = amp.scaler if amp is not None else torch.amp.GradScaler("cpu", enabled=False)

    def step_fn(i: int) -> torch.Tensor:
        with autocast():
            loss = loss_fn(i)
        backward_and_step(loss, optimizer, scaler, model.parameters(), grad_clip=grad_clip)
        return loss.detach()

    return sweep(model, optimizer, step_fn, scaler=amp.scaler if amp is not None else None,
                 **kw)


def _training_batches(session: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                      torch.Generator]]:
    """(images of the epoch, batch indices, epoch generator) of training's batches, epoch 1,
    then epoch 2, ..., as the epoch loop draws them."""
    cfg, x = session.cfg, session.data["train"][0]
    epoch = 1
    while True:
        gen = epoch_generator(cfg.train.seed, epoch, session.device)
        xe = epoch_images(x, epoch, cfg.train.seed, cfg.aug)  # as training sees it
        for idx in batch_indices(len(x), cfg.train.batch_size, gen):
            yield xe, idx, gen
        epoch += 1


def lr_find(session: Any, **kw: Any) -> LRFindResult:
    """The range test on a :class:`classlab.run.session.Session`'s model and optimizer, with
    its normal training batches (shuffled and augmented as in training: epoch 1's batches,
    then epoch 2's, ...) and the training step itself (label smoothing, gradient clipping,
    precision). Restores everything afterwards (see :func:`preserved`); the validation and
    test splits are not used. ``kw``: start_lr, end_lr, steps, smooth, diverge, progress."""
    s, cfg = session, session.cfg
    if s.dist.world > 1:
        raise ConfigError("lr-find runs in one process; start it without torchrun")
    y = s.data["train"][1]
    if len(y) == 0:
        raise ConfigError("lr-find: the training split is empty")
    stream = _training_batches(s)
    recipe = StepRecipe(s.optimizer, s.amp, cfg.train.label_smoothing, cfg.train.grad_clip)
    stats = PixelStats(tuple(s.splits.mean), tuple(s.splits.std))

    def step_fn(_step: int) -> torch.Tensor:
        xe, idx, gen = next(stream)
        xb = s.normalize(xe[idx])
        if cfg.aug.ops:  # the per-image ops only: lr-find never mixes (mixup / cutmix)
            xb = augment(xb, gen, cfg.aug, stats)
        loss, _ = train_step(s.net, xb, y[idx], recipe)
        return loss

    if s.lookahead is not None:  # the sweep measures the optimizer alone: no pull-backs
        s.lookahead.active = False
    try:
        return sweep(s.model, s.optimizer, step_fn, scaler=s.amp.scaler, **kw)
    finally:
        if s.lookahead is not None:
            s.lookahead.active = True


def _is_ours(path: Path) -> bool:
    """A CSV this command wrote (its header), which another lr-find may replace."""
    try:
        with open(path, "rb") as f:
            return f.readline().strip() == CSV_HEADER.encode()
    except OSError:
        return False


def main_lr_find(cfg: Any, data_dir: Path | None, *, steps: int = 200, start_lr: float = 1e-7,
                 end_lr: float = 10.0, plot: Path = Path("lr_find.png"),
                 force: bool = False) -> int:
    """``classlab lr-find``: build the session, run the test, write the plot and a CSV
    next to it (same name, ``.csv``), print the suggestion. Neither may replace a file this
    command did not write (unless ``force``)."""
    from classlab.run.session import build_session, torch_threads

    _check_args(start_lr, end_lr, steps, 0.98, 4.0)  # before the data is loaded
    plot = check_output_file(plot, "--plot", suffix=".png", force=force)
    check_output_file(plot.with_suffix(".csv"), f"--plot {plot}: its table", suffix=".csv",
                      force=force, ours=_is_ours, what="table lr-find wrote")
    with torch_threads(cfg.train.threads):
        # train.compile: auto decides for the sweep's steps, not the run's
        s = build_session(cfg, data_dir, train_steps=steps)
        return _main(s, steps=steps, start_lr=start_lr, end_lr=end_lr, plot=plot)


def _main(s: Any, *, steps: int, start_lr: float, end_lr: float, plot: Path) -> int:
    cfg = s.cfg
    print(f"LR range test: {cfg.model.name}/{cfg.model.norm}, {s.params:,} params, "
          f"{cfg.optim.name}, device {s.device}, precision {s.amp.precision}, "
          f"{len(s.data['train'][0]):,} training images, batch {cfg.train.batch_size}",
          flush=True)
    res = lr_find(s, start_lr=start_lr, end_lr=end_lr, steps=steps,
                  progress=cfg.train.progress)
    plot = Path(plot)
    res.plot(plot)
    table = res.to_csv(plot.with_suffix(".csv"))
    print(res.describe())
    print(f"Plot: {plot}  (per-step values: {table}; {res.seconds:.1f}s)", flush=True)
    return 0

"""How long a run will take, measured: after the first steps one line with the step time and
the projected epoch and run time, then the run's ETA on the progress bar.

The first step a process trains is not measured (it allocates memory and warms caches); the
step time is the mean over the next steps, until MEASURE_SECONDS of wall time or
MEASURE_STEPS steps. Evaluation is projected from it: a training step of an image (forward,
backward, update) costs about EVAL_COST forward passes of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from classlab import fmt
from classlab.engine.console import console
from classlab.engine.epoch import StepInfo

MEASURE_SECONDS = 15.0  # wall time the step time is averaged over, at most...
MEASURE_STEPS = 20  # ...or this many steps, whichever comes first
# training step per image / evaluation forward per image: 2.5-4 on this project's 2-core CPU
# (ResNet18 width 64 and width 4, fp32); evaluation batches are larger, TTA multiplies it
EVAL_COST = 3.0
TTA_VIEWS = {"none": 1, "flip": 2, "flip_translate": 6}
SLOW_SECONDS = 3600.0  # a CPU run projected longer than this hears about the fast recipe
FAST_RECIPE = ("experiments/fast.yaml reaches ~90% test accuracy in ~8 min on 2 CPU cores "
               "(classlab train experiments/fast.yaml --data-dir {root})")
_EMA = 0.1  # weight of the newest step in the bar's running step time


def say(line: str) -> None:
    """Say a line while a progress bar may be drawn (the terminal: between bars, on stdout;
    see :class:`classlab.engine.console.Console`)."""
    console().say(line)


def _about(seconds: float) -> str:
    """A projected duration, rounded as a person plans (``~9.4 min``)."""
    return fmt.duration(seconds, approx=True)


class Pace:
    """Measures the steps one process trains (``after_step`` from the epoch loop,
    ``epoch_done`` after each epoch) and projects the rest of the run ``s``."""

    def __init__(self, s, device_name: str, *, fresh: bool, main: bool = True,
                 data_root: str | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        cfg = s.cfg
        self.clock = clock  # seconds, monotonic (None: time.monotonic; tests pass a fake)
        self.fresh = fresh  # this process trains the run from its first step
        self.main = main  # prints (rank 0 of a torchrun job)
        self.epochs, self.steps = cfg.train.epochs, s.steps_per_epoch
        self.every, self.device = cfg.train.eval_every, s.device
        self.device_name, self.data_root = device_name, data_root
        self.slow_hint = cfg.data.name == "cifar10" and s.device.type == "cpu"
        views = 1 + (TTA_VIEWS[cfg.train.tta] - 1) * cfg.train.tta_fraction  # per image
        images = sum(len(s.data[k][0]) for k in ("val", "test")) * views
        # evaluation of one scored epoch, in training steps
        self.eval_steps = images / cfg.train.batch_size / EVAL_COST
        self.step_seconds: float | None = None  # measured, then a running mean for the bar
        self.line: str | None = None  # the printed projection (once per process)
        self._mark: tuple[float, int, int] | None = None  # (time, epoch, step) measured from
        self._last: tuple[float, int, int] | None = None
        self._epoch_times: list[float] = []

    def after_step(self, info: StepInfo) -> None:
        now = self._now()
        if self.line is None:
            self._measure(now, info)
        elif self._last is not None and self._last[1] == info.epoch:
            step = (now - self._last[0]) / max(info.step - self._last[2], 1)
            self.step_seconds += _EMA * (step - self.step_seconds)
        self._last = (now, info.epoch, info.step)

    def epoch_done(self, seconds: float, full: bool) -> None:
        """``seconds``: the epoch's wall time; ``full``: all of it ran in this process."""
        if full:
            self._epoch_times.append(seconds)

    def note(self) -> str:
        """The run's ETA for the progress bar ("" until the step time is measured)."""
        if self.step_seconds is None or self._last is None:
            return ""
        return f"run ETA {_about(self.seconds_left(self._last[1], self._last[2]))}"

    def seconds_left(self, epoch: int, step: int) -> float:
        """Projected wall time after ``step`` steps of ``epoch``, evaluation included."""
        train = (self.steps - step) * self.step_seconds
        now = train + self._eval_seconds(epoch)
        later = range(epoch + 1, self.epochs + 1)
        if self._epoch_times:  # whole epochs measured here: their mean, eval included
            return now + len(later) * sum(self._epoch_times) / len(self._epoch_times)
        return now + sum(self.epoch_seconds(e) for e in later)

    def epoch_seconds(self, epoch: int) -> float:
        return self.steps * self.step_seconds + self._eval_seconds(epoch)

    def _eval_seconds(self, epoch: int) -> float:
        scored = epoch == self.epochs or (self.every > 0 and epoch % self.every == 0)
        return self.eval_steps * self.step_seconds if scored else 0.0

    def _synced(self, now: float) -> float:
        """``now`` once the GPU has done what was queued: two synchronisations per process,
        at the start and the end of the measurement (on a CPU the step is done: ``now``)."""
        if self.device.type != "cuda":
            return now
        torch.cuda.synchronize(self.device)
        return self._now()

    def _now(self) -> float:
        return self.clock() if self.clock is not None else time.monotonic()

    def _measure(self, now: float, info: StepInfo) -> None:
        if self._mark is None or self._mark[1] != info.epoch:  # evaluation came in between
            self._mark = (self._synced(now), info.epoch, info.step)
            return
        n = info.step - self._mark[2]
        if now - self._mark[0] < MEASURE_SECONDS and n < MEASURE_STEPS \
                and info.step < info.steps:
            return
        self.step_seconds = (self._synced(now) - self._mark[0]) / n
        self.line, run_seconds = self._projection(info, self._mark[2] + 1)
        if not self.main:
            return
        say(self.line)
        if self.slow_hint and run_seconds > SLOW_SECONDS:
            say(f"That is long: {FAST_RECIPE.format(root=self.data_root or 'DIR')}")

    def _projection(self, info: StepInfo, first: int) -> tuple[str, float]:
        """The line, e.g. ``Pace: 3.21 s/step (steps 2-4 of epoch 1 on cpu (...)):
        ~9.4 min/epoch, ~6 h 15 min for 40 epochs``, and the run seconds it projects (all
        epochs for a fresh run, what is left for a resumed one)."""
        if self.fresh:
            seconds = sum(self.epoch_seconds(e) for e in range(1, self.epochs + 1))
            rest = f"{_about(seconds)} for {self.epochs} epoch{'s' if self.epochs > 1 else ''}"
        else:
            seconds = self.seconds_left(info.epoch, info.step)
            done = info.epoch - 1 + info.step / info.steps
            rest = (f"{_about(seconds)} for the remaining {self.epochs - done:.1f} of "
                    f"{self.epochs} epochs")
        steps = f"steps {first}-{info.step}" if info.step > first else f"step {first}"
        return (f"Pace: {self.step_seconds:.3g} s/step ({steps} of epoch {info.epoch} on "
                f"{self.device_name}): "
                f"{_about(self.epoch_seconds(info.epoch))}/epoch, {rest}"), seconds

"""Inside the epoch loop, after every step and at every epoch's end: measure the pace, write a
mid-epoch checkpoint when ``train.checkpoint_minutes`` have passed since the last one, and
stop cleanly on SIGTERM / SIGINT (:mod:`classlab.run.signals`).

A mid-epoch checkpoint (``midepoch.pt``) is last.pt's state (model, optimizer, scheduler,
scaler, EMA, Lookahead, global RNGs, config; ``epoch`` = the last *finished* epoch) written
between two steps, plus ``position``: the epoch in progress, the steps of it done, the
running loss / accuracy sums of those steps, the epoch's first LR and its wall time so far.
The epoch's batch order is not stored: it is regenerated from (train.seed, epoch), and the
augmentation draws of the steps done are replayed (:func:`classlab.engine.train_one_epoch`).

Under torchrun the ranks agree after every step (one all-reduce of two numbers) on whether to
checkpoint or stop, so every rank stops at the same step; rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from classlab.engine import TrainingError
from classlab.engine.epoch import StepInfo, Tally
from classlab.engine.margins import ImageDynamics
from classlab.run.pace import Pace
from classlab.run.session import Session, checkpoint_state
from classlab.run.signals import RunInterrupted, SignalTrigger, StopNow, StopSignals, signal_name
from classlab.rundir import RunFiles
from classlab.rundir.checkpoint import save_checkpoint


@dataclass
class Position:
    """Where an interrupted epoch continues: ``step`` of its ``steps`` steps are done."""

    epoch: int
    step: int
    steps: int
    tally: Tally  # the sums of those steps, over all processes
    lr: float  # the LR at the epoch's first step (metrics.csv's lr column)
    seconds: float  # wall time the epoch had taken, seconds
    # the per-image dynamics of those steps (log.data_dynamics; ImageDynamics.partial_state)
    marks: dict | None = None

    def to_state(self) -> dict:
        state = {"epoch": self.epoch, "step": self.step, "steps": self.steps,
                 "loss_sum": self.tally.loss_sum, "correct": self.tally.correct,
                 "seen": self.tally.seen, "lr": self.lr, "seconds": self.seconds}
        if self.marks is not None:
            state["marks"] = self.marks
        return state

    @classmethod
    def from_state(cls, d: dict) -> Position:
        marks = d.get("marks")
        return cls(int(d["epoch"]), int(d["step"]), int(d["steps"]),
                   Tally(float(d["loss_sum"]), int(d["correct"]), int(d["seen"])),
                   float(d["lr"]), float(d["seconds"]),
                   marks if isinstance(marks, dict) else None)


@dataclass
class Progress:
    """How far a run has come: what :func:`classlab.run.fit.fit` continues from (a new run
    starts from ``Progress()``)."""

    epoch: int = 0  # epochs finished (last.pt holds them)
    best: dict = field(default_factory=dict)  # the best-by-validation epoch so far
    wall: float = 0.0  # wall seconds spent so far, over every process that trained it
    position: Position | None = None  # where an interrupted epoch continues (midepoch.pt)


class StepControl:
    """``on_step`` of the epoch loop, and the epoch-boundary checks of :func:`fit`."""

    def __init__(self, s: Session, files: RunFiles, stop: StopSignals, pace: Pace,
                 flush: Callable[[], None]) -> None:
        self.s, self.files, self.stop, self.pace, self.flush = s, files, stop, pace, flush
        self.trigger = SignalTrigger(s.dist.rank)
        self.every = s.cfg.train.checkpoint_minutes * 60.0  # seconds; 0: no periodic ones
        self.best: dict = {}  # best-by-validation so far, as last.pt holds it
        self.marks: ImageDynamics | None = None  # log.data_dynamics: kept mid-epoch too
        self._saved = time.monotonic()  # when the last checkpoint (of any kind) was written
        self._epoch, self._lr, self._started, self._before = 0, 0.0, 0.0, 0.0

    def begin_epoch(self, epoch: int, lr: float, seconds_before: float = 0.0) -> None:
        """``seconds_before``: what the epoch took before a mid-epoch checkpoint."""
        self._epoch, self._lr = epoch, lr
        self._started, self._before = time.monotonic(), seconds_before

    def epoch_seconds(self) -> float:
        return self._before + time.monotonic() - self._started

    def __call__(self, info: StepInfo) -> None:
        self.trigger.fire(info.epoch, str(info.step))
        self.pace.after_step(info)
        # at an epoch's last step the end-of-epoch checkpoint follows anyway
        signum, due = self._agree(periodic=info.step < info.steps)
        if signum or due:
            self.save(Position(info.epoch, info.step, info.steps, info.tally(), self._lr,
                               self.epoch_seconds()))
        if signum:
            raise self._interrupted(signum, info.epoch, info.step, info.steps)

    def evaluate(self, fn: Callable[[], dict], tally: Tally, steps: int) -> dict:
        """``fn()`` (the epoch's evaluation); a signal during it stops at once, with a
        checkpoint after the epoch's last step (evaluation runs again on resume). Under
        torchrun the ranks could not agree mid-evaluation: the signal waits for its end."""
        if self.s.dist.world > 1:
            return fn()
        try:
            with self.stop.abortable():
                self.trigger.fire(self._epoch, "eval")  # test-only: a signal mid-evaluation
                return fn()
        except StopNow:
            self.save(Position(self._epoch, steps, steps, tally, self._lr, self.epoch_seconds()))
            raise self._interrupted(self.stop.signum, self._epoch, steps, steps) from None

    def epoch_saved(self) -> None:
        """last.pt now holds the epoch: a mid-epoch checkpoint of it is stale."""
        if self.s.dist.main:
            self.files.midepoch.unlink(missing_ok=True)
        self._saved = time.monotonic()

    def at_boundary(self, epoch: int) -> None:
        """Stop after ``epoch`` (its files are written) when a signal came meanwhile."""
        signum, _ = self._agree(periodic=False)
        if signum:
            raise self._interrupted(signum, epoch, None, None)

    def save(self, pos: Position) -> None:
        """Write midepoch.pt (rank 0; every rank calls this, at the same step)."""
        if self.marks is not None:  # gathered from every rank: a collective call
            pos.marks = self.marks.partial_state()
        if self.s.dist.main:
            state = checkpoint_state(self.s, pos.epoch - 1, self.best)
            state["position"] = pos.to_state()
            try:
                self.flush()  # dynamics rows up to this step, before the checkpoint
                save_checkpoint(self.files.midepoch, state)
            except OSError as e:
                raise TrainingError(f"cannot write {self.files.midepoch}: {e.strerror or e}; "
                                    "last.pt keeps the last finished epoch") from None
        self._saved = time.monotonic()

    def _agree(self, periodic: bool) -> tuple[int, bool]:
        """(signal number or 0, whether a periodic checkpoint is due), the same on every
        rank: the largest over the ranks."""
        signum = self.stop.signum or 0
        due = periodic and self.every > 0 and time.monotonic() - self._saved >= self.every
        if self.s.dist.world == 1:
            return signum, due
        t = torch.tensor([signum, int(due)], device=self.s.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t[0]), bool(t[1])

    def _interrupted(self, signum: int, epoch: int, step: int | None,
                     steps: int | None) -> RunInterrupted:
        """The exception to raise; ``step`` None: stopped at the end of ``epoch``. (Under
        torchrun only rank 0's says anything: one line, not one per process.)"""
        if steps:
            where, path = f"at epoch {epoch}, step {step} of {steps}", self.files.midepoch
        else:
            where, path = f"after epoch {epoch}", self.files.checkpoint
        e = RunInterrupted(f"stopped by {signal_name(signum)} {where}; checkpoint {path}; "
                           f"continue with: classlab train --resume {self.files.root}", signum)
        e.record = {"signal": signal_name(signum), "epoch": epoch, "step": step,
                    "steps": steps}
        e.silent = not self.s.dist.main
        return e

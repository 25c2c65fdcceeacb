"""The run's outside loggers behind one interface: TensorBoard (``log.tensorboard``) and
MLflow (``log.mlflow``). The run flow calls :meth:`RunLoggers.epoch` after each epoch's files
are written and :meth:`RunLoggers.finish` once the run (and its report) is done; leaving
:func:`run_loggers` closes them all, also when training fails or is interrupted.

Only the process that writes the run folder logs (rank 0 of a torchrun job).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from classlab.config import Config
from classlab.run.tensorboard import epoch_logger
from classlab.run.tracking import run_tracker


class RunLoggers:
    """What the run flow logs to, as one object (no logger on: both calls do nothing)."""

    def __init__(self) -> None:
        self.on_epoch: list[Callable[[dict], None]] = []
        self.on_finish: list[Callable[[dict], None]] = []

    def epoch(self, row: dict) -> None:
        """One epoch's metrics.csv row (``epoch`` is the step)."""
        for log in self.on_epoch:
            log(row)

    def finish(self, summary: dict) -> None:
        """The run's final summary, after its report is written (MLflow uploads it)."""
        for log in self.on_finish:
            log(summary)


@contextlib.contextmanager
def run_loggers(cfg: Config, run_dir: str | Path, start_epoch: int = 0,
                main: bool = True) -> Iterator[RunLoggers]:
    """The loggers ``cfg.log`` asks for (``start_epoch``: the last epoch already done, when
    resuming; ``main=False``: a torchrun process other than rank 0, which logs nothing)."""
    logs = RunLoggers()
    with contextlib.ExitStack() as stack:
        tensorboard = stack.enter_context(epoch_logger(cfg, run_dir, start_epoch, main))
        if tensorboard is not None:
            logs.on_epoch.append(tensorboard)
        if cfg.log.mlflow and main:
            mlflow = stack.enter_context(run_tracker(cfg, Path(run_dir)))
            logs.on_epoch.append(mlflow.epoch)
            logs.on_finish.append(mlflow.finish)
        yield logs

"""TensorBoard logging of the per-epoch metrics (``log.tensorboard: true``).

Event files go to ``<run_dir>/tensorboard/``; one scalar per metric and epoch
(``global_step`` = epoch): ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
``test/loss``, ``test/acc`` and ``lr`` (the LR at the epoch's first step, as in
metrics.csv). Missing values (no validation split) are not written. The resolved config is
added once as text (``config``).

The ``tensorboard`` package is optional: :func:`check_available` raises a one-line
:class:`~classlab.config.ConfigError` when it is missing, to be called before the run folder
is created (:mod:`classlab.run.checks` does). The run flow hooks it into
``fit(..., on_epoch=...)`` through :func:`epoch_logger`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from classlab.config import ConfigError
from classlab.rundir import RunFiles

MISSING = "log.tensorboard=true needs the tensorboard package: pip install tensorboard"
# metrics.csv column -> TensorBoard tag
TAGS: dict[str, str] = {
    "train_loss": "train/loss", "train_acc": "train/acc",
    "val_loss": "val/loss", "val_acc": "val/acc",
    "test_loss": "test/loss", "test_acc": "test/acc",
    "lr": "lr",
}


def check_available() -> None:
    """Raise ConfigError(:data:`MISSING`) unless TensorBoard logging can work here."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING) from None


def check_config(cfg: Any) -> None:
    """:func:`check_available` when ``cfg.log.tensorboard`` is on; nothing otherwise."""
    if cfg.log.tensorboard:
        check_available()


class TensorBoardLogger:
    """Callable for ``fit(on_epoch=...)``: writes one metrics row per call, flushed at once
    (so TensorBoard shows a run while it trains).

    ``start_epoch``: the last epoch already done (when resuming). Events at later epochs
    left by an interrupted process are purged, as metrics.csv rows are.
    """

    def __init__(self, run_dir: str | Path, start_epoch: int = 0,
                 config_text: str | None = None) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.dir = RunFiles(run_dir).tensorboard
        self.writer = SummaryWriter(log_dir=str(self.dir),
                                    purge_step=start_epoch + 1 if start_epoch else None)
        if config_text is not None and not start_epoch:
            # Markdown: indent by 4 spaces so TensorBoard shows it as a code block
            self.writer.add_text("config", "\n".join("    " + line
                                                     for line in config_text.splitlines()), 0)
            self.writer.flush()

    def __call__(self, row: dict) -> None:
        epoch = int(row["epoch"])
        for key, tag in TAGS.items():
            value = row.get(key)
            if value is None or not math.isfinite(float(value)):
                continue
            self.writer.add_scalar(tag, float(value), global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def epoch_logger(cfg: Any, run_dir: str | Path, start_epoch: int = 0,
                 main: bool = True) -> Iterator[Callable[[dict], None] | None]:
    """The ``on_epoch`` callback for ``cfg`` (None when ``log.tensorboard`` is off, or in a
    process other than rank 0 of a torchrun job: ``main=False``); the event file is closed
    on exit, also when training fails."""
    if not cfg.log.tensorboard or not main:
        yield None
        return
    from classlab import config

    with TensorBoardLogger(run_dir, start_epoch, config.dump(cfg)) as logger:
        yield logger

"""Stopping a run on request: SIGTERM (Slurm preemption, ``kill``, a closing Colab) and SIGINT
(Ctrl-C) finish the current step; the run layer then writes a mid-epoch checkpoint and raises
:class:`RunInterrupted`, which the command line turns into one line and exit 143 / 130.

A second Ctrl-C stops at once (KeyboardInterrupt): what is on disk is the last complete
checkpoint, since every file is written atomically. Repeated SIGTERMs (torchrun forwards
them) are ignored while the checkpoint is written.

``CLASSLAB_TEST_SIGNAL_AT`` is for the test suite only: ``EPOCH:STEP[:INT|TERM][@RANK]`` makes
the process send itself the signal (default TERM) after that step of that epoch;
``EPOCH:eval[:...]`` as that epoch's evaluation starts, ``EPOCH:write[:...]`` as its
end-of-epoch checkpoint is written (after its metrics row), so the tests can hit an exact
position of a real training process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

TEST_SIGNAL_ENV = "CLASSLAB_TEST_SIGNAL_AT"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after a checkpoint was written; ``str()`` is the one
    line to show, ``exit_code`` the shell's convention (128 + signal number)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.record: dict = {}  # for summary.json: signal, epoch, step, steps
        self.silent = False  # a torchrun rank other than 0: rank 0 says it


class StopNow(Exception):
    """Raised by the handler while nothing is being written (evaluation): stop at once."""


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """While active (a ``with`` block in the main thread), SIGTERM and SIGINT set
    :attr:`signum` instead of ending the process; elsewhere nothing is installed."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._abortable = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            from tqdm import tqdm  # a plain print would land inside a progress bar

            tqdm.write(f"{signal_name(signum)} received: stopping after the current step and "
                       "saving a checkpoint (Ctrl-C again stops at once)", file=sys.stdout)
            sys.stdout.flush()
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # a person pressing Ctrl-C twice: stop now
        if self._abortable:
            raise StopNow

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """A block a signal may cut short (raising StopNow): one that writes nothing and
        whose work is simply redone on resume, e.g. evaluation."""
        if self.signum is not None:
            raise StopNow
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False


class SignalTrigger:
    """The ``CLASSLAB_TEST_SIGNAL_AT`` trigger (see the module docstring); inert when unset."""

    def __init__(self, rank: int = 0) -> None:
        self.at: tuple[int, str] | None = None
        self.signum = signal.SIGTERM
        spec, _, on_rank = os.environ.get(TEST_SIGNAL_ENV, "").partition("@")
        parts = spec.split(":")
        if len(parts) < 2 or not parts[0].isdigit() or (on_rank and on_rank != str(rank)):
            return  # unset, malformed or meant for another rank: inert
        self.at = (int(parts[0]), parts[1])
        if parts[2:] == ["INT"]:
            self.signum = signal.SIGINT

    def fire(self, epoch: int, point: str) -> None:
        """Send the signal to this process when (epoch, point) is the configured one;
        ``point`` is a step count ("3"), "eval" or "write"."""
        if self.at == (epoch, point):
            self.at = None
            os.kill(os.getpid(), self.signum)

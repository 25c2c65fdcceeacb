"""Where a run's live output goes: its progress bars, the lines said between them (the pace
projection), each epoch's row and a grid's point events.

The default :class:`Console` is the terminal, exactly as the command line has always shown
it (tqdm bars on stderr, lines on stdout). A caller that shows progress another way (the
notebook display, :mod:`classlab.notebook`) installs its own for the duration of a call::

    with using(MyConsole()):
        train_run(cfg)

The current console is held in a context variable, so a grid's console can hand its points
another one and get its own back afterwards.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any


class Console:
    """The terminal: what ``classlab train`` / ``classlab grid`` print."""

    def bar(self, total: int, desc: str, *, initial: int = 0, mininterval: float = 0.5,
            disable: bool = False) -> Any:
        """A progress bar (tqdm's interface: ``update``, ``set_postfix_str``, ``write``,
        ``close``) over ``total`` steps, ``initial`` of them done already."""
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=disable, leave=True, dynamic_ncols=True,
                    file=sys.stderr, mininterval=mininterval, initial=initial)

    def say(self, line: str) -> None:
        """A line while a progress bar may be drawn: tqdm clears the bar, prints, and draws
        it again below (a plain print would land inside the bar)."""
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    def epoch(self, row: dict, line: str) -> None:
        """An epoch's metrics row (as metrics.csv has it) once its files are written;
        ``line`` is how the terminal says it."""
        print(line, flush=True)

    def point(self, event: str, name: str, line: str, summary: dict | None = None) -> None:
        """A grid point's ``event`` (start, end, failed, elsewhere); ``summary``: its
        summary.json at the end; ``line`` is how the terminal says it."""
        print(line, flush=True)


TERMINAL = Console()
_current: ContextVar[Console] = ContextVar("classlab_console", default=TERMINAL)


def console() -> Console:
    """The console the live output goes to now (the terminal unless a caller set one)."""
    return _current.get()


@contextlib.contextmanager
def using(c: Console) -> Iterator[Console]:
    """Send the live output to ``c`` inside the ``with`` block."""
    token = _current.set(c)
    try:
        yield c
    finally:
        _current.reset(token)

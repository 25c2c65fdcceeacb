"""Training shown live in a notebook, fastai-style: the epochs as one HTML table updated in
place (loss and accuracy per split, the LR, the time), the pace line and the run's ETA under
it, and one progress bar reused epoch after epoch. The run's other lines (run folder, model,
final accuracies, report) print as they do in a terminal, once each.

    with live_run():          # a no-op outside a notebook: the terminal output as it was
        train_run(cfg, ...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from classlab import fmt
from classlab.engine.console import TERMINAL, Console, using
from classlab.notebook import markup
from classlab.notebook.bars import LiveBar
from classlab.notebook.detect import figures_inline, in_notebook

EPOCH_COLUMNS = ["epoch", "train loss", "train acc", "val loss", "val acc", "test loss",
                 "test acc", "lr", "time"]


def epoch_cells(row: dict) -> list[str]:
    """One metrics row as the table shows it (a split not scored that epoch: MISSING)."""
    return [str(row["epoch"]), fmt.fixed(row["train_loss"], 4), fmt.pct(row["train_acc"]),
            fmt.fixed(row["val_loss"], 4), fmt.pct(row["val_acc"]),
            fmt.fixed(row["test_loss"], 4), fmt.pct(row["test_acc"]),
            fmt.number(row["lr"], 3), fmt.duration(row["seconds"])]


class BarDisplay(Console):
    """One progress bar in the cell, reused by every loop that asks for one (lr-find's
    sweep; a run's epochs); lines said meanwhile print once, as in a terminal."""

    def __init__(self) -> None:
        self.live: LiveBar | None = None

    def bar(self, total: int, desc: str, *, initial: int = 0, mininterval: float = 0.5,
            disable: bool = False) -> Any:
        if disable:
            return TERMINAL.bar(total, desc, disable=True)  # draws nothing
        self.before_bar()
        if self.live is None:
            self.live = LiveBar(total, desc, initial=initial, mininterval=mininterval,
                                on_write=self.say)
        else:
            self.live.restart(total, desc, initial)
        return self.live

    def before_bar(self) -> None:
        """What is shown above the bar, drawn before it."""

    def say(self, line: str) -> None:
        print(line, flush=True)

    def finish(self, stopped: bool) -> None:
        if self.live is not None:
            self.live.finish("stopped" if stopped else "done")


class RunDisplay(BarDisplay):
    """The console of one run in a notebook (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.lines: list[str] = []  # the pace projection and other notes, in order
        self.table: Any = None  # the table's display handle, once shown

    def before_bar(self) -> None:
        self._show()

    def say(self, line: str) -> None:
        self.lines.append(line)
        self._show()

    def epoch(self, row: dict, line: str) -> None:
        self.rows.append(row)
        self._show()

    def html(self) -> markup.Html:
        rows = [epoch_cells(r) for r in self.rows]
        return markup.Html(
            markup.frame(markup.table(EPOCH_COLUMNS, rows) + markup.notes(self.lines)),
            "\n".join([fmt.text_table(EPOCH_COLUMNS, rows), *self.lines]))

    def _show(self) -> None:
        from IPython.display import display

        if self.table is None:
            self.table = display(self.html(), display_id=True)
        else:
            self.table.update(self.html())


@contextlib.contextmanager
def shown(display: Console) -> Iterator[Console | None]:
    """Send the live output to ``display`` inside the block when in a notebook (then
    ``finish`` it, stopped or done); outside one, nothing changes (yields None)."""
    if not in_notebook():
        yield None
        return
    figures_inline()
    stopped = True
    try:
        with using(display):
            yield display
        stopped = False
    finally:
        display.finish(stopped)


def live_run() -> contextlib.AbstractContextManager[Console | None]:
    """A run's live display in a notebook (see the module docstring)."""
    return shown(RunDisplay())

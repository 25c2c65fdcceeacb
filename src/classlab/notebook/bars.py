"""One progress bar in a notebook cell, redrawn in place (never ``\\r`` text on stderr): an
ipywidgets bar while it runs when ipywidgets is installed, else HTML updated through a
display handle. Either way it ends as static HTML, so a saved or converted notebook shows
the bar as it finished, not a widget that needs a live kernel.

It speaks tqdm's interface as the training loop uses it (``update``, ``set_postfix_str``,
``set_description``, ``write``, ``close``); ``restart`` reuses it for the next epoch, and the
display that owns it calls ``finish`` once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from classlab.notebook import markup
from classlab.notebook.detect import has_widgets


def meter(n: float, total: float | None, elapsed: float, initial: float, postfix: str,
          unit: str = "it") -> str:
    """tqdm's meter without the bar: ``12/50 [00:03<00:09, 4.10it/s, loss=...]``."""
    from tqdm import tqdm

    fmt = "{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]" if total \
        else "{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
    if float(n).is_integer():
        n = int(n)
    else:  # a bar over epochs advanced by steps: its share, not 1.37/4
        fmt = "{percentage:3.0f}% [{elapsed}<{remaining}{postfix}]"
    return tqdm.format_meter(n, total, elapsed, prefix="", postfix=postfix or None,
                             bar_format=fmt, initial=initial, unit=unit)


class LiveBar:
    """A progress bar over ``total`` units, ``initial`` of them done already."""

    def __init__(self, total: float | None, desc: str, *, initial: float = 0,
                 mininterval: float = 0.5, unit: str = "it",
                 on_write: Callable[[str], None] | None = None) -> None:
        from IPython.display import display

        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.postfix, self.mininterval, self.on_write = "", mininterval, on_write
        self.unit = unit
        self.t0, self.drawn = time.monotonic(), float("-inf")
        self.closed: float | None = None  # when the loop ended: the bar's clock stops there
        self.widget = _widget() if has_widgets() else None
        shown = self.widget[0] if self.widget is not None else self.html()
        self.handle = display(shown, display_id=True)
        self._draw(force=True)

    # tqdm's interface -----------------------------------------------------------------

    def update(self, n: float = 1) -> None:
        self.n, self.closed = self.n + n, None
        self._draw(force=self.total is not None and self.n >= self.total)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        if refresh:
            self._draw()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc
        if refresh:
            self._draw()

    def write(self, s: str) -> None:
        if self.on_write is not None:
            self.on_write(s)

    def close(self) -> None:
        """The loop's end (an epoch's): drawn as it is, and kept for ``restart``."""
        self.closed = time.monotonic()
        self._draw(force=True)

    # the owner's ------------------------------------------------------------------------

    def restart(self, total: float | None, desc: str, initial: float = 0) -> None:
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.postfix, self.t0, self.closed = "", time.monotonic(), None
        self._draw(force=True)

    def set_n(self, n: float) -> None:
        self.n = n
        self._draw()

    def finish(self, state: str = "done") -> None:
        """Replace the widget by the same bar as static HTML ("done" or "stopped")."""
        self.handle.update(self.html(state))
        if self.widget is not None:
            self.widget[0].close()
            self.widget = None

    def meter(self) -> str:
        end = self.closed if self.closed is not None else time.monotonic()
        return meter(self.n, self.total, end - self.t0, self.initial, self.postfix, self.unit)

    def html(self, state: str = "") -> markup.Html:
        text = self.meter()
        return markup.Html(markup.progress(self.desc, self.n, self.total, text, state),
                           f"{self.desc}: {text}")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn < self.mininterval:
            return
        self.drawn = now
        if self.widget is None:
            self.handle.update(self.html())
            return
        _, label, bar, text = self.widget
        label.value = markup.esc(self.desc)
        bar.max = max(float(self.total or 0), 1e-9)
        bar.value = min(float(self.n), bar.max)
        text.value = markup.esc(self.meter())


def _widget() -> tuple[Any, Any, Any, Any]:
    """(box, label, bar, meter text): the ipywidgets that make the live bar."""
    import ipywidgets as w

    label, text = w.HTML(), w.HTML()
    bar = w.FloatProgress(min=0.0, max=1.0, layout=w.Layout(width="40%", min_width="12em"))
    return w.HBox([label, bar, text], layout=w.Layout(align_items="center")), label, bar, text

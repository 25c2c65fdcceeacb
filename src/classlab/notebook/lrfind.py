"""lr-find in a notebook: the sweep's progress bar in place, then its plot and suggestion
inline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from classlab.notebook import markup
from classlab.notebook.detect import show
from classlab.notebook.live import BarDisplay, shown


def plot_html(result: Any) -> markup.Html:
    """The sweep's plot and its two lines (suggestion; how it went)."""
    text = result.describe()
    picture = markup.img(markup.png_bytes(result.figure(), dpi=100), "LR range test")
    return markup.Html(markup.frame(picture + markup.notes(text.splitlines())), text)


def run_lr_find(sweep: Callable[[], Any]) -> Any:
    """``sweep()`` (returns an :class:`~classlab.tools.lr_find.LRFindResult`) with its bar
    drawn in place in a notebook and its plot shown at the end."""
    with shown(BarDisplay()) as live:
        result = sweep()
    if live is not None:
        show(plot_html(result))
    return result

"""The HTML the notebook shows: tables, pictures as base64 PNG, a static progress bar, and
a frame with a little CSS of its own (inline styles: Jupyter keeps them in untrusted
notebooks and nbconvert's HTML, and they restyle nothing else on the page)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

FRAME = ("font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:13px;"
         "line-height:1.45;color:#1f2328")
TABLE = "border-collapse:collapse;margin:.3em 0;font-variant-numeric:tabular-nums"
CELL = "border:1px solid #d0d7de;padding:2px 8px"
HEAD = CELL + ";background:#f6f8fa;font-weight:600"
NOTE = "color:#57606a;margin:.2em 0"


def esc(text: Any) -> str:
    return html.escape(str(text))


def frame(inner: str, css_class: str = "classlab") -> str:
    return f'<div class="{css_class}" style="{FRAME}">{inner}</div>'


def table(header: list[str], rows: list[list[Any]], align: str = "") -> str:
    """An HTML table; ``align`` per column "l" or "r" (default: the first left, the rest
    right). Cells are escaped."""
    align = align or "l" + "r" * (len(header) - 1)

    def cells(tag: str, style: str, values: list[Any]) -> str:
        return "".join(f'<{tag} style="{style};text-align:'
                       f'{"right" if a == "r" else "left"}">{esc(v)}</{tag}>'
                       for a, v in zip(align, values))

    body = "".join(f"<tr>{cells('td', CELL, r)}</tr>" for r in rows)
    return (f'<table style="{TABLE}"><thead><tr>{cells("th", HEAD, header)}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def notes(lines: list[str]) -> str:
    return "".join(f'<div style="{NOTE}">{esc(line)}</div>' for line in lines)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib Figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def img(png: bytes, alt: str, width: int | None = None) -> str:
    """An <img> holding ``png`` as a data URI (the output stays self-contained)."""
    size = f' width="{width}"' if width else ""
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
            f'alt="{esc(alt)}"{size} style="max-width:100%;height:auto">')


def progress(desc: str, n: float, total: float | None, meter: str, state: str = "") -> str:
    """A progress bar as static HTML: its label, a <progress> element and tqdm's meter
    (``12/50 [00:03<00:09, 4.1it/s, loss=...]``). ``state``: "" running, "done", "stopped"."""
    colour = {"done": "#2da44e", "stopped": "#cf222e"}.get(state, "#0969da")
    value = f' value="{n:g}" max="{total:g}"' if total else ""
    return (f'<div style="display:flex;align-items:center;gap:.6em;{FRAME}">'
            f"<span>{esc(desc)}</span>"
            f'<progress{value} style="width:40%;min-width:12em;height:1em;'
            f'accent-color:{colour}"></progress>'
            f'<span style="white-space:nowrap">{esc(meter)}</span></div>')


class Html:
    """What a notebook displays: ``markup`` as text/html and ``text`` as text/plain (for a
    console, a text-only viewer or ``print``)."""

    def __init__(self, markup: str, text: str) -> None:
        self.markup, self.text = markup, text

    def _repr_html_(self) -> str:
        return self.markup

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__

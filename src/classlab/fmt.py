"""How numbers, durations and tables are written, once, for every line, table and report.

One convention for a missing value (None, a non-number, NaN: a split that is absent, an epoch
that was not scored): on screen and in reports it is :data:`MISSING`; in a CSV file it is an
empty cell (:func:`csv_number`), which every CSV reader takes as "no value".

Imports nothing of classlab (the bottom layer): config values, stats and run folders all
format through here.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "–"  # an en dash: what a table or line shows for a value that does not exist


def as_float(v: Any) -> float:
    """``v`` as a float; NaN for None, text that is not a number, or any other object."""
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def is_nan(x: Any) -> bool:
    """True for a float NaN (a missing score); False for every other value, None included."""
    return isinstance(x, float) and math.isnan(x)


def missing(v: Any) -> bool:
    """True when ``v`` is no usable number: None, not a number, NaN or infinite."""
    return not math.isfinite(as_float(v))


def number(v: Any, digits: int = 4) -> str:
    """``v`` with ``digits`` significant digits (``0.1235``, ``1.2e-05``), or MISSING."""
    return MISSING if missing(v) else f"{as_float(v):.{digits}g}"


def fixed(v: Any, decimals: int = 3) -> str:
    """``v`` with ``decimals`` decimals (``0.123``), or MISSING."""
    return MISSING if missing(v) else f"{as_float(v):.{decimals}f}"


def pct(v: Any, decimals: int = 2, sign: bool = True) -> str:
    """A percentage already in % (``90.19%``; ``90.19`` with ``sign=False``), or MISSING.
    Two decimals: with 10,000 test images one image is exactly 0.01%."""
    if missing(v):
        return MISSING
    return f"{as_float(v):.{decimals}f}" + ("%" if sign else "")


def duration(seconds: Any, approx: bool = False) -> str:
    """A measured duration: ``4.2 s``, ``3 min 05 s``, ``1 h 02 min 03 s`` (MISSING when
    unknown). ``approx=True`` is for a projection, rounded as a person plans: ``~0.62 s``,
    ``~42 s``, ``~9.4 min``, ``~31 min``, ``~6 h 15 min``."""
    if missing(seconds):
        return MISSING
    s = as_float(seconds)
    if approx:
        return _approx(s)
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min {sec:02d} s"
    if m:
        return f"{m} min {sec:02d} s"
    return f"{s:.1f} s"


def _approx(seconds: float) -> str:
    if seconds < 10:
        return f"~{seconds:.2f} s"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 10:
        return f"~{minutes:.1f} min"
    if minutes < 90:
        return f"~{minutes:.0f} min"
    h, m = divmod(round(minutes), 60)
    return f"~{h} h {m} min" if m else f"~{h} h"


def value(v: Any) -> str:
    """A config value as it is written in an override: ``true``, ``0.001``, ``crop,flip``
    (None: an empty string, the key is unset)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(value(x) for x in v)
    return str(v)


def csv_number(v: Any, spec: str = ".6g") -> str:
    """A number for a CSV file: ints as they are, floats formatted with ``spec``, a missing
    value as an empty cell."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return "" if missing(v) else format(as_float(v), spec)


# --------------------------------------------------------------------------- tables


def _md_cell(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]], align: str = "") -> str:
    """A Markdown (GitHub) table; ``align`` per column "l" or "r" (default: the first left,
    the rest right). Cells are escaped (``|``, ``\\``, line breaks)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[Any]]) -> str:
    """A terminal table: columns padded to their widest cell, the header first."""
    table = [[str(c) for c in header], *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)

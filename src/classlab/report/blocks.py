"""The report as a list of blocks: both formats (Markdown and HTML) are rendered from the
same list, so they always say the same thing. Plus the number formats every section uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class H:  # heading
    level: int
    text: str


@dataclass
class P:  # paragraph; inline **bold** and `code` allowed
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # per column "l" or "r"; default: first left, rest right


@dataclass
class Img:
    caption: str
    path: Path  # absolute


@dataclass
class Code:  # a collapsible code block
    summary: str
    lang: str
    text: str


@dataclass
class Md:  # markdown written by someone else (the dynamics section)
    text: str


Block = H | P | Table | Img | Code | Md


def num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def pct(v: Any) -> str:
    x = num(v)
    return "–" if x != x else f"{x:.2f}%"


def g(v: Any, digits: int = 4) -> str:
    x = num(v)
    return "–" if x != x else f"{x:.{digits}g}"


def duration(seconds: Any) -> str:
    s = num(seconds)
    if s != s:
        return "–"
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min {sec:02d} s"
    if m:
        return f"{m} min {sec:02d} s"
    return f"{s:.1f} s"

"""The report as a list of blocks: both formats (Markdown and HTML) are rendered from the
same list, so they always say the same thing (numbers are formatted by :mod:`classlab.fmt`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

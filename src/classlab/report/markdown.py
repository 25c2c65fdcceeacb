"""Blocks -> report.md (renders on GitHub; images by relative path)."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from classlab.fmt import markdown_table
from classlab.report.blocks import Block, Code, H, Img, Md, P, Table


def _rel(path: Path, run_dir: Path) -> str:
    return Path(os.path.relpath(path, run_dir)).as_posix()


def to_markdown(blocks: list[Block], run_dir: Path) -> str:
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, H):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, P | Md):
            parts.append(b.text)
        elif isinstance(b, Table):
            parts.append(markdown_table(b.header, b.rows, b.align))
        elif isinstance(b, Img):
            if b.path.is_file():
                parts.append(f"![{b.caption}]({_rel(b.path, run_dir)})\n\n*{b.caption}*")
            else:
                parts.append(f"*{b.caption}: image missing ({_rel(b.path, run_dir)})*")
        elif isinstance(b, Code):
            fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", b.text)), default=0) + 1)
            parts.append(f"<details><summary>{html.escape(b.summary)}</summary>\n\n"
                         f"{fence}{b.lang}\n{b.text.rstrip()}\n{fence}\n\n</details>")
    return "\n\n".join(parts) + "\n"

"""``classlab.compare(a, b, ...)``: the comparison report of two or more runs from Python,
returned as a :class:`classlab.notebook.comparison.Comparison`, which a notebook shows
inline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from classlab.compare.report import compare_runs
from classlab.notebook.comparison import Comparison


def compare(*runs: Any, out: str | os.PathLike | None = None, evaluate: bool = False,
            data_dir: str | os.PathLike | None = None) -> Comparison:
    """Compare runs (run folders or :class:`classlab.Run` objects; a list works too) as
    ``classlab compare`` does: compare.md and compare.html next to the first run, or in
    ``out``."""
    if len(runs) == 1 and isinstance(runs[0], (list, tuple)):
        runs = tuple(runs[0])
    dirs = [Path(getattr(r, "dir", r)) for r in runs]
    md, html = compare_runs(dirs, out=Path(out) if out is not None else None,
                            evaluate=evaluate,
                            data_root=Path(data_dir) if data_dir is not None else None)
    return Comparison(md, html)

"""One report per run: ``report.md`` (renders on GitHub, images by relative path) and
``report.html`` (self-contained: images as base64 data URIs, inline CSS, no scripts).

- :mod:`~classlab.report.sections`: what the report says, section by section, as blocks
- :mod:`~classlab.report.markdown`, :mod:`~classlab.report.htmlpage`: the two renderings
- :mod:`~classlab.report.dynamics`: the weight-update section (and the grid's overlay)
- :mod:`~classlab.report.names`: display names shared with the grid table
"""

from __future__ import annotations

from pathlib import Path

from classlab.report.blocks import H
from classlab.report.card import write_model_card
from classlab.report.htmlpage import to_html
from classlab.report.markdown import to_markdown
from classlab.report.sections import blocks
from classlab.rundir import RunFiles, all_or_nothing, atomic_write_text, run_folder
from classlab.rundir.lock import hold


def build_report(run_dir: Path) -> tuple[Path, Path]:
    """Write ``run_dir/report.md``, ``run_dir/report.html`` and ``run_dir/model_card.md``
    (atomically, all or nothing); return the report's two files."""
    run_dir = run_folder(run_dir)
    with hold(run_dir):  # one writer: a run still training or diagnosing is not reported over
        return _write(run_dir)


def _write(run_dir: Path) -> tuple[Path, Path]:
    files = RunFiles(run_dir)
    with all_or_nothing():  # a failure (disk full, Ctrl-C) leaves the previous report
        report = blocks(run_dir)
        title = next((b.text for b in report if isinstance(b, H)), "Run report")
        atomic_write_text(files.report_md, to_markdown(report, run_dir))
        atomic_write_text(files.report_html, to_html(report, run_dir, title))
        write_model_card(run_dir)
    return files.report_md, files.report_html


__all__ = ["build_report"]

"""What ``classlab.compare(a, b, ...)`` returns: the comparison report's files, shown inline in
a notebook (the same page as compare.html: config differences, paired tests, curves,
per-class differences, the disagreements, the weight updates)."""

from __future__ import annotations

from pathlib import Path

from classlab.notebook import markup
from classlab.notebook.runview import REPORT_CSS


def page_body(page: str) -> str:
    """The part of a classlab HTML page between <body> and </body>."""
    start, end = page.find("<body>"), page.rfind("</body>")
    return page[start + len("<body>"):end] if start >= 0 and end > start else page


class Comparison:
    """A comparison report (``md``, ``html``, in folder ``dir``)."""

    def __init__(self, md: str | Path, html: str | Path) -> None:
        self.md, self.html = Path(md), Path(html)
        self.dir = self.html.parent

    def __repr__(self) -> str:
        return f"Comparison({str(self.dir)!r}: {self.md.name}, {self.html.name})"

    def _repr_html_(self) -> str:
        body = page_body(self.html.read_text())
        return markup.frame(f"<style>{REPORT_CSS}</style>{body}"
                            + markup.notes([f"Report: {self.html}"]), "classlab-report")

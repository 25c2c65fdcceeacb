"""metrics.csv and dynamics.csv: appended row by row while training, read by everyone else,
and cut back to the last checkpoint on resume."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

from classlab.fmt import csv_number
from classlab.rundir.files import atomic_write_text
from classlab.rundir.layout import METRIC_FIELDS


def append_metrics(path: Path, row: dict) -> None:
    """Append one epoch row and flush it to disk (header on first write)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            w.writeheader()
        # NaN (no val split, epoch not scored): an empty cell
        w.writerow({k: csv_number(row[k]) for k in METRIC_FIELDS})
        f.flush()
        os.fsync(f.fileno())  # the row must survive a power cut as well as its checkpoint


def read_rows(path: Path) -> tuple[list[dict[str, str]], tuple[int, str] | None]:
    """The complete rows of a CSV written row by row (metrics.csv, dynamics.csv), as text,
    and the first incomplete line as (line number, why), or None. A row is complete when it
    has a cell for every column of the header and ends with a line break: a line cut off by
    a crash or a full disk lacks one or both (``10.5`` where ``10.56`` was being written).
    Quoted cells may hold commas, quotes and line breaks."""
    path = Path(path)
    if not path.is_file():
        return [], None
    text = path.read_bytes().decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, str]]] = []
    bad = None
    try:
        header = next(reader, [])
        for cells in reader:
            if not cells:
                continue  # a blank line
            if len(cells) != len(header):
                bad = bad or (reader.line_num, f"{len(cells)} of {len(header)} cells")
                continue
            rows.append((reader.line_num, dict(zip(header, cells))))
    except csv.Error:  # a stray NUL or carriage return: the rest is not CSV
        bad = bad or (reader.line_num, "not CSV")
    if rows and not text.endswith("\n") and rows[-1][0] == reader.line_num:
        bad = (rows.pop()[0], "cut off: no line break at its end")
    return [r for _, r in rows], bad


def _metrics_row(r: dict[str, str]) -> dict:
    return {k: (int(r[k]) if k == "epoch" else (float(r[k]) if r[k] else float("nan")))
            for k in METRIC_FIELDS}


def read_metrics(path: Path, problems: list[str] | None = None) -> list[dict]:
    """metrics.csv rows: ``epoch`` an int, the rest floats (an empty cell is NaN); [] when
    there is no file yet. Only complete rows (see :func:`read_rows`) whose cells are numbers
    count; ``problems`` (when given) gets one line per file naming the first one skipped."""
    path = Path(path)
    rows, bad = read_rows(path)
    out = []
    for r in rows:
        try:
            out.append(_metrics_row(r))
        except (KeyError, ValueError):
            bad = bad or (0, "not a metrics row")
    if bad is not None and problems is not None:
        line = f" line {bad[0]}" if bad[0] else " a row"
        problems.append(f"{path}:{line} is incomplete ({bad[1]}); not used")
    return out


def truncate_csv(path: Path, keep: Callable[[dict], bool], fields: list[str]) -> None:
    """Rewrite a CSV keeping the complete rows that ``keep`` accepts: drops rows written
    after the last checkpoint, and a half-written last line after a crash. Cells are written
    back with the csv module, so commas, quotes and line breaks in them survive."""
    path = Path(path)
    if not path.exists():
        return
    rows = []
    for r in read_rows(path)[0]:  # complete rows only: a cut-off line is dropped
        try:
            if keep(r):
                rows.append(r)
        except (KeyError, ValueError):
            continue
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A whole small CSV (diagnose's tables), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())

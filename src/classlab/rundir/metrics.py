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


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv rows: ``epoch`` an int, the rest floats (an empty cell is NaN); [] when
    there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else (float(v) if v else float("nan")))
                 for k, v in r.items()} for r in csv.DictReader(f)]


def truncate_csv(path: Path, keep: Callable[[dict], bool], fields: list[str]) -> None:
    """Rewrite a CSV keeping the complete rows that ``keep`` accepts: drops rows written
    after the last checkpoint, and a half-written last line after a crash. Cells are written
    back with the csv module, so commas, quotes and line breaks in them survive."""
    path = Path(path)
    if not path.exists():
        return
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if None in r.values() or None in r:
                continue  # a cut-off line
            try:
                if keep(r):
                    rows.append(r)
            except ValueError:
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

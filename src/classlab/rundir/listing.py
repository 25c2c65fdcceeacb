"""``classlab runs [DIR]``: the run folders under DIR (and the points of grid folders there),
newest first, one line each, read from their summary.json and metrics.csv (no torch)."""

from __future__ import annotations

from pathlib import Path

from classlab import config
from classlab.config import ConfigError
from classlab.fmt import MISSING, duration, pct, text_table
from classlab.rundir.files import RunDirError, is_run_folder
from classlab.rundir.layout import GridFiles, RunFiles
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import load_summary, run_state, stopped_early

HEADER = ["run", "status", "epochs", "final test", "best by val", "wall"]


def run_folders(root: Path) -> list[Path]:
    """Folders under ``root`` holding a config.yaml (a run, or a prepared grid point), one
    level down and inside grid folders, newest first (by when config.yaml was written)."""
    root = Path(root)
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if is_run_folder(d):
            found.append(d)
        elif GridFiles(d).grid.is_file():
            found += [p for p in sorted(d.iterdir()) if is_run_folder(p)]
    return sorted(found, key=lambda p: RunFiles(p).config.stat().st_mtime, reverse=True)


def _status(summary: dict | None) -> str:
    state = run_state(summary)
    if state == "interrupted":
        return f"stopped ({(summary.get('interrupted') or {}).get('signal', '?')})"
    early = stopped_early(summary)
    if state == "finished" and early is not None:
        return "finished (pruned)" if early.get("by") == "pruner" else "finished (early stop)"
    return state


def _configured_epochs(files: RunFiles) -> int | str:
    try:
        return config.load(files.config).train.epochs
    except (ConfigError, OSError):
        return "?"


def describe(run_dir: Path) -> list[str]:
    """One row of :data:`HEADER` for ``run_dir``."""
    files = RunFiles(run_dir)
    try:
        s = load_summary(files.summary) or {}
    except RunDirError:  # listed as what it is, never as a run that did not start
        return [str(run_dir), "damaged summary.json", f"?/{_configured_epochs(files)}",
                MISSING, MISSING, MISSING]
    done = s.get("epochs_done")
    if done is None:  # no summary: count the metrics rows
        done = len(read_metrics(files.metrics))
    epochs = s.get("epochs") or _configured_epochs(files)
    best = s.get("best_by_val") or {}
    best_text = MISSING
    if best.get("by") == "val_acc":
        best_text = f"val {pct(best.get('val_acc'))} @ {best.get('epoch')} " \
                    f"(test {pct(best.get('test_acc'))})"
    return [str(run_dir), _status(s), f"{done}/{epochs}",
            pct((s.get("final") or {}).get("test_acc")), best_text,
            duration(s.get("wall_seconds"))]


def format_table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, the header first."""
    return text_table(HEADER, rows)

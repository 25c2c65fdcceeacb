"""summary.json: what a run is and how far it got, in one schema for every writer.

Written at the start of a run ("running"), after every epoch, at the end ("finished"),
when a run fails ("failed" plus a one-line ``error``) and when SIGTERM / SIGINT stopped it
("interrupted" plus ``interrupted``: the signal, epoch and step); read by ``classlab table``,
``classlab runs``, the report and the notebook API. A killed run still says "running", so
only :func:`is_finished` (status *and* all epochs done) means finished.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classlab.config import Config
from classlab.rundir.files import git_commit, read_json
from classlab.rundir.layout import METRIC_FIELDS

FINAL_FIELDS = METRIC_FIELDS[2:8]  # train/val/test loss and accuracy of the last epoch


def environment() -> dict:
    import numpy as np
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "commit": git_commit(),
    }


@dataclass
class Outcome:
    """Where a run stands: its status (running, finished, failed, interrupted), the one-line
    error of a failed run, and why and where a signal stopped an interrupted one ({"signal",
    "epoch", "step", "steps"}; step None: after that epoch)."""

    status: str
    error: str | None = None
    interrupted: dict | None = None


def make_summary(cfg: Config, run_dir: Path, outcome: Outcome | str, *, best: dict | None = None,
                 last: dict | None = None, wall: float | None = None,
                 facts: dict[str, Any] | None = None) -> dict:
    """The summary of a run of ``cfg``; ``outcome`` may be a bare status. ``last``: its last
    finished metrics row; ``best``: the best-by-validation record; ``facts``: what only a
    built run knows (params, device, precision, image counts, classes, versions), absent for
    a run that never started."""
    o = Outcome(outcome) if isinstance(outcome, str) else outcome
    return {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "status": o.status,
        "error": o.error,
        "interrupted": o.interrupted,
        "model": cfg.model.name,
        "norm": cfg.model.norm,
        "optimizer": cfg.optim.name,
        "scheduler": cfg.sched.name,
        "params": None,
        "epochs": cfg.train.epochs,
        "epochs_done": last["epoch"] if last else 0,
        "final": {k: last[k] for k in FINAL_FIELDS} if last else None,
        "best_by_val": best or None,
        "wall_seconds": None if wall is None else round(wall, 2),
        "seconds_per_epoch": round(wall / last["epoch"], 2) if last and wall is not None else None,
        **(facts or {}),
    }


def read_summary(path: Path) -> dict | None:
    """summary.json as a dict; None when absent (not started) or unreadable."""
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def is_finished(summary: dict | None) -> bool:
    """Finished means all epochs done; a killed run still says "running", so it never is."""
    return bool(summary) and summary.get("status") == "finished" \
        and summary.get("epochs_done") == summary.get("epochs")


def run_state(summary: dict | None) -> str:
    """"not started", "finished", "failed", "interrupted" (stopped on a signal, resumable)
    or "unfinished": still running, or killed (a killed run's summary still says "running",
    so the file cannot tell those two apart)."""
    if not summary:
        return "not started"
    if is_finished(summary):
        return "finished"
    status = summary.get("status")
    return status if status in ("failed", "interrupted") else "unfinished"

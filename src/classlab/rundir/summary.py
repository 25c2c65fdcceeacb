"""summary.json: what a run is and how far it got, in one schema for every writer.

Written at the start of a run ("running"), after every epoch, at the end ("finished"),
when a run fails ("failed" plus a one-line ``error``) and when SIGTERM / SIGINT stopped it
("interrupted" plus ``interrupted``: the signal, epoch and step); a run stopped early
(``stopped_early``: when and why) is finished; read by ``classlab table``,
``classlab runs``, the report and the notebook API. A killed run still says "running", so
only :func:`is_finished` (status *and* all epochs done) means finished.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classlab.config import Config
from classlab.fmt import number
from classlab.rundir.files import RunDirError, git_commit, read_json
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


_NUMBER = (int, float)
# The fields every reader relies on, and the types they may hold (None: not known yet).
_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "status": (str,), "error": (str,), "interrupted": (dict,),
    "epochs": (int,), "epochs_done": (int,), "final": (dict,), "best_by_val": (dict,),
    "wall_seconds": _NUMBER, "seconds_per_epoch": _NUMBER, "params": (int,),
    "stopped_early": (dict,),
}


def _problem(summary: Any) -> str | None:
    """What is wrong with a parsed summary.json, or None."""
    if not isinstance(summary, dict):
        return f"not a JSON object ({type(summary).__name__})"
    for key, types in _TYPES.items():
        v = summary.get(key)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
            return f"{key!r} is {type(v).__name__}, not {' or '.join(t.__name__ for t in types)}"
    for key in ("final", "best_by_val"):
        for k, v in (summary.get(key) or {}).items():
            if v is not None and (not isinstance(v, (*_NUMBER, str)) or isinstance(v, bool)):
                return f"{key}.{k} is {type(v).__name__}, not a number"
    if "status" not in summary:
        return "no 'status'"
    return None


def load_summary(path: Path) -> dict | None:
    """summary.json as a dict; None when absent (not started). A file that is there but
    damaged (empty, cut off, not an object, a field of the wrong type) is a one-line
    RunDirError naming it: a reader must not take it for a run that never started."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        summary = read_json(path)
    except OSError as e:
        raise RunDirError(f"{path}: unreadable ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        what = "empty" if not path.stat().st_size else f"not valid JSON ({e})"
        raise RunDirError(f"{path}: damaged summary.json: {what}") from None
    problem = _problem(summary)
    if problem is not None:
        raise RunDirError(f"{path}: damaged summary.json: {problem}")
    return summary


def read_summary(path: Path) -> dict | None:
    """summary.json as a dict; None when absent (not started) or damaged (see
    :func:`load_summary` for the readers that must tell those apart)."""
    try:
        return load_summary(path)
    except RunDirError:
        return None


def stopped_early(summary: dict | None) -> dict | None:
    """The ``stopped_early`` record of a run that early stopping (train.early_stop_patience)
    or a tuning pruner stopped before its last epoch ({"epoch", "metric", ...}), else None."""
    record = (summary or {}).get("stopped_early")
    return record if isinstance(record, dict) else None


def stop_sentence(record: dict | None) -> str:
    """Why a run stopped early, e.g. "stopped early after epoch 7: val_loss did not improve
    for 3 epochs; best 0.412 at epoch 4", or "pruned after epoch 1 by the asha pruner
    (val_acc 23.3)"; empty for a run that did not stop early."""
    if not isinstance(record, dict):
        return ""
    if record.get("by") == "pruner":
        return (f"pruned after epoch {record.get('epoch')} by the {record.get('pruner')} "
                f"pruner ({record.get('metric')} {number(record.get('value'))})")
    by = f" by more than {number(record['min_delta'])}" if record.get("min_delta") else ""
    return (f"stopped early after epoch {record.get('epoch')}: {record.get('metric')} did not "
            f"improve{by} for {record.get('patience')} epochs; best "
            f"{number(record.get('best'))} at epoch {record.get('best_epoch')}")


def is_finished(summary: dict | None) -> bool:
    """Finished means all epochs done, or stopped early after the last epoch done; a killed
    run still says "running", so it never is."""
    if not summary or summary.get("status") != "finished":
        return False
    done = summary.get("epochs_done")
    early = stopped_early(summary)
    return done == summary.get("epochs") or (early is not None and early.get("epoch") == done)


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

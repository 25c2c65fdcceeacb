"""Resume: continue a run folder from its last checkpoint (last.pt, or midepoch.pt when that
one is further), after dropping what a killed process wrote past it.

    resumed = resume_run(Path("runs/x-2025..."))
    fit(resumed.session, run_dir, resumed.progress)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from classlab import config
from classlab.data.record import make_record
from classlab.run.control import Position, Progress
from classlab.run.session import Session, build_run_session, restore
from classlab.rundir import (
    DYNAMICS_FIELDS,
    METRIC_FIELDS,
    RunFiles,
    run_folder,
    write_json,
)
from classlab.rundir.checkpoint import CheckpointError, load_checkpoint
from classlab.rundir.metrics import read_metrics, truncate_csv


@dataclass
class Resumed:
    """A run folder's session with its checkpoint loaded, and how far the run had come."""

    session: Session
    progress: Progress


def resume_run(run_dir: Path, data_root: Path | None = None) -> Resumed:
    """Rebuild the session of ``run_dir`` from its config.yaml and last.pt (from scratch when
    there is no last.pt yet), or from midepoch.pt when that one is further, and drop any
    metrics/dynamics rows written after that checkpoint. The data comes from ``data_root``,
    else from where data.json says (see :func:`~classlab.run.session.build_run_session`).

    The progress holds the last finished epoch, the best-so-far, the wall seconds so far
    and, from a mid-epoch checkpoint, where the interrupted epoch continues.
    """
    files = RunFiles(run_folder(run_dir))
    cfg = config.load(files.config)
    state = load_checkpoint(files.checkpoint) if files.checkpoint.exists() else None
    mid = _midepoch(files, state)
    # re-recorded: a run from before data.json, a prepared grid point, or data found (and
    # checked) at a new place, so that the next command finds it without --data-dir
    record_now = data_root is not None or not files.data_record.exists()
    s = build_run_session(run_dir, cfg, data_root)
    position = _position(files, mid, s.steps_per_epoch) if mid is not None else None
    state = mid if position is not None else state
    epoch, best = restore(s, state) if state is not None else (0, {})
    done_steps = epoch * s.steps_per_epoch + (position.step if position else 0)
    if s.dist.main:
        _drop_after(files, epoch, done_steps, keep_midepoch=position is not None)
        if record_now:
            write_json(files.data_record, make_record(cfg.data, s.data_root))
    rows = read_metrics(files.metrics) if epoch else []
    wall = sum(r["seconds"] for r in rows) + (position.seconds if position else 0)
    return Resumed(s, Progress(epoch, best, wall, position))


def _midepoch(files: RunFiles, last: dict | None) -> dict | None:
    """midepoch.pt when it continues the epoch after last.pt's; None when absent or stale
    (a stale one is older than last.pt: a process died between writing last.pt and removing
    it)."""
    if not files.midepoch.exists():
        return None
    try:
        mid = load_checkpoint(files.midepoch)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; delete it to resume from last.pt instead") from None
    done = int(last["epoch"]) if last is not None else 0
    return mid if isinstance(mid.get("position"), dict) and mid["epoch"] >= done else None


def _position(files: RunFiles, mid: dict, steps: int) -> Position:
    try:
        pos = Position.from_state(mid["position"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{files.midepoch}: no valid position in it; delete it to "
                              "resume from last.pt instead") from None
    if pos.epoch != mid["epoch"] + 1 or pos.steps != steps or not 0 < pos.step <= steps:
        raise CheckpointError(f"{files.midepoch}: position (epoch {pos.epoch}, step "
                              f"{pos.step} of {pos.steps}) does not fit this run ({steps} steps "
                              "per epoch); delete it to resume from last.pt instead")
    return pos


def _drop_after(files: RunFiles, epoch: int, steps: int, keep_midepoch: bool = False) -> None:
    """Remove what a killed process wrote after the checkpoint resumed from (``epoch``
    finished, ``steps`` steps in all): half-written temporary files, metrics rows of later
    epochs, dynamics rows of later steps, and a stale midepoch.pt."""
    for tmp in files.root.glob(".*.tmp"):  # a write killed half-way (SIGKILL, power cut)
        tmp.unlink(missing_ok=True)
    if not keep_midepoch:
        files.midepoch.unlink(missing_ok=True)
    truncate_csv(files.metrics, lambda r: int(r["epoch"]) <= epoch, METRIC_FIELDS)
    truncate_csv(files.dynamics, lambda r: int(r["step"]) < steps, DYNAMICS_FIELDS)

"""Opening a run folder: a new one for a config, or an existing one to continue."""

from __future__ import annotations

from pathlib import Path

import torch

from classlab import config
from classlab.config import Config
from classlab.run.fit import session_summary
from classlab.run.session import Session, build_session, restore
from classlab.rundir import (
    DYNAMICS_FIELDS,
    METRIC_FIELDS,
    RunDirError,
    RunFiles,
    atomic_write_text,
    make_run_dir,
    write_json,
)
from classlab.rundir.checkpoint import load_checkpoint
from classlab.rundir.metrics import read_metrics, truncate_csv


def start_run(cfg: Config, out: Path, data_root: Path | None = None) -> tuple[Session, Path]:
    """Build the session (all checks that can fail happen here), then create the run folder
    ``out/<name>-<timestamp>`` with its config.yaml and a "running" summary."""
    s = build_session(cfg, data_root)
    run_dir = None
    if s.dist.main:
        run_dir = make_run_dir(out, cfg.name)
        files = RunFiles(run_dir)
        atomic_write_text(files.config, config.dump(cfg))
        write_json(files.summary, session_summary(s, run_dir, "running", {}, None, 0.0))
    if s.dist.world > 1:  # every rank learns rank 0's folder name
        box = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    return s, run_dir


def resume_run(run_dir: Path, data_root: Path | None = None) -> tuple[Session, int, dict, float]:
    """Rebuild the session of ``run_dir`` from its config.yaml and last.pt (from scratch when
    there is no last.pt yet), and drop any metrics/dynamics rows written after that
    checkpoint. Returns (session, last finished epoch, best-so-far, wall seconds so far)."""
    files = RunFiles(run_dir)
    if not files.config.is_file():
        raise RunDirError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = config.load(files.config)
    state = load_checkpoint(files.checkpoint) if files.checkpoint.exists() else None
    s = build_session(cfg, data_root)
    epoch, best = restore(s, state) if state is not None else (0, {})
    if s.dist.main:
        _drop_after(files, epoch, epoch * s.steps_per_epoch)
    wall = sum(r["seconds"] for r in read_metrics(files.metrics)) if epoch else 0.0
    return s, epoch, best, wall


def _drop_after(files: RunFiles, epoch: int, steps: int) -> None:
    """Remove what a killed process wrote after the checkpoint of ``epoch``: half-written
    temporary files, metrics rows of later epochs, dynamics rows of later steps."""
    for tmp in files.root.glob(".*.tmp"):  # a write killed half-way (SIGKILL, power cut)
        tmp.unlink(missing_ok=True)
    truncate_csv(files.metrics, lambda r: int(r["epoch"]) <= epoch, METRIC_FIELDS)
    truncate_csv(files.dynamics, lambda r: int(r["step"]) < steps, DYNAMICS_FIELDS)

"""Start: a new run folder for a config, created only once everything that can fail has been
checked (the session built, the data found and recorded)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from classlab import config
from classlab.config import Config
from classlab.data.record import make_record, resolve_root
from classlab.run.fit import session_summary
from classlab.run.session import Session, build_session
from classlab.rundir import RunFiles, atomic_write_text, make_run_dir, write_json
from classlab.rundir.layout import LABEL_NOISE_FIELDS
from classlab.rundir.lock import hold
from classlab.rundir.metrics import write_csv


def write_label_records(files: RunFiles, s: Session) -> None:
    """label_noise.csv (the training-split images data.label_noise changed: index, true and
    given label) and excluded.csv (the training-split indices data.exclude left out), when
    the run has them."""
    sp = s.splits
    if sp.noise is not None:
        write_csv(files.label_noise, LABEL_NOISE_FIELDS, sp.noise.tolist())
    if s.cfg.data.exclude and sp.excluded is not None:  # resume reads this copy
        write_csv(files.excluded, ["index"], [[i] for i in sp.excluded.tolist()])


def start_run(cfg: Config, out: Path, data_root: Path | None = None,
              held: contextlib.ExitStack | None = None) -> tuple[Session, Path]:
    """Build the session (all checks that can fail happen here), then create the run folder
    ``out/<name>-<timestamp>`` with its config.yaml, data.json (where the data came from,
    and its files' MD5s) and a "running" summary. ``held``: the folder's lock is taken as
    soon as the folder exists (before config.yaml, so no other process can resume it
    first) and kept on this stack."""
    root = resolve_root(cfg.data, data_root)
    s = build_session(cfg, root)
    run_dir = None
    if s.dist.main:
        record = make_record(cfg.data, root)  # before the folder: a failure leaves nothing
        run_dir = make_run_dir(out, cfg.name)
        if held is not None:
            held.enter_context(hold(run_dir))
        files = RunFiles(run_dir)
        atomic_write_text(files.config, config.dump(cfg))
        write_json(files.data_record, record)
        write_label_records(files, s)
        write_json(files.summary, session_summary(s, run_dir, "running", {}, None, 0.0))
    if s.dist.world > 1:  # every rank learns rank 0's folder name
        box = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    return s, run_dir

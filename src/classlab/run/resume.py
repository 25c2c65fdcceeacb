"""Resume: continue a run folder from its last checkpoint (last.pt, or midepoch.pt when that
one is further), after dropping what a killed process wrote past it.

    resumed = resume_run(Path("runs/x-2025..."))
    fit(resumed.session, run_dir, resumed.progress)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from classlab import config
from classlab.config import Config
from classlab.config.schema import EXTENSIBLE_SCHEDULES, RESUME_MAY_CHANGE
from classlab.data.record import make_record
from classlab.run.control import Position, Progress
from classlab.run.session import Session, build_run_session, restore
from classlab.rundir import (
    DYNAMICS_FIELDS,
    METRIC_FIELDS,
    RunDirError,
    RunFiles,
    atomic_write_text,
    run_folder,
    write_json,
)
from classlab.rundir.checkpoint import CheckpointError, load_checkpoint
from classlab.rundir.history import append_event, read_events
from classlab.rundir.metrics import read_metrics, read_rows, truncate_csv


@dataclass
class Resumed:
    """A run folder's session with its checkpoint loaded, and how far the run had come."""

    session: Session
    progress: Progress


def resume_run(run_dir: Path, data_root: Path | None = None,
               epochs: int | None = None) -> Resumed:
    """Rebuild the session of ``run_dir`` from its config.yaml and last.pt (from scratch when
    there is no last.pt yet), or from midepoch.pt when that one is further, and drop any
    metrics/dynamics rows written after that checkpoint. The data comes from ``data_root``,
    else from where data.json says (see :func:`~classlab.run.session.build_run_session`).

    config.yaml must still describe the checkpoint's run: a change of any key outside
    :data:`~classlab.config.schema.RESUME_MAY_CHANGE` is refused with one line listing each
    key and both values, before anything is written; allowed changes are recorded in
    history.jsonl. ``epochs``: train until that many epochs (``--epochs``), where the
    schedule allows it exactly (:func:`extend`).

    The progress holds the last finished epoch, the best-so-far, the wall seconds so far
    and, from a mid-epoch checkpoint, where the interrupted epoch continues.
    """
    files = RunFiles(run_folder(run_dir))
    cfg = config.load(files.config)
    state = load_checkpoint(files.checkpoint) if files.checkpoint.exists() else None
    mid = _midepoch(files, state)
    _check_cut_row(files, mid if mid is not None else state)
    changed = check_config(files, cfg, mid if mid is not None else state, epochs)
    if epochs is not None:
        cfg = extend(files, cfg, epochs, done=int(state["epoch"]) if state else 0)
    if changed:
        print(f"{run_dir}: resumed with changed settings: "
              + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), flush=True)
        append_event(files.history, {"event": "resumed with changed settings",
                                     "changed": {k: list(v) for k, v in changed.items()}})
    # re-recorded: a run from before data.json, a prepared grid point, or data found (and
    # checked) at a new place, so that the next command finds it without --data-dir
    record_now = data_root is not None or not files.data_record.exists()
    s = build_run_session(run_dir, cfg, data_root)
    position = _position(files, mid, s.steps_per_epoch) if mid is not None else None
    state = mid if position is not None else state
    held = files.midepoch if position is not None else files.checkpoint
    epoch, best = restore(s, state, held) if state is not None else (0, {})
    done_steps = epoch * s.steps_per_epoch + (position.step if position else 0)
    if s.dist.main:
        _drop_after(files, epoch, done_steps, keep_midepoch=position is not None)
        if record_now:
            write_json(files.data_record, make_record(cfg.data, s.data_root))
    rows = read_metrics(files.metrics) if epoch else []
    wall = sum(r["seconds"] for r in rows) + (position.seconds if position else 0)
    return Resumed(s, Progress(epoch, best, wall, position))


def _check_cut_row(files: RunFiles, state: dict | None) -> None:
    """A metrics.csv line cut off (a crash or a full disk while it was written) is dropped
    by the resume. When the checkpoint is older than that epoch, the epoch is trained again
    and its row rewritten, identically: a note says so. When the checkpoint already holds
    that epoch its row cannot be recomputed, and dropping it would lose it for good: a
    one-line RunDirError, before anything is written, says how to go on."""
    rows, bad = read_rows(files.metrics)
    if bad is None:
        return
    held = int(state["epoch"]) if state is not None else 0
    epoch = len(rows) + 1  # rows are epochs 1, 2, ... in order: the cut one comes next
    if epoch <= held:
        raise RunDirError(f"{files.metrics}: line {bad[0]} (epoch {epoch}) is incomplete "
                          f"({bad[1]}), and the checkpoint already holds epoch {held}, so it "
                          "cannot be recomputed; repair the line (summary.json's \"final\" "
                          "holds the last epoch's losses and accuracies), or delete it to "
                          "resume without that row")
    print(f"note: {files.metrics}: line {bad[0]} is incomplete ({bad[1]}); dropped: epoch "
          f"{epoch} is trained again from the checkpoint (epoch {held}) and its row "
          "rewritten", flush=True)


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


# --------------------------------------------------------------------------- one config


def _flat(cfg: Config) -> dict[str, object]:
    """Full key -> value of every leaf of ``cfg``."""
    return {key: value for key, value, _ in config.walk(cfg)}


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def check_config(files: RunFiles, cfg: Config, state: dict | None,
                 epochs: int | None = None) -> dict[str, tuple]:
    """The keys whose value in config.yaml differs from the checkpoint's config and may
    (``key -> (checkpoint value, config.yaml value)``). Any other difference is a ConfigError
    listing every such key with both values: the checkpoint was trained with the old values,
    so continuing with the new ones would be neither run. ``train.epochs`` may differ only
    as far as ``--epochs`` extended the run (history.jsonl) or is extending it now
    (``epochs``)."""
    if state is None or not isinstance(state.get("config"), dict):
        return {}
    try:
        before = _flat(config.from_dict(state["config"]))
    except config.ConfigError:
        return {}  # a checkpoint of an older classlab: nothing to compare it with
    now = _flat(cfg)
    diff = {k: (before.get(k), now.get(k)) for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)}
    extended = [e.get("to") for e in read_events(files.history) if e.get("event") == "extended"]
    if "train.epochs" in diff and diff["train.epochs"][1] in [*extended, epochs]:
        # --epochs wrote it (the checkpoint predates the extension), or asks for it now
        # (then extend() checks and records it, from the checkpoint's length)
        trained_for, _ = diff.pop("train.epochs")
        if epochs is not None:
            cfg.train.epochs = trained_for
    refused = {k: v for k, v in diff.items() if not _may_change(k)}
    if refused:
        what = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} in config.yaml"
                         for k, (a, b) in refused.items())
        hint = (f"; to train longer: classlab train --resume {files.root} --epochs "
                f"{refused['train.epochs'][1]}" if set(refused) == {"train.epochs"} else "")
        raise config.ConfigError(f"{files.config} no longer describes the run its checkpoint "
                                 f"holds ({what}); put the old values back to resume, or start "
                                 f"a new run{hint}")
    return diff


# --------------------------------------------------------------------------- longer runs


def extend(files: RunFiles, cfg: Config, epochs: int, done: int) -> Config:
    """``cfg`` with ``train.epochs = epochs``, written to config.yaml and recorded in
    history.jsonl, when the run can be extended exactly: its LR schedule (and Lookahead)
    does not depend on the run's length, so the extended run equals one trained that long
    from the start. Otherwise a ConfigError that says why and offers a new run that starts
    from this run's weights (``train.init_from``)."""
    if epochs < max(done, 1):
        raise config.ConfigError(f"--epochs: {epochs} is fewer than the {done} epochs "
                                 f"{files.root} has trained")
    if epochs == cfg.train.epochs:
        return cfg
    why = None
    if done == 0:  # nothing trained yet: a longer run is simply the run
        pass
    elif cfg.sched.name not in EXTENSIBLE_SCHEDULES:
        why = (f"sched.name={cfg.sched.name}: its LR at each step depends on train.epochs, "
               "so a longer run is a different run from the first step")
    elif cfg.optim.lookahead_every > 0:
        why = ("optim.lookahead_every: Lookahead's pull-back strength depends on train.epochs, "
               "so a longer run is a different run from the first step")
    if why is not None:
        raise config.ConfigError(
            f"{files.root} cannot be extended exactly: {why}. Start a new run from its "
            f"weights instead: classlab train {files.config} train.epochs={epochs} "
            f"train.init_from={files.root}")
    before = cfg.train.epochs
    cfg = config.from_dict({**config.to_dict(cfg),
                            "train": {**config.to_dict(cfg)["train"], "epochs": epochs}})
    append_event(files.history, {"event": "extended", "from": before, "to": epochs,
                                 "after_epoch": done})
    atomic_write_text(files.config, config.dump(cfg))
    print(f"{files.root}: extended from {before} to {epochs} epochs (history.jsonl)",
          flush=True)
    return cfg

"""The epoch loop of a run: train an epoch, evaluate, step the scheduler, then write the
metrics row, the checkpoint and the summary (rank 0 only, under torchrun).

Written so that a run killed anywhere resumes bit-identically: the metrics row goes first,
then the checkpoint; a resume drops rows newer than the checkpoint and recomputes them.
SIGTERM / SIGINT stop after the current step with a mid-epoch checkpoint, and
``train.checkpoint_minutes`` writes one periodically (:mod:`classlab.run.control`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch

from classlab.augment import PixelStats, augment, epoch_images, make_mixer
from classlab.config import Config
from classlab.engine import (
    DynamicsLogger,
    EpochPlan,
    EpochStart,
    EvalResult,
    StepRecipe,
    TrainingError,
    epoch_generator,
    train_one_epoch,
)
from classlab.engine.console import console
from classlab.engine.epoch import MixFn
from classlab.engine.margins import ImageDynamics
from classlab.engine.precision import cpu_flags, cpu_model
from classlab.fmt import is_nan
from classlab.optim import current_lr
from classlab.run.control import Position, Progress, StepControl
from classlab.run.earlystop import EarlyStopper
from classlab.run.pace import Pace
from classlab.run.session import Session, checkpoint_state, torch_threads, usable_threads
from classlab.run.signals import RunInterrupted, SignalTrigger, StopSignals
from classlab.rundir import RunFiles, write_json
from classlab.rundir.checkpoint import CheckpointError, save_checkpoint, save_test_outputs
from classlab.rundir.datadyn import read_data_dynamics, save_data_dynamics
from classlab.rundir.metrics import append_metrics, read_metrics
from classlab.rundir.summary import Outcome, environment, make_summary


def _device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # train.threads (at most the usable CPUs), else the default
    threads = usable_threads(threads) if threads else torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads > 1 else ''})"


def update_best(best: dict, row: dict) -> dict:
    """Best epoch chosen by validation accuracy only; its test accuracy is reported as is."""
    key = "val_acc" if not is_nan(row["val_acc"]) else "train_acc"
    # With train.eval_every > 1 some epochs have no validation score: an epoch scored by
    # training accuracy never displaces one scored by validation accuracy, and the first
    # validated epoch displaces any unvalidated one.
    if (not best or (best["by"] == key and row[key] > best["score"])
            or (best["by"] != key and key == "val_acc")):
        return {"epoch": row["epoch"], "score": row[key], "by": key,
                "val_acc": row["val_acc"], "test_acc": row["test_acc"]}
    return best


def session_summary(s: Session, run_dir: Path, outcome: Outcome | str, best: dict,
                    last: dict | None, wall: float) -> dict:
    """summary.json of a built session (see :func:`classlab.rundir.summary.make_summary`)."""
    facts = {
        "params": s.params,
        "device": _device_name(s.device, s.cfg.train.threads),
        "precision": s.amp.precision,
        "channels_last": s.speed.channels_last,
        "compile": s.speed.compiled,  # torch.compile; why, and what was measured: speed.compile
        "speed": s.speed.to_dict(),
        "cpu_flags": cpu_flags() if s.device.type == "cpu" else None,
        "train_images": len(s.splits.train_x),
        "val_images": len(s.splits.val_x),
        "test_images": len(s.splits.test_x),
        "classes": list(s.splits.classes),
        # the run folder whose weights started this run (train.init_from), absolute
        "init_from": str(Path(s.cfg.train.init_from).resolve()) if s.cfg.train.init_from
        else None,
        "versions": environment(),
    }
    return make_summary(s.cfg, run_dir, outcome, best=best, last=last, wall=wall, facts=facts)


def _print_epoch(row: dict, n: dict[str, int]) -> None:
    def part(split: str) -> str:
        if is_nan(row[f"{split}_loss"]):
            return ""
        return f"{split} loss {row[f'{split}_loss']:.4f} acc {row[f'{split}_acc']:.2f}%  "
    scored = f"{n['test']} test images, " if not is_nan(row["test_loss"]) else ""
    console().epoch(row, f"Epoch {row['epoch']}: {part('train')}{part('val')}{part('test')}"
                         f"({scored}{row['seconds']:.1f}s)")


def fit(s: Session, run_dir: Path, start: Progress | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train epochs ``start.epoch+1 .. cfg.train.epochs`` (a new run: all of them), writing
    metrics and checkpoints (rank 0 only, under torchrun), with ``train.threads`` CPU
    threads. A run resumed from a mid-epoch checkpoint (``start.position``) continues that
    epoch at its step.

    ``on_epoch(row)`` is called after each epoch's files are written; a dict it returns
    stops the run there, finished, with that dict as summary.json's ``stopped_early`` (a
    tuning trial's pruner: :mod:`classlab.grid.tune`). ``train.early_stop_patience`` stops it
    the same way (:mod:`classlab.run.earlystop`).

    Returns the final summary. On a TrainingError the summary records it (status "failed")
    and the error is re-raised; ``last.pt`` then still holds the last good epoch. SIGTERM /
    SIGINT raise :class:`~classlab.run.signals.RunInterrupted` after a checkpoint (status
    "interrupted").
    """
    with torch_threads(s.cfg.train.threads), StopSignals() as stop:
        return _fit(s, run_dir, start or Progress(), on_epoch, stop)


def _fit(s: Session, run_dir: Path, start: Progress, on_epoch: Callable[[dict], None] | None,
         stop: StopSignals) -> dict:
    cfg, best, main, files = s.cfg, dict(start.best), s.dist.main, RunFiles(run_dir)
    start_epoch, position = start.epoch, start.position
    t0 = time.time() - start.wall
    dyn = (DynamicsLogger(s.model, files.dynamics, cfg.log.dynamics_every)
           if cfg.log.dynamics_every > 0 and main else None)
    pace = Pace(s, _device_name(s.device, cfg.train.threads), main=main,
                fresh=start_epoch == 0 and position is None, data_root=s.data_root)
    control = StepControl(s, files, stop, pace, dyn.flush if dyn is not None else lambda: None)
    control.best = best
    control.marks = marks = image_dynamics(s, files, start)
    last, saved = None, start_epoch  # saved: the epoch last.pt holds
    early = EarlyStopper(s, files, start_epoch)  # train.early_stop_*, on_epoch's stop
    try:
        for epoch in early.epochs(start_epoch, cfg.train.epochs):
            row, test_eval = train_and_evaluate(s, epoch, dyn, control, position, marks)
            test_eval = early.after_epoch(row, test_eval)
            if marks is not None:
                marks.end_epoch()  # after evaluation: a stop during it keeps the whole epoch
            # Only train/val metrics reach the scheduler: the test set drives no decision.
            s.stepper.after_epoch({k: row[k] for k in ("train_loss", "val_loss", "val_acc")})
            best, last = update_best(best, row), row
            if main:
                _record_epoch(s, files, row, best, dyn, test_eval, time.time() - t0,
                              control.trigger, marks)
                saved = epoch
            control.best = best
            control.epoch_saved()
            pace.epoch_done(row["seconds"], full=position is None)
            position = None
            if on_epoch is not None:
                early.request(on_epoch(row))
            control.at_boundary(epoch)
            if early.stop:
                break
    except TrainingError as e:
        if main:
            _record_stop(s, files, best, saved, time.time() - t0, str(e))
        raise
    except RunInterrupted as e:
        if main:
            _record_stop(s, files, best, saved, time.time() - t0, None, e.record)
        if s.dist.world > 1:
            torch.distributed.barrier()  # rank 0's files are complete before any rank exits
        raise
    finally:
        if dyn is not None:
            dyn.close()
    if last is None:  # resumed a finished run
        rows = read_metrics(files.metrics)
        last = rows[-1] if rows else None
    summary = early.mark(session_summary(s, run_dir, "finished", best, last, time.time() - t0))
    if main:
        write_json(files.summary, summary)
    return summary


def train_index(s: Session) -> torch.Tensor:
    """The training-split index of each training row (classlab.data.labels)."""
    idx = s.splits.train_index
    return idx if idx is not None else torch.arange(len(s.splits.train_x))


def image_dynamics(s: Session, files: RunFiles, start: Progress) -> ImageDynamics | None:
    """log.data_dynamics: the recorder, holding what the run recorded before ``start``
    (data_dynamics.pt's epochs up to the checkpoint's, and a mid-epoch checkpoint's
    partial epoch; on the main process, which alone writes the file)."""
    if not s.cfg.log.data_dynamics:
        return None
    marks = ImageDynamics(len(s.data["train"][0]), s.device, s.dist)
    if s.dist.main and start.epoch:
        record = read_data_dynamics(files.data_dynamics)
        marks.load_history(record, start.epoch)
        if record is not None and record["margin"].shape[0] > start.epoch:  # rows past it
            save_data_dynamics(files.data_dynamics, marks.record(train_index(s),
                                                                 s.data["train"][1]))
    if s.dist.main and start.position is not None:
        try:
            marks.load_partial(start.position.marks)
        except ValueError as e:
            raise CheckpointError(f"{files.midepoch}: {e}; delete it to resume from last.pt "
                                  "instead") from None
    return marks


def _record_stop(s: Session, files: RunFiles, best: dict, saved: int, wall: float,
                    error: str | None, interrupted: dict | None = None) -> None:
    """summary.json of a run that stopped: "failed" with ``error``, or "interrupted" with
    where and why (``interrupted``); metrics rows after last.pt's epoch do not count."""
    rows = [r for r in read_metrics(files.metrics) if r["epoch"] <= saved]
    outcome = Outcome("failed" if interrupted is None else "interrupted", error, interrupted)
    with contextlib.suppress(OSError):  # best effort: the disk may be the problem
        write_json(files.summary, session_summary(s, files.root, outcome, best,
                                                  rows[-1] if rows else None, wall))


def _epoch_batches(s: Session, epoch: int):
    """The training images as the epoch sees them, and the per-batch augmentation."""
    cfg = s.cfg
    stats = PixelStats(tuple(s.splits.mean), tuple(s.splits.std))  # what the policies need
    aug = (lambda xb, g: augment(xb, g, cfg.aug, stats)) if cfg.aug.ops else (lambda xb, g: xb)
    x_train, y_train = s.data["train"]
    if cfg.aug.backend == "batched":  # the albumentations workers read the stored images
        x_train = epoch_images(x_train, epoch, cfg.train.seed, cfg.aug)
    return x_train, y_train, aug


def _epoch_mixer(cfg: Config, epoch: int) -> MixFn | None:
    """mixup / CutMix for ``epoch``: None without them, and from aug.mix_off_epoch on."""
    off = cfg.aug.mix_off_epoch
    return None if off and epoch >= off else make_mixer(cfg.aug)


def _evaluate_epoch(s: Session, epoch: int) -> dict[str, EvalResult]:
    """Val and test after ``epoch`` when it is scored (train.eval_every, always the last);
    NaN results otherwise (empty cells in metrics.csv). After the last epoch the test
    evaluation keeps its per-image outputs, for diagnose to reuse."""
    cfg = s.cfg
    final = epoch == cfg.train.epochs
    every = cfg.train.eval_every
    if not (final or (every > 0 and epoch % every == 0)):
        return {k: EvalResult(float("nan"), float("nan"), 0) for k in ("val", "test")}
    return {k: s.evaluate(k, keep_outputs=final and s.dist.world == 1 and k == "test")
            for k in ("val", "test")}


def train_and_evaluate(s: Session, epoch: int, dyn: DynamicsLogger | None,
                       control: StepControl, position: Position | None = None,
                       marks: ImageDynamics | None = None) -> tuple[dict, EvalResult]:
    """One epoch of training (from ``position`` when it continues an interrupted one), then
    val and test evaluation: the epoch's metrics row, and the test evaluation."""
    cfg = s.cfg
    if position is not None and position.epoch != epoch:
        position = None
    before = position.seconds if position is not None else 0.0  # the epoch's time so far
    lr = position.lr if position is not None else current_lr(s.optimizer)
    control.begin_epoch(epoch, lr, before)
    te = time.time() - before
    x_train, y_train, aug = _epoch_batches(s, epoch)
    progress = cfg.train.progress and s.dist.main
    recipe = StepRecipe(s.optimizer, s.amp, cfg.train.label_smoothing, cfg.train.grad_clip, dyn)
    plan = EpochPlan(s.net, recipe, s.stepper, s.normalize, aug, cfg.train.batch_size, s.ema,
                     s.dist, s.batch_source, margins=marks, mix_fn=_epoch_mixer(cfg, epoch))
    start = EpochStart(epoch, (epoch - 1) * s.steps_per_epoch)
    if position is not None:
        start.done = position.step
        # the sums are global: one rank carries them, the others start from zero
        start.tally = position.tally if s.dist.main else None
    tr = train_one_epoch(plan, x_train, y_train, epoch_generator(cfg.train.seed, epoch, s.device),
                         start, progress=progress, on_step=control,
                         note=control.pace.note if progress else None)
    ev = control.evaluate(lambda: _evaluate_epoch(s, epoch), tr.tally, tr.steps)
    return {"epoch": epoch, "lr": lr, "train_loss": tr.loss, "train_acc": tr.acc,
            "val_loss": ev["val"].loss, "val_acc": ev["val"].acc,
            "test_loss": ev["test"].loss, "test_acc": ev["test"].acc,
            "seconds": time.time() - te}, ev["test"]


def _record_epoch(s: Session, files: RunFiles, row: dict, best: dict,
                  dyn: DynamicsLogger | None, test_eval: EvalResult, wall: float,
                  trigger: SignalTrigger | None = None,
                  marks: ImageDynamics | None = None) -> None:
    """The metrics row first, then the checkpoint. A crash in between leaves a row newer than
    the checkpoint; resume drops it and recomputes that epoch (identically), so no row is ever
    lost or duplicated. A failed write (disk full, quota, folder gone) is one line. A signal
    arriving meanwhile is only noted: the writes finish, then the run stops."""
    epoch = row["epoch"]
    held = epoch - 1 if files.checkpoint.is_file() else 0  # what last.pt holds until replaced
    try:
        if dyn is not None:
            dyn.flush()
        append_metrics(files.metrics, row)
        if marks is not None:  # before the checkpoint; resume drops its rows past last.pt
            save_data_dynamics(files.data_dynamics, marks.record(train_index(s),
                                                                 s.data["train"][1]))
        if trigger is not None:
            trigger.fire(epoch, "write")  # test-only: a signal as the checkpoint is written
        save_checkpoint(files.checkpoint, checkpoint_state(s, epoch, best))
        held = epoch
        _print_epoch(row, {k: len(v[0]) for k, v in s.data.items()})
        write_json(files.summary, session_summary(s, files.root, "running", best, row, wall))
        if test_eval.preds is not None:
            save_test_outputs(files.test_outputs, epoch, test_eval.probs, test_eval.losses,
                              s.data["test"][1].cpu())
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        kept = f"last.pt keeps epoch {held}" if held else \
            "no epoch finished yet"
        raise TrainingError(f"cannot write epoch {epoch} into {files.root}: "
                            f"{e.strerror or e}{where}; {kept}") from None

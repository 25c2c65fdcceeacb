"""The session: everything one run needs in memory (data on the device, model, optimizer,
scheduler, precision, EMA, Lookahead), built once from a Config, and its checkpoint state.

Building a session writes nothing, and every check that can fail happens while building, so
a bad config, missing data or a missing package stop before a run folder exists.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from classlab import config
from classlab.config import Config
from classlab.data import Splits, load_splits
from classlab.data.record import check_record
from classlab.engine import (
    Amp,
    Dist,
    Ema,
    EvalResult,
    Normalizer,
    evaluate,
    init_distributed,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    steps_per_epoch,
)
from classlab.engine.epoch import BatchSource
from classlab.engine.precision import Speed, choose_speed
from classlab.engine.probe import TrainSample
from classlab.models import build_model, count_params
from classlab.optim import Lookahead, Stepper, build_optimizer, build_scheduler
from classlab.rundir import RunDirError, RunFiles, read_json
from classlab.rundir.checkpoint import CheckpointError, load_checkpoint


def default_threads() -> int:
    """``train.threads: 0``: every core this process may run on (its CPU affinity), shared
    among the processes of a torchrun job on this machine; torch's own default where
    OMP_NUM_THREADS says otherwise (torchrun sets it to 1 for several processes)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` torch CPU threads (0: :func:`default_threads`), and put the
    previous number back afterwards: ``train.threads`` of one run must not change the
    process for whatever runs next (a notebook's next cell, the next test)."""
    before = torch.get_num_threads()
    n = n or default_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class Session:
    """Everything a run needs, built once from a Config (see :func:`build_session`)."""

    cfg: Config
    device: torch.device
    splits: Splits
    model: nn.Module
    optimizer: torch.optim.Optimizer
    stepper: Stepper
    amp: Amp
    normalize: Normalizer
    speed: Speed  # precision and memory format, and why (measured, cached, or set)
    data: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (x uint8, y) on device
    params: int
    steps_per_epoch: int
    ema: Ema | None = None
    net: nn.Module | None = None  # what the training step calls: DDP / compiled wrapper
    dist: Dist = field(default_factory=Dist)
    batch_source: BatchSource | None = None  # aug.backend=albumentations (augment.albu)
    lookahead: Lookahead | None = None  # optim.lookahead_every > 0; a post-step hook
    data_root: Path | None = None  # the folder the data was loaded from

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    @property
    def eval_model(self) -> nn.Module:
        """The weights that count: the ones evaluated, reported, diagnosed and compared.
        The EMA copy when the run keeps one (its metrics were measured on it), else the
        trained model. This property is the only place that decides."""
        return self.ema.model if self.ema is not None else self.model

    def evaluate(self, split: str, keep_outputs: bool = False) -> EvalResult:
        """Loss and accuracy of :attr:`eval_model` on ``split`` (train, val or test) as the
        run scores it: without augmentation, with its ``train.tta``, precision, memory
        format, evaluation batch and threads, summed over torchrun processes. The one
        evaluation of a split, for training, eval, the API, diagnose and compare."""
        x, y = self.data[split]
        with torch_threads(self.cfg.train.threads):
            return evaluate(self.eval_model, x, y, normalize=self.normalize,
                            batch_size=self.cfg.train.eval_batch_size, amp=self.amp,
                            tta=self.cfg.train.tta, dist=self.dist,
                            keep_outputs=keep_outputs)


def build_session(cfg: Config, data_root: Path | None = None,
                  splits: Splits | None = None, speed: dict | None = None) -> Session:
    """Load data, build model/optimizer/scheduler on the chosen device (no files written).

    Under torchrun, joins the process group first; every rank builds the same session.
    Runs with ``train.threads`` CPU threads (as :func:`classlab.run.fit.fit` does), and
    leaves the process's setting as it found it. ``speed``: a run folder's recorded
    :class:`~classlab.engine.precision.Speed` (as a dict), kept where the config still allows
    it; otherwise ``auto`` precision / memory format are measured
    (:mod:`classlab.engine.precision`)."""
    with torch_threads(cfg.train.threads):
        return _build(cfg, data_root, splits, speed)


def _build(cfg: Config, data_root: Path | None, splits: Splits | None,
           recorded: dict | None) -> Session:
    dist, rank_device = init_distributed(cfg.train.device)
    device = rank_device or resolve_device(cfg.train.device)
    splits = splits if splits is not None else load_splits(cfg.data, data_root)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, num_classes=len(splits.classes)).to(device)
    if hasattr(model, "init_from_data"):
        # Data-dependent initialisation (e.g. a whitening first layer) sees training images
        # only: the first 5,000 of the (already shuffled-by-split) train set, normalised.
        layout = cfg.train.channels_last is True  # the measured layout is not known yet
        init = Normalizer(splits.mean, splits.std, device, layout)
        model.init_from_data(init(splits.train_x[:5000].to(device)))
    params = count_params(model)
    data = {
        "train": (splits.train_x.to(device), splits.train_y.to(device)),
        "val": (splits.val_x.to(device), splits.val_y.to(device)),
        "test": (splits.test_x.to(device), splits.test_y.to(device)),
    }
    speed = choose_speed(cfg, model, TrainSample(*data["train"], splits.mean, splits.std), device,
                         dist=dist, recorded=recorded)
    normalize = Normalizer(splits.mean, splits.std, device, speed.channels_last)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    steps = steps_per_epoch(len(splits.train_x), cfg.train.batch_size)
    stepper = build_scheduler(optimizer, cfg.sched, cfg.train.epochs, steps)
    amp = Amp(device.type, speed.precision)
    ema = Ema(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    lookahead = None
    if cfg.optim.lookahead_every > 0:
        lookahead = Lookahead(model, cfg.optim.lookahead_every, cfg.optim.lookahead_decay,
                              total=cfg.train.epochs * steps)
        lookahead.attach(optimizer)
    net = _wrap(model, cfg, dist, device)
    source = None
    if cfg.aug.backend == "albumentations":  # per image, in DataLoader workers
        from classlab.augment.albu import AlbuBatches

        source = AlbuBatches(splits.train_x, cfg.aug.albumentations, splits.mean,
                             workers=cfg.aug.workers, rank=dist.rank,
                             pin_memory=device.type == "cuda")
    return Session(cfg, device, splits, model, optimizer, stepper, amp, normalize, speed,
                   data, params, steps, ema, net, dist, batch_source=source, lookahead=lookahead,
                   data_root=data_root)


def _wrap(model: nn.Module, cfg: Config, dist: Dist, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP across ranks, torch.compile on request.

    The optimizer, checkpoints and evaluation keep using the plain ``model`` (the same
    parameters), so state dicts never carry a ``module.`` prefix."""
    net = model
    if dist.world > 1:
        if cfg.train.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if cfg.train.compile:
        net = torch.compile(net)
    return net


def checkpoint_state(s: Session, epoch: int, best: dict) -> dict:
    return {
        "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.stepper.state_dict(),
        "scaler": s.amp.scaler.state_dict(),
        "ema": s.ema.model.state_dict() if s.ema is not None else None,
        "lookahead": s.lookahead.state_dict() if s.lookahead is not None else None,
        "epoch": epoch,
        "best": best,
        "rng": rng_state(),
        "config": config.to_dict(s.cfg),
        "classes": list(s.splits.classes),
        "mean": list(s.splits.mean),
        "std": list(s.splits.std),
        "params": s.params,
    }


def restore(s: Session, state: dict) -> tuple[int, dict]:
    """Load a checkpoint into the session; returns (last finished epoch, best-so-far)."""
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.stepper.load_state_dict(state["scheduler"])
    s.amp.scaler.load_state_dict(state["scaler"])
    if s.ema is not None:
        s.ema.model.load_state_dict(state["ema"])
    if s.lookahead is not None:
        s.lookahead.load_state_dict(state["lookahead"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), dict(state["best"])


def read_data_record(files: RunFiles) -> dict | None:
    """The run folder's data.json (None for a run from before it was written)."""
    if not files.data_record.exists():
        return None
    try:
        record = read_json(files.data_record)
    except (OSError, ValueError) as e:
        raise RunDirError(f"{files.data_record}: unreadable ({e}); delete it and pass "
                          "--data-dir") from None
    entries = record.get("files") if isinstance(record, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()) \
            or (entries and not isinstance(record.get("path"), str)):
        raise RunDirError(f"{files.data_record}: not a data record; delete it and pass "
                          "--data-dir")
    return record


def build_run_session(run_dir: Path, cfg: Config, data_root: Path | None = None) -> Session:
    """:func:`build_session` for an existing run folder: the data comes from ``data_root``
    when given, else from where the run's data.json says; either way its files must be the
    ones recorded there (a one-line DataError otherwise, before anything is loaded)."""
    files = RunFiles(run_dir)
    root = check_record(read_data_record(files), cfg.data, data_root, str(files.data_record))
    return build_session(cfg, root, speed=recorded_speed(files))


def recorded_speed(files: RunFiles) -> dict | None:
    """The precision / memory format a run folder trained with (summary.json), if any."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        speed = read_json(files.summary).get("speed")
        if isinstance(speed, dict) and {"precision", "channels_last"} <= speed.keys():
            return speed
    return None


def session_from_run(run_dir: Path, data_root: Path | None = None,
                     device: str | None = None) -> tuple[Session, dict]:
    """A session whose model holds ``run_dir/last.pt`` (for eval and diagnose); the data as
    in :func:`build_run_session`."""
    run_dir = Path(run_dir)
    state = load_checkpoint(RunFiles(run_dir).checkpoint)
    cfg = config.from_dict(state["config"])
    if device is not None:
        cfg.train.device = device
    s = build_run_session(run_dir, cfg, data_root)
    s.model.load_state_dict(state["model"])
    if s.ema is not None:  # Session.eval_model evaluates it
        if state.get("ema") is None:
            raise CheckpointError(f"{RunFiles(run_dir).checkpoint}: no EMA weights in it, "
                                  "but the run's config has train.ema_decay > 0")
        s.ema.model.load_state_dict(state["ema"])
    return s, state

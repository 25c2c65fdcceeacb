"""The session: everything one run needs in memory (data on the device, model, optimizer,
scheduler, precision, EMA, Lookahead), built once from a Config, and its checkpoint state.

Building a session writes nothing, and every check that can fail happens while building, so
a bad config, missing data or a missing package stop before a run folder exists.
"""

from __future__ import annotations

import contextlib
import os
import sys
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
    compiling,
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
from classlab.rundir.checkpoint import (
    CheckpointError,
    check_weights_fit,
    eval_weights,
    load_checkpoint,
    weight_differences,
)


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


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_LOWERED: set[int] = set()  # train.threads values already reported as lowered


def usable_threads(n: int) -> int:
    """``train.threads: n``, at most the CPUs this process may run on (its affinity): more
    threads than CPUs only contend. Lowered with a note on stderr (once per value)."""
    cpus = _cpus()
    if n <= cpus:
        return n
    if n not in _LOWERED:
        _LOWERED.add(n)
        print(f"note: train.threads={n} but this process may use {cpus} CPU"
              f"{'s' if cpus > 1 else ''}: using {cpus}", file=sys.stderr, flush=True)
    return cpus


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` torch CPU threads (0: :func:`default_threads`), and put the
    previous number back afterwards: ``train.threads`` of one run must not change the
    process for whatever runs next (a notebook's next cell, the next test)."""
    before = torch.get_num_threads()
    n = usable_threads(n) if n else default_threads()
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
                            tta=self.cfg.train.tta, tta_fraction=self.cfg.train.tta_fraction,
                            dist=self.dist,
                            keep_outputs=keep_outputs)


def build_session(cfg: Config, data_root: Path | None = None,
                  splits: Splits | None = None, speed: dict | None = None,
                  resumed: bool = False, train_steps: int | None = None) -> Session:
    """Load data, build model/optimizer/scheduler on the chosen device (no files written).

    Under torchrun, joins the process group first; every rank builds the same session.
    Runs with ``train.threads`` CPU threads (as :func:`classlab.run.fit.fit` does), and
    leaves the process's setting as it found it. ``speed``: a run folder's recorded
    :class:`~classlab.engine.precision.Speed` (as a dict), kept where the config still allows
    it; otherwise ``auto`` precision / memory format are measured
    (:mod:`classlab.engine.precision`), and ``train.compile: auto`` decided for
    ``train_steps`` training steps (default: the run's; lr-find passes its sweep's). A new run
    (not ``resumed``: its checkpoint will replace the weights) starts from
    ``train.init_from``'s weights when that is set."""
    with torch_threads(cfg.train.threads):
        return _build(cfg, data_root, splits, speed, resumed, train_steps)


def _build(cfg: Config, data_root: Path | None, splits: Splits | None,
           recorded: dict | None, resumed: bool, train_steps: int | None) -> Session:
    dist, rank_device = init_distributed(cfg.train.device)
    device = rank_device or resolve_device(cfg.train.device)
    splits = splits if splits is not None else load_splits(cfg.data, data_root)
    check_batch_size(cfg, len(splits.train_x))
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, num_classes=len(splits.classes)).to(device)
    if hasattr(model, "init_from_data"):
        # Data-dependent initialisation (e.g. a whitening first layer) sees training images
        # only: the first 5,000 of the (already shuffled-by-split) train set, normalised.
        layout = cfg.train.channels_last is True  # the measured layout is not known yet
        init = Normalizer(splits.mean, splits.std, device, layout)
        model.init_from_data(init(splits.train_x[:5000].to(device)))
    if cfg.train.init_from and not resumed:
        load_weights_from(model, cfg.train.init_from)
    params = count_params(model)
    data = {
        "train": (splits.train_x.to(device), splits.train_y.to(device)),
        "val": (splits.val_x.to(device), splits.val_y.to(device)),
        "test": (splits.test_x.to(device), splits.test_y.to(device)),
    }
    speed = choose_speed(cfg, model, TrainSample(*data["train"], splits.mean, splits.std), device,
                         dist=dist, recorded=recorded, steps=train_steps)
    normalize = Normalizer(splits.mean, splits.std, device, speed.channels_last)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    steps = steps_per_epoch(len(splits.train_x), cfg.train.batch_size)
    stepper = build_scheduler(optimizer, cfg.sched, cfg.train.epochs, steps,
                              freeze_windows=dist.world == 1)
    amp = Amp(device.type, speed.precision)
    ema = Ema(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    lookahead = None
    if cfg.optim.lookahead_every > 0:
        lookahead = Lookahead(model, cfg.optim.lookahead_every, cfg.optim.lookahead_decay,
                              total=cfg.train.epochs * steps)
        lookahead.attach(optimizer)
    net = _wrap(model, cfg, dist, device, speed.compiled)
    source = None
    if cfg.aug.backend == "albumentations":  # per image, in DataLoader workers
        from classlab.augment.albu import AlbuBatches

        source = AlbuBatches(splits.train_x, cfg.aug.albumentations, splits.mean,
                             workers=cfg.aug.workers, rank=dist.rank,
                             pin_memory=device.type == "cuda")
    return Session(cfg, device, splits, model, optimizer, stepper, amp, normalize, speed,
                   data, params, steps, ema, net, dist, batch_source=source, lookahead=lookahead,
                   data_root=data_root)


def load_weights_from(model: nn.Module, source: str) -> None:
    """``train.init_from``: the weights that count of the run folder ``source`` (its EMA
    copy when it kept one) into ``model``; a run of another architecture or class count is a
    one-line ConfigError naming the first tensors that differ."""
    path = RunFiles(source).checkpoint
    if not path.is_file():
        raise config.ConfigError(f"train.init_from: {source!r} is not a run folder with a "
                                 "checkpoint (no last.pt)")
    state = load_checkpoint(path)
    weights = eval_weights(state)
    differ = weight_differences(model.state_dict(), weights)
    if differ:
        raise config.ConfigError(f"train.init_from: {source}'s weights do not fit this model "
                                 f"({'; '.join(differ[:3])}"
                                 f"{f'; {len(differ) - 3} more' if len(differ) > 3 else ''})")
    model.load_state_dict(weights)


def check_batch_size(cfg: Config, train_images: int) -> None:
    """A batch larger than the training set cannot be drawn (and a huge one would first ask
    the allocator for it): one-line ConfigError, before anything is allocated or written."""
    if train_images and cfg.train.batch_size > train_images:
        raise config.ConfigError(f"train.batch_size: {cfg.train.batch_size:,} is larger than "
                                 f"the training set ({train_images:,} images); must be ≤ "
                                 f"{train_images:,}")


def _wrap(model: nn.Module, cfg: Config, dist: Dist, device: torch.device,
          compiled: bool) -> nn.Module:
    """The module the training step calls: DDP across ranks, torch.compile when the speed
    choice says so (``train.compile``; :mod:`classlab.engine.compiling`).

    The optimizer, checkpoints and evaluation keep using the plain ``model`` (the same
    parameters), so state dicts never carry a ``module.`` prefix."""
    net = model
    if dist.world > 1:
        if cfg.train.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if compiled:
        net = compiling.compile_module(net)
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


def restore(s: Session, state: dict, path: Path | str = "the checkpoint") -> tuple[int, dict]:
    """Load a checkpoint (read from ``path``) into the session; returns (last finished
    epoch, best-so-far). A checkpoint of another network, or whose optimizer / scheduler
    state does not fit this run's, is a one-line CheckpointError before anything changes."""
    check_weights_fit(path, s.model.state_dict(), state["model"], "the run's model "
                      f"({describe_model(s.cfg)})")
    try:
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.stepper.load_state_dict(state["scheduler"])
        s.amp.scaler.load_state_dict(state["scaler"])
        if s.ema is not None:
            s.ema.model.load_state_dict(state["ema"])
        if s.lookahead is not None:
            s.lookahead.load_state_dict(state["lookahead"])
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: does not fit this run's training state ({what})") \
            from None
    return int(state["epoch"]), dict(state["best"])


def describe_model(cfg: Config) -> str:
    """The model of ``cfg`` in words, for messages: ``resnet18/bn, width 64``."""
    return f"{cfg.model.name}/{cfg.model.norm}, width {cfg.model.width}"


def check_fits_run(run_dir: Path, state: dict) -> None:
    """The checkpoint ``state`` of ``run_dir`` holds the network config.yaml describes: a
    last.pt copied from another run would otherwise be evaluated and diagnosed under this
    run's name. One-line CheckpointError naming the tensors that differ (on the meta device:
    nothing is allocated, no data loaded). A folder without config.yaml is not checked."""
    files = RunFiles(run_dir)
    if not files.config.is_file():
        return
    cfg = config.load(files.config)
    with torch.device("meta"):
        model = build_model(cfg.model, num_classes=len(state.get("classes") or range(10)))
    check_weights_fit(files.checkpoint, model.state_dict(), state["model"],
                      f"the run's model (config.yaml: {describe_model(cfg)})")


def with_device(cfg: Config, device: str) -> Config:
    """``cfg`` on ``device`` (``--device``), checked as ``train.device`` is."""
    raw = config.to_dict(cfg)
    raw["train"]["device"] = device
    try:
        return config.from_dict(raw)
    except config.ConfigError as e:
        raise config.ConfigError(str(e).replace("train.device", "--device", 1)) from None


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
    # the images the run left out as it recorded them (data.exclude's file may have moved)
    splits = (load_splits(cfg.data, root, exclude_file=files.excluded)
              if cfg.data.exclude and files.excluded.is_file() else None)
    return build_session(cfg, root, splits=splits, speed=recorded_speed(files), resumed=True)


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
        cfg = with_device(cfg, device)
    check_fits_run(run_dir, state)
    s = build_run_session(run_dir, cfg, data_root)
    s.model.load_state_dict(state["model"])
    if s.ema is not None:  # Session.eval_model evaluates it
        if state.get("ema") is None:
            raise CheckpointError(f"{RunFiles(run_dir).checkpoint}: no EMA weights in it, "
                                  "but the run's config has train.ema_decay > 0")
        s.ema.model.load_state_dict(state["ema"])
    return s, state

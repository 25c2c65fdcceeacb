"""The training loop: ``train_one_epoch`` and ``evaluate`` (written once, used by train, grid
and diagnose), checkpoints, resume and the run folder.

Data path: the whole dataset is one uint8 tensor ``[N,3,H,W]`` on the training device; a
batch is gathered by index, converted to float, normalised and augmented there as whole-batch
tensor ops. Randomness of an epoch (shuffle + augmentation) comes from a generator seeded by
``(train.seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classlab import _io, config
from classlab.api import make_callable
from classlab.augment import augment, epoch_images, make_generator
from classlab.config import Config
from classlab.data import Splits, load_splits
from classlab.dynamics import DynamicsLogger
from classlab.models import build_model, count_params
from classlab.optim import Lookahead, Stepper, build_optimizer, build_scheduler, current_lr

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                 "test_acc", "seconds"]


class TrainingError(RuntimeError):
    """Training stopped on purpose (e.g. a non-finite loss); one-line message."""


# --------------------------------------------------------------------------- devices & precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but CUDA is not available; use cpu or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 on CUDA cards that support it, else fp32 (see bench/README.md)."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch of indices."""
        return idx.tensor_split(self.world)[self.rank] if self.world > 1 else idx

    def rank_generator(self, gen: torch.Generator) -> torch.Generator:
        """The generator for this rank's augmentation draws. Every rank holds the same
        ``gen`` (so all draw the same permutation); augmenting from it would give the k-th
        image of every rank's shard the same crop, flip and cutout. Under torchrun: a new
        generator seeded from one draw of ``gen`` plus the rank; otherwise ``gen`` itself, so
        single-process runs keep their random stream."""
        if self.world == 1:
            return gen
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        return make_generator(seed + self.rank, gen.device)

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """All-reduce (sum) a few scalars across ranks; identity when not distributed."""
        if self.world == 1:
            return list(values)
        t = torch.stack([v.double().reshape(()) for v in values])
        torch.distributed.all_reduce(t)
        return list(t.unbind())


def init_distributed(device_name: str) -> tuple[Dist, torch.device | None]:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK.

    Returns the Dist and, on CUDA, the device of this rank (one GPU per process).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    device = None
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return Dist(rank, world, local), device


@dataclass
class Amp:
    """Autocast settings plus the gradient scaler that fp16 needs (disabled otherwise)."""

    device_type: str
    precision: str
    scaler: torch.amp.GradScaler = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if self.scaler is None:
            enabled = self.precision == "fp16" and self.device_type == "cuda"
            self.scaler = torch.amp.GradScaler(self.device_type, enabled=enabled)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)


# --------------------------------------------------------------------------- batches


class Normalizer:
    """uint8 ``[N,3,H,W]`` -> float32 ``(x/255 - mean)/std``, on the batch's device.

    Computed as ``x * scale + shift`` in place on the one float copy (``scale = 1/(255 std)``,
    ``shift = -mean/std``, both ``[1,3,1,1]``): an out-of-place broadcast subtract and divide
    took ~14 ms per 512 CIFAR images on one CPU core, this takes under 1 ms.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False) -> None:
        mean_t = torch.tensor(mean, device=device, dtype=torch.float64).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=device, dtype=torch.float64).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).float()
        self.shift = (-mean_t / std_t).float()
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.float().mul_(self.scale).add_(self.shift)  # keeps x's strides
        # Always a dense copy in the chosen layout: x may be a strided view (the
        # albumentations backend hands over HWC arrays permuted to NCHW), and such input
        # made the backward pass abort.
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)


def batch_indices(n: int, batch_size: int, gen: torch.Generator | None) -> list[torch.Tensor]:
    """Index tensors of one epoch: shuffled with ``gen`` (None: in order). A trailing batch of
    one image is dropped, since BatchNorm cannot train on a single sample."""
    device = gen.device if gen is not None else "cpu"
    order = (torch.randperm(n, generator=gen, device=device) if gen is not None
             else torch.arange(n))
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()
    return chunks


def steps_per_epoch(n: int, batch_size: int) -> int:
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


class Ema:
    """Exponential moving average of a model's weights, kept as a full copy of the model.

    After each optimizer step: ``w_ema <- decay * w_ema + (1 - decay) * w``; buffers (BatchNorm
    running statistics) are copied, since they are already running averages.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()),
                             [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


# --------------------------------------------------------------------------- the loop


@dataclass
class EpochResult:
    loss: float  # mean per-sample cross-entropy over the epoch's (augmented) images
    acc: float  # percent correct, running over the epoch (the spec's "Training Accuracy")
    steps: int


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)


# (this rank's batches of indices, epoch generator) -> their augmented uint8 [B,3,H,W] images
BatchSource = Callable[[list[torch.Tensor], torch.Generator], Iterator[torch.Tensor]]


def train_one_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    stepper: Stepper,
    normalize: Normalizer,
    augment_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    gen: torch.Generator,
    batch_size: int,
    amp: Amp,
    epoch: int,
    global_step: int = 0,
    label_smoothing: float = 0.0,
    grad_clip: float = 0.0,
    dynamics: DynamicsLogger | None = None,
    ema: Ema | None = None,
    dist: Dist = Dist(),
    progress: bool = True,
    batch_source: BatchSource | None = None,
) -> EpochResult:
    """One pass over ``x`` (uint8 ``[N,3,H,W]`` on the device) in shuffled batches.

    ``batch_source`` (``aug.backend=albumentations``): called once with the epoch's batches
    of indices (this rank's shards) and ``gen``, it yields their augmented uint8 images, which
    replace ``augment_fn(normalize(x[idx]))`` by ``normalize(images)``; the batches, and so
    the shuffling, stay those of ``batch_indices``.

    Loss and accuracy are summed on the device and read back only when the progress bar
    refreshes, so the GPU is not synchronised on every step. A non-finite loss raises
    TrainingError naming the epoch and step.
    """
    model.train()
    batches = batch_indices(len(x), batch_size, gen)
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    seen = 0
    # On CUDA, check finiteness every few steps (one sync); on CPU it is free every step.
    check_every = 1 if x.device.type == "cpu" else 25
    step_losses: list[torch.Tensor] = []
    images = (batch_source([dist.shard(idx) for idx in batches], gen)
              if batch_source is not None else None)
    aug_gen = dist.rank_generator(gen)
    bar = _progress(len(batches), f"Epoch {epoch}", progress)
    try:
        for i, idx in enumerate(batches):
            step = global_step + i
            # Every rank draws the same permutation and keeps its slice of each global batch.
            idx = dist.shard(idx)
            if images is None:
                xb = augment_fn(normalize(x[idx]), aug_gen)
            else:
                xb = normalize(next(images).to(x.device, non_blocking=True))
            yb = y[idx]
            with amp.autocast():
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            amp.scaler.scale(loss).backward()
            if grad_clip > 0 or (dynamics is not None and dynamics.wants(step)):
                amp.scaler.unscale_(optimizer)  # norms and clipping in true gradient units
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if dynamics is not None:
                dynamics.before_step(step)
            amp.scaler.step(optimizer)
            amp.scaler.update()
            if dynamics is not None:
                dynamics.after_step(step, epoch, optimizer)
            stepper.after_batch()
            if ema is not None:
                ema.update(model)
            n = len(idx)
            loss_sum += loss.detach().double() * n
            correct += (logits.argmax(1) == yb).sum()
            seen += n
            step_losses.append(loss.detach())
            if len(step_losses) >= check_every or i == len(batches) - 1:
                _check_finite(step_losses, epoch, step - len(step_losses) + 1)
                step_losses = []
            if progress:
                bar.update(1)
                if i % 10 == 0 or i == len(batches) - 1:
                    bar.set_postfix_str(
                        f"loss={loss.item():.4f} lr={current_lr(optimizer):.5f} "
                        f"acc={100.0 * correct.item() / seen:.2f}", refresh=False)
    finally:
        bar.close()
    loss_sum, correct, n_seen = dist.sum(loss_sum, correct, torch.tensor(seen))
    return EpochResult(loss_sum.item() / n_seen.item(), 100.0 * correct.item() / n_seen.item(),
                       len(batches))


def _check_finite(losses: list[torch.Tensor], epoch: int, first_step: int) -> None:
    ok = torch.isfinite(torch.stack(losses))
    if not bool(ok.all()):
        bad = first_step + int((~ok).nonzero()[0])
        raise TrainingError(f"non-finite loss at epoch {epoch}, step {bad}; stopped (the last "
                            "good checkpoint is kept). Try a lower optim.lr or train.grad_clip")


@dataclass
class EvalResult:
    loss: float  # mean per-sample cross-entropy
    acc: float  # percent correct
    n: int
    preds: torch.Tensor | None = None  # [N] int64 (keep_outputs=True)
    probs: torch.Tensor | None = None  # [N, K] float32 softmax
    losses: torch.Tensor | None = None  # [N] per-sample loss


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate ``[N,C,H,W]`` by (dy, dx) pixels, filling with reflected border pixels."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., p - dy: p - dy + h, p - dx: p - dx + w]


TTA: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": lambda x: [x],
    "flip": lambda x: [x, x.flip(-1)],
    # the image, its mirror, and both shifted one pixel up-left and down-right
    "flip_translate": lambda x: [v for s in (x, _shift(x, 1, 1), _shift(x, -1, -1))
                                 for v in (s, s.flip(-1))],
}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    normalize: Normalizer,
    batch_size: int,
    amp: Amp,
    keep_outputs: bool = False,
    tta: str = "none",
    dist: Dist = Dist(),
) -> EvalResult:
    """Loss and accuracy of ``model`` on uint8 ``x``, without augmentation, or with test-time
    augmentation ``tta`` (see :data:`TTA`) averaging the logits of several views. Outputs
    stay on the CPU."""
    if len(x) == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    if keep_outputs and dist.world > 1:
        raise ValueError("keep_outputs needs the whole set in one process")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    preds, probs, losses = [], [], []
    for idx in dist.shard(torch.arange(len(x), device=x.device)).split(batch_size):
        xb, yb = normalize(x[idx]), y[idx]
        with amp.autocast():
            logits = torch.stack([model(v).float() for v in TTA[tta](xb)]).mean(0)
        per = F.cross_entropy(logits, yb, reduction="none")
        loss_sum += per.double().sum().item()
        pred = logits.argmax(1)
        correct += int((pred == yb).sum())
        if keep_outputs:
            preds.append(pred.cpu())
            probs.append(logits.softmax(1).cpu())
            losses.append(per.cpu())
    model.train(was_training)
    if dist.world > 1:
        loss_sum, correct = (t.item() for t in dist.sum(torch.tensor(loss_sum, device=x.device),
                                                         torch.tensor(correct, device=x.device)))
    res = EvalResult(loss_sum / len(x), 100.0 * correct / len(x), len(x))
    if keep_outputs:
        res.preds, res.probs, res.losses = torch.cat(preds), torch.cat(probs), torch.cat(losses)
    return res


# --------------------------------------------------------------------------- state & RNG


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),  # the 625 ints of Mersenne Twister state
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Shuffle/augmentation randomness of one epoch, independent of everything before it."""
    return make_generator(seed * 1_000_003 + epoch, device)


# --------------------------------------------------------------------------- the session


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
    data: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (x uint8, y) on device
    params: int
    steps_per_epoch: int
    ema: Ema | None = None
    net: nn.Module | None = None  # what the training step calls: DDP / compiled wrapper
    dist: Dist = field(default_factory=Dist)
    batch_source: BatchSource | None = None  # aug.backend=albumentations (classlab.albu)
    lookahead: Lookahead | None = None  # optim.lookahead_every > 0; a post-step hook

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and reported: the EMA when it is on."""
        return self.ema.model if self.ema is not None else self.model


def build_session(cfg: Config, data_root: Path | None = None,
                  splits: Splits | None = None) -> Session:
    """Load data, build model/optimizer/scheduler on the chosen device (no files written).

    Under torchrun, joins the process group first; every rank builds the same session."""
    dist, rank_device = init_distributed(cfg.train.device)
    device = rank_device or resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    splits = splits if splits is not None else load_splits(cfg.data, data_root)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, num_classes=len(splits.classes)).to(device)
    normalize = Normalizer(splits.mean, splits.std, device, cfg.train.channels_last)
    if hasattr(model, "init_from_data"):
        # Data-dependent initialisation (e.g. a whitening first layer) sees training images
        # only: the first 5,000 of the (already shuffled-by-split) train set, normalised.
        model.init_from_data(normalize(splits.train_x[:5000].to(device)))
    params = count_params(model)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    steps = steps_per_epoch(len(splits.train_x), cfg.train.batch_size)
    stepper = build_scheduler(optimizer, cfg.sched, cfg.train.epochs, steps)
    amp = Amp(device.type, resolve_precision(cfg.train.precision, device))
    data = {
        "train": (splits.train_x.to(device), splits.train_y.to(device)),
        "val": (splits.val_x.to(device), splits.val_y.to(device)),
        "test": (splits.test_x.to(device), splits.test_y.to(device)),
    }
    ema = Ema(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    lookahead = None
    if cfg.optim.lookahead_every > 0:
        lookahead = Lookahead(model, cfg.optim.lookahead_every, cfg.optim.lookahead_decay,
                              total=cfg.train.epochs * steps)
        lookahead.attach(optimizer)
    net = _wrap(model, cfg, dist, device)
    source = None
    if cfg.aug.backend == "albumentations":  # per image, in DataLoader workers
        from classlab.albu import AlbuBatches

        source = AlbuBatches(splits.train_x, cfg.aug.albumentations, splits.mean,
                             workers=cfg.aug.workers, rank=dist.rank,
                             pin_memory=device.type == "cuda")
    return Session(cfg, device, splits, model, optimizer, stepper, amp, normalize, data,
                   params, steps, ema, net, dist, batch_source=source, lookahead=lookahead)


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


# --------------------------------------------------------------------------- run folder files


def _truncate_csv(path: Path, keep: Callable[[dict], bool], fields: list[str]) -> None:
    """Rewrite a CSV keeping complete rows that ``keep`` accepts (drops rows written after the
    last checkpoint, and a half-written last line after a crash)."""
    if not path.exists():
        return
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if None in r.values() or None in r:
                continue  # a cut-off line
            try:
                if keep(r):
                    rows.append(r)
            except ValueError:
                continue
    buf = [",".join(fields)]
    for r in rows:
        buf.append(",".join(_csv_cell(r[k]) for k in fields))
    _io.atomic_write_text(path, "\n".join(buf) + "\n")


def _csv_cell(v: str) -> str:
    return f'"{v}"' if ("," in v or '"' in v) else v


def append_metrics(path: Path, row: dict) -> None:
    """Append one epoch row and flush it to disk (header on first write)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: _fmt(row[k]) for k in METRIC_FIELDS})
        f.flush()
        os.fsync(f.fileno())  # the row must survive a power cut as well as its checkpoint


def _fmt(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    return "" if v != v else f"{v:.6g}"  # NaN (no val split) -> empty cell


def read_metrics(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (int(v) if k == "epoch" else (float(v) if v else float("nan")))
                         for k, v in r.items()})
    return rows


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "commit": _io.git_commit(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _update_best(best: dict, row: dict) -> dict:
    """Best epoch chosen by validation accuracy only; its test accuracy is reported as is."""
    key = "val_acc" if row["val_acc"] == row["val_acc"] else "train_acc"
    # With train.eval_every > 1 some epochs have no validation score: an epoch scored by
    # training accuracy never displaces one scored by validation accuracy, and the first
    # validated epoch displaces any unvalidated one.
    if (not best or (best["by"] == key and row[key] > best["score"])
            or (best["by"] != key and key == "val_acc")):
        return {"epoch": row["epoch"], "score": row[key], "by": key,
                "val_acc": row["val_acc"], "test_acc": row["test_acc"]}
    return best


def _summary(s: Session, run_dir: Path, status: str, best: dict, last: dict | None,
             wall: float, error: str | None = None) -> dict:
    return {
        "name": s.cfg.name,
        "run_dir": str(run_dir),
        "status": status,
        "error": error,
        "model": s.cfg.model.name,
        "norm": s.cfg.model.norm,
        "optimizer": s.cfg.optim.name,
        "scheduler": s.cfg.sched.name,
        "params": s.params,
        "epochs": s.cfg.train.epochs,
        "epochs_done": last["epoch"] if last else 0,
        "final": {k: last[k] for k in METRIC_FIELDS[2:8]} if last else None,
        "best_by_val": best or None,
        "wall_seconds": round(wall, 2),
        "seconds_per_epoch": round(wall / last["epoch"], 2) if last else None,
        "device": _device_name(s.device),
        "precision": s.amp.precision,
        "train_images": len(s.splits.train_x),
        "val_images": len(s.splits.val_x),
        "test_images": len(s.splits.test_x),
        "classes": list(s.splits.classes),
        "versions": environment(),
    }


def _print_epoch(row: dict, n: dict[str, int]) -> None:
    def part(split: str) -> str:
        if row[f"{split}_loss"] != row[f"{split}_loss"]:
            return ""
        return f"{split} loss {row[f'{split}_loss']:.4f} acc {row[f'{split}_acc']:.2f}%  "
    scored = f"{n['test']} test images, " if row["test_loss"] == row["test_loss"] else ""
    print(f"Epoch {row['epoch']}: {part('train')}{part('val')}{part('test')}"
          f"({scored}{row['seconds']:.1f}s)", flush=True)


# --------------------------------------------------------------------------- fit


def fit(s: Session, run_dir: Path, start_epoch: int = 0, best: dict | None = None,
        wall_before: float = 0.0, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train epochs ``start_epoch+1 .. cfg.train.epochs``, writing metrics and checkpoints
    (rank 0 only, under torchrun).

    Returns the final summary. On a TrainingError the summary records it (status "failed")
    and the error is re-raised; ``last.pt`` then still holds the last good epoch.
    """
    cfg, best, main = s.cfg, dict(best or {}), s.dist.main
    t0 = time.time() - wall_before
    dyn = (DynamicsLogger(s.model, run_dir / "dynamics.csv", cfg.log.dynamics_every)
           if cfg.log.dynamics_every > 0 and main else None)
    last, saved = None, start_epoch  # saved: the epoch last.pt holds
    try:
        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            row, test_eval = _train_and_evaluate(s, epoch, dyn)
            # Only train/val metrics reach the scheduler: the test set drives no decision.
            s.stepper.after_epoch({k: row[k] for k in ("train_loss", "val_loss", "val_acc")})
            best, last = _update_best(best, row), row
            if main:
                try:
                    _record_epoch(s, run_dir, row, best, dyn, time.time() - t0)
                    if test_eval.preds is not None:
                        save_test_outputs(run_dir, epoch, test_eval)
                except OSError as e:  # disk full, quota, folder gone: one line, not a traceback
                    where = f" ({e.filename})" if e.filename else ""
                    raise TrainingError(f"cannot write epoch {epoch} into {run_dir}: "
                                        f"{e.strerror or e}{where}; last.pt keeps the last "
                                        "epoch fully written") from None
                saved = epoch
            if on_epoch is not None:
                on_epoch(row)
    except TrainingError as e:
        if main:
            rows = [r for r in read_metrics(run_dir / "metrics.csv") if r["epoch"] <= saved] \
                if (run_dir / "metrics.csv").exists() else []
            with contextlib.suppress(OSError):  # best effort: the disk may be the problem
                _io.write_json(run_dir / "summary.json", _summary(
                    s, run_dir, "failed", best, rows[-1] if rows else None, time.time() - t0,
                    str(e)))
        raise
    finally:
        if dyn is not None:
            dyn.close()
    if last is None and (run_dir / "metrics.csv").exists():  # resumed a finished run
        last = read_metrics(run_dir / "metrics.csv")[-1]
    summary = _summary(s, run_dir, "finished", best, last, time.time() - t0)
    if main:
        _io.write_json(run_dir / "summary.json", summary)
    return summary


def _train_and_evaluate(s: Session, epoch: int,
                        dyn: DynamicsLogger | None) -> tuple[dict, EvalResult]:
    """One epoch of training, then val and test evaluation: the epoch's metrics row, and the
    test evaluation (with per-image outputs after the last epoch, for diagnose to reuse)."""
    cfg, te = s.cfg, time.time()
    lr = current_lr(s.optimizer)
    aug = (lambda xb, g: augment(xb, g, cfg.aug)) if cfg.aug.ops else (lambda xb, g: xb)
    x_train, y_train = s.data["train"]
    if cfg.aug.backend == "batched":  # the albumentations workers read the stored images
        x_train = epoch_images(x_train, epoch, cfg.train.seed, cfg.aug)
    tr = train_one_epoch(
        s.net, x_train, y_train, optimizer=s.optimizer, stepper=s.stepper,
        normalize=s.normalize, augment_fn=aug,
        gen=epoch_generator(cfg.train.seed, epoch, s.device),
        batch_size=cfg.train.batch_size, amp=s.amp, epoch=epoch,
        global_step=(epoch - 1) * s.steps_per_epoch,
        label_smoothing=cfg.train.label_smoothing, grad_clip=cfg.train.grad_clip,
        dynamics=dyn, ema=s.ema, dist=s.dist, progress=cfg.train.progress and s.dist.main,
        batch_source=s.batch_source)
    final = epoch == cfg.train.epochs
    every = cfg.train.eval_every
    if final or (every > 0 and epoch % every == 0):
        ev = {k: evaluate(s.eval_model, *s.data[k], normalize=s.normalize,
                          batch_size=cfg.train.eval_batch_size, amp=s.amp, tta=cfg.train.tta,
                          dist=s.dist, keep_outputs=final and s.dist.world == 1 and k == "test")
              for k in ("val", "test")}
    else:  # not evaluated this epoch: empty cells in metrics.csv
        ev = {k: EvalResult(float("nan"), float("nan"), 0) for k in ("val", "test")}
    return {"epoch": epoch, "lr": lr, "train_loss": tr.loss, "train_acc": tr.acc,
            "val_loss": ev["val"].loss, "val_acc": ev["val"].acc,
            "test_loss": ev["test"].loss, "test_acc": ev["test"].acc,
            "seconds": time.time() - te}, ev["test"]


TEST_OUTPUTS = "test_outputs.pt"


def save_test_outputs(run_dir: Path, epoch: int, ev: EvalResult) -> None:
    """Per-image test outputs of the checkpoint of ``epoch`` (probs [N,K], losses [N]), so
    that diagnose does not run the whole test set through the model a second time."""
    _io.save_checkpoint(run_dir / TEST_OUTPUTS, {"epoch": epoch, "probs": ev.probs,
                                                 "losses": ev.losses})


def load_test_outputs(run_dir: Path, epoch: int, n: int) -> EvalResult | None:
    """The saved outputs when they belong to checkpoint ``epoch`` and ``n`` images, else None."""
    path = Path(run_dir) / TEST_OUTPUTS
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        probs, losses = state.get("probs"), state.get("losses")
    except Exception:  # a damaged cache is recomputed, never trusted
        return None
    if state.get("epoch") != epoch or probs is None or losses is None or len(probs) != n:
        return None
    return EvalResult(float("nan"), float("nan"), n, probs.argmax(1), probs, losses)


def _record_epoch(s: Session, run_dir: Path, row: dict, best: dict,
                  dyn: DynamicsLogger | None, wall: float) -> None:
    """The metrics row first, then the checkpoint. A crash in between leaves a row newer than
    the checkpoint; resume drops it and recomputes that epoch (identically), so no row is ever
    lost or duplicated."""
    if dyn is not None:
        dyn.flush()
    append_metrics(run_dir / "metrics.csv", row)
    _io.save_checkpoint(run_dir / "last.pt", checkpoint_state(s, row["epoch"], best))
    _print_epoch(row, {k: len(v[0]) for k, v in s.data.items()})
    _io.write_json(run_dir / "summary.json", _summary(s, run_dir, "running", best, row, wall))


def start_run(cfg: Config, out: Path, data_root: Path | None = None) -> tuple[Session, Path]:
    """Build the session (all checks that can fail happen here), then create the run folder."""
    s = build_session(cfg, data_root)
    run_dir = None
    if s.dist.main:
        run_dir = _io.make_run_dir(out, cfg.name)
        _io.atomic_write_text(run_dir / "config.yaml", config.dump(cfg))
        _io.write_json(run_dir / "summary.json", _summary(s, run_dir, "running", {}, None, 0.0))
    if s.dist.world > 1:  # every rank learns rank 0's folder name
        box = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    return s, run_dir


def resume_run(run_dir: Path, data_root: Path | None = None) -> tuple[Session, int, dict, float]:
    """Rebuild the session of ``run_dir`` from its config.yaml and last.pt, and drop any
    metrics/dynamics rows written after that checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise _io.RunDirError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = config.load(run_dir / "config.yaml")
    state = _io.load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").exists() else None
    s = build_session(cfg, data_root)
    epoch, best, wall = 0, {}, 0.0
    if state is not None:
        epoch, best = restore(s, state)
    if s.dist.main:
        for tmp in run_dir.glob(".*.tmp"):  # a write killed half-way (SIGKILL, power cut)
            tmp.unlink(missing_ok=True)
        _truncate_csv(run_dir / "metrics.csv", lambda r: int(r["epoch"]) <= epoch,
                      METRIC_FIELDS)
        limit = epoch * s.steps_per_epoch
        _truncate_csv(run_dir / "dynamics.csv", lambda r: int(r["step"]) < limit,
                      ["step", "epoch", "layer", "metric", "value"])
    if epoch and (run_dir / "metrics.csv").exists():
        wall = sum(r["seconds"] for r in read_metrics(run_dir / "metrics.csv"))
    return s, epoch, best, wall


def session_from_run(run_dir: Path, data_root: Path | None = None,
                     device: str | None = None) -> tuple[Session, dict]:
    """A session whose model holds ``run_dir/last.pt`` (for eval and diagnose)."""
    run_dir = Path(run_dir)
    state = _io.load_checkpoint(run_dir / "last.pt")
    cfg = config.from_dict(state["config"])
    if device is not None:
        cfg.train.device = device
    s = build_session(cfg, data_root)
    # The reported metrics came from the EMA weights when EMA was on: evaluate those.
    s.model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    s.ema = None
    return s, state


# ``classlab.train(...)`` is the notebook API (classlab.api.train). This module keeps its name
# and everything in it; it is only made callable, whichever way it was imported.
make_callable(sys.modules[__name__])

"""One epoch of training: the shuffled batches of the epoch through :func:`train_step`.

Loss and accuracy are summed on the device and read back only when the progress bar
refreshes, so a GPU is not synchronised on every step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from classlab.engine.batches import Normalizer, batch_indices
from classlab.engine.distributed import Dist
from classlab.engine.dynamics import DynamicsLogger
from classlab.engine.ema import Ema
from classlab.engine.errors import TrainingError
from classlab.engine.precision import Amp
from classlab.engine.step import train_step
from classlab.optim import Stepper, current_lr

# (this rank's batches of indices, epoch generator) -> their augmented uint8 [B,3,H,W] images
BatchSource = Callable[[list[torch.Tensor], torch.Generator], Iterator[torch.Tensor]]
AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class EpochResult:
    loss: float  # mean per-sample cross-entropy over the epoch's (augmented) images
    acc: float  # percent correct, running over the epoch (the spec's "Training Accuracy")
    steps: int


class _Running:
    """The epoch's running loss sum, correct count and images seen, on the device; and the
    finiteness check of the step losses (every step on CPU, where it is free; every 25 steps
    on CUDA, one synchronisation each)."""

    def __init__(self, device: torch.device, epoch: int, first_step: int) -> None:
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = 0
        self.epoch, self.next_step = epoch, first_step
        self.check_every = 1 if device.type == "cpu" else 25
        self.pending: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, yb: torch.Tensor,
            last: bool) -> None:
        n = len(yb)
        self.loss_sum += loss.double() * n
        self.correct += (logits.argmax(1) == yb).sum()
        self.seen += n
        self.pending.append(loss)
        if len(self.pending) >= self.check_every or last:
            self._check_finite()

    def _check_finite(self) -> None:
        ok = torch.isfinite(torch.stack(self.pending))
        if not bool(ok.all()):
            bad = self.next_step + int((~ok).nonzero()[0])
            raise TrainingError(f"non-finite loss at epoch {self.epoch}, step {bad}; stopped "
                                "(the last good checkpoint is kept). Try a lower optim.lr or "
                                "train.grad_clip")
        self.next_step += len(self.pending)
        self.pending = []

    def result(self, dist: Dist, steps: int) -> EpochResult:
        loss_sum, correct, seen = dist.sum(self.loss_sum, self.correct, torch.tensor(self.seen))
        return EpochResult(loss_sum.item() / seen.item(), 100.0 * correct.item() / seen.item(),
                           steps)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)


def _batches(x: torch.Tensor, batches: list[torch.Tensor], gen: torch.Generator, dist: Dist,
             normalize: Normalizer, augment_fn: AugmentFn,
             batch_source: BatchSource | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(this rank's indices, normalised augmented images) of each global batch. Every rank
    draws the same permutation and keeps its slice of each global batch."""
    shards = [dist.shard(idx) for idx in batches]
    if batch_source is not None:  # the albumentations workers made the images
        for idx, images in zip(shards, batch_source(shards, gen)):
            yield idx, normalize(images.to(x.device, non_blocking=True))
        return
    aug_gen = dist.rank_generator(gen)
    for idx in shards:
        yield idx, augment_fn(normalize(x[idx]), aug_gen)


def train_one_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    stepper: Stepper,
    normalize: Normalizer,
    augment_fn: AugmentFn,
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
    the shuffling, stay those of ``batch_indices``. A non-finite loss raises TrainingError
    naming the epoch and step.
    """
    model.train()
    batches = batch_indices(len(x), batch_size, gen)
    run = _Running(x.device, epoch, global_step)
    bar = _progress(len(batches), f"Epoch {epoch}", progress)
    try:
        for i, (idx, xb) in enumerate(_batches(x, batches, gen, dist, normalize, augment_fn,
                                               batch_source)):
            yb = y[idx]
            loss, logits = train_step(
                model, xb, yb, optimizer=optimizer, amp=amp, params=model.parameters(),
                label_smoothing=label_smoothing, grad_clip=grad_clip, dynamics=dynamics,
                step=global_step + i, epoch=epoch)
            stepper.after_batch()
            if ema is not None:
                ema.update(model)
            last = i == len(batches) - 1
            run.add(loss, logits, yb, last)
            if progress:
                bar.update(1)
                if i % 10 == 0 or last:
                    bar.set_postfix_str(f"loss={loss.item():.4f} lr={current_lr(optimizer):.5f} "
                                        f"acc={100.0 * run.correct.item() / run.seen:.2f}",
                                        refresh=False)
    finally:
        bar.close()
    return run.result(dist, len(batches))

"""One epoch of training: the shuffled batches of the epoch through :func:`train_step`.

Loss and accuracy are summed on the device and read back only when the progress bar
refreshes (about once a second of wall time), so a GPU is not synchronised on every step.

An epoch can start part-way (``start_step``, a run resumed from a mid-epoch checkpoint): its
batches are drawn exactly as in an uninterrupted epoch, the augmentation of the steps already
done is replayed (computed and dropped, so the generator reaches the same state), and the
running sums continue from ``start_tally``. ``on_step`` is called after every step; the run
layer uses it to checkpoint and to stop (it may raise).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from classlab.augment.mixing import Mix, dominant_labels
from classlab.engine.batches import Normalizer, batch_indices
from classlab.engine.console import console
from classlab.engine.distributed import Dist
from classlab.engine.ema import Ema
from classlab.engine.errors import TrainingError
from classlab.engine.margins import ImageDynamics
from classlab.engine.step import StepRecipe, train_step
from classlab.optim import Stepper, current_lr

# (this rank's batches of indices, epoch generator) -> their augmented uint8 [B,3,H,W] images
BatchSource = Callable[[list[torch.Tensor], torch.Generator], Iterator[torch.Tensor]]
AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# (augmented batch, generator) -> (mixed batch, how it was mixed): mixup / CutMix
MixFn = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, Mix]]


# The bar's loss / LR / accuracy are read back (one GPU synchronisation) at most this often,
# seconds of wall time; a refresh then waits at most this long plus one step.
POSTFIX_SECONDS = 1.0


@dataclass
class Tally:
    """The running sums of an epoch's training steps (over all processes once reduced)."""

    loss_sum: float = 0.0  # sum of per-image cross-entropies (float64)
    correct: int = 0  # images classified correctly
    seen: int = 0  # images trained on


@dataclass
class EpochResult:
    loss: float  # mean per-sample cross-entropy over the epoch's (augmented) images
    acc: float  # percent correct, running over the epoch (the spec's "Training Accuracy");
    # under mixup / CutMix: the prediction is the mixed image's dominant label
    steps: int
    tally: Tally = field(default_factory=Tally)  # the sums loss and acc come from


@dataclass
class StepInfo:
    """What ``on_step`` learns after a step: ``step`` steps of ``steps`` are done."""

    epoch: int
    step: int
    steps: int
    tally: Callable[[], Tally]  # the sums so far, over all processes (every rank must call)


class _Running:
    """The epoch's running loss sum, correct count and images seen, on the device; and the
    finiteness check of the step losses (every step on CPU, where it is free; every 25 steps
    on CUDA, one synchronisation each)."""

    def __init__(self, device: torch.device, epoch: int, first_step: int,
                 start: Tally | None = None) -> None:
        start = start or Tally()
        self.loss_sum = torch.tensor(start.loss_sum, device=device, dtype=torch.float64)
        self.correct = torch.tensor(start.correct, device=device, dtype=torch.int64)
        self.seen = start.seen
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

    def tally(self, dist: Dist) -> Tally:
        """The sums over all processes (a collective call under torchrun); pending finiteness
        checks are done first, so a checkpoint never holds a step with a NaN loss."""
        if self.pending:
            self._check_finite()
        loss_sum, correct, seen = dist.sum(self.loss_sum, self.correct, torch.tensor(self.seen))
        return Tally(float(loss_sum.item()), int(correct.item()), int(seen.item()))

    def result(self, dist: Dist, steps: int) -> EpochResult:
        t = self.tally(dist)
        return EpochResult(t.loss_sum / t.seen, 100.0 * t.correct / t.seen, steps, t)


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    return console().bar(total, desc, initial=initial, mininterval=0.5, disable=not enabled)


Batch = tuple[torch.Tensor, torch.Tensor, Mix | None]


def _batches(x: torch.Tensor, batches: list[torch.Tensor], gen: torch.Generator, dist: Dist,
             normalize: Normalizer, augment_fn: AugmentFn, batch_source: BatchSource | None,
             mix_fn: MixFn | None = None) -> Iterator[Batch]:
    """(this rank's indices, normalised augmented images, how they were mixed or None) of
    each global batch. Every rank draws the same permutation and keeps its slice of each
    global batch. The mixing draws follow each batch's augmentation draws in the stream, so
    a replayed (resumed) epoch repeats them too."""
    shards = [dist.shard(idx) for idx in batches]
    if batch_source is not None:  # the albumentations workers made the images
        images = batch_source(shards, gen)
        mix_gen = dist.rank_generator(gen) if mix_fn is not None else gen
        for idx, xb in zip(shards, images):
            yield (idx, *_mixed(normalize(xb.to(x.device, non_blocking=True)), mix_fn, mix_gen))
        return
    aug_gen = dist.rank_generator(gen)
    for idx in shards:
        yield (idx, *_mixed(augment_fn(normalize(x[idx]), aug_gen), mix_fn, aug_gen))


def _mixed(xb: torch.Tensor, mix_fn: MixFn | None,
           gen: torch.Generator) -> tuple[torch.Tensor, Mix | None]:
    return (xb, None) if mix_fn is None else mix_fn(xb, gen)


def _record(margins: ImageDynamics, idx: torch.Tensor, logits: torch.Tensor, yb: torch.Tensor,
            mix: Mix | None) -> None:
    """The per-image training dynamics of the step's unmixed images only: a mixed image's
    logits describe two images, so it leaves its epoch's entry empty (NaN)."""
    if mix is None:
        margins.add(idx, logits, yb)
        return
    keep = mix.lam >= 1.0
    margins.add(idx[keep], logits[keep], yb[keep])


@dataclass
class EpochPlan:
    """What the epoch loop needs that stays the same from one epoch to the next."""

    net: nn.Module  # what the step calls (the model, or its DDP / compiled wrapper)
    recipe: StepRecipe  # optimizer, precision, label smoothing, clipping, dynamics
    stepper: Stepper  # the LR schedule (stepped after every batch when it is per batch)
    normalize: Normalizer  # uint8 images -> float batches in the run's memory format
    augment_fn: AugmentFn  # (normalised batch, generator) -> augmented batch
    batch_size: int  # images per step, global across processes
    ema: Ema | None = None
    dist: Dist = field(default_factory=Dist)
    # aug.backend=albumentations: called once with the epoch's batches of indices (this
    # rank's shards) and the epoch generator, it yields their augmented uint8 images, which
    # replace augment_fn(normalize(x[idx])); the batches, and so the shuffling, stay the same.
    batch_source: BatchSource | None = None
    # log.data_dynamics: every step's per-image margins etc., from the step's own logits
    margins: ImageDynamics | None = None
    # mixup / CutMix in this epoch (None: no mixing, or past aug.mix_off_epoch)
    mix_fn: MixFn | None = None


@dataclass
class EpochStart:
    """Where an epoch starts: its number and the run's step index of its first batch; an
    epoch continued after an interruption has ``done`` steps behind it, whose sums (this
    process's share) are ``tally``."""

    epoch: int
    first_step: int = 0
    done: int = 0
    tally: Tally | None = None


def train_one_epoch(plan: EpochPlan, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                    start: EpochStart, *, progress: bool = True,
                    on_step: Callable[[StepInfo], None] | None = None,
                    note: Callable[[], str] | None = None) -> EpochResult:
    """One pass over ``x`` (uint8 ``[N,3,H,W]`` on the device) in shuffled batches drawn from
    ``gen``, as ``plan`` says, from ``start``. A non-finite loss raises TrainingError naming
    the epoch and step. ``note()`` is appended to the progress bar (e.g. the run's ETA);
    ``on_step`` is called after every step."""
    p, epoch = plan, start.epoch
    p.net.train()
    batches = batch_indices(len(x), p.batch_size, gen)
    run = _Running(x.device, epoch, start.first_step + start.done, start.tally)
    stream = _batches(x, batches, gen, p.dist, p.normalize, p.augment_fn, p.batch_source,
                      p.mix_fn)
    for _ in itertools.islice(stream, start.done):  # replay: same generator state as before
        pass
    bar = _progress(len(batches), f"Epoch {epoch}", progress, initial=start.done)
    shown = float("-inf")  # when the bar's numbers were last read back (time.monotonic)
    try:
        for i, (idx, xb, mix) in enumerate(stream, start=start.done):
            yb = y[idx]
            loss, logits = train_step(p.net, xb, yb, p.recipe, step=start.first_step + i,
                                      epoch=epoch, mix=mix)
            p.stepper.after_batch()
            if p.ema is not None:
                p.ema.update(p.net)
            last = i == len(batches) - 1
            # under mixing, accuracy against each image's dominant label (weight >= 1/2)
            run.add(loss, logits, yb if mix is None else dominant_labels(yb, mix), last)
            if p.margins is not None:
                _record(p.margins, idx, logits, yb, mix)
            if progress:
                shown = _show(bar, shown, last, loss, p.recipe.optimizer, run, note)
            if on_step is not None:
                on_step(StepInfo(epoch, i + 1, len(batches), lambda: run.tally(p.dist)))
    finally:
        bar.close()
    return run.result(p.dist, len(batches))


def _show(bar, shown: float, last: bool, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
          run: _Running, note: Callable[[], str] | None) -> float:
    """Advance the bar; refresh its numbers when POSTFIX_SECONDS have passed (or at the end).
    Returns when they were last refreshed."""
    now = time.monotonic()
    if last or now - shown >= POSTFIX_SECONDS:
        text = (f"loss={loss.item():.4f} lr={current_lr(optimizer):.5f} "
                f"acc={100.0 * run.correct.item() / run.seen:.2f}")
        bar.set_postfix_str(f"{text} {note()}" if note is not None else text, refresh=False)
        shown = now
    bar.update(1)
    return shown

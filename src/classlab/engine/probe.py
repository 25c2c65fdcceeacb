"""Which precision and memory format train fastest here: measured, never assumed.

CPUs differ by an order of magnitude in bfloat16: without bf16 instructions (AVX2-only,
e.g. AMD Zen 3) a bf16-autocast step was ~20x slower than fp32; with AVX-512 BF16 (Zen 4/5)
or AMX (Intel Sapphire Rapids and later) it was 1.5-2.6x faster, and channels_last helped
oneDNN's convolutions on some machines and not on others (bench/README.md). So
``train.precision: auto`` and ``train.channels_last: auto`` time a few real training steps of
the configured model and batch in every candidate and keep the fastest.

How one probe runs (:func:`probe`):

1. Screen: two steps per candidate on an eighth of the batch, the second one timed (the
   first pays for the process's and the kernels' first use: on the dev machine the very
   first step of a process was 3x slower than the next); a candidate more than
   ``SCREEN_RATIO`` slower per image than the best is dropped (bf16 without bf16 units costs
   ~20x: a small step shows it, without paying a full step of it).
2. Time: per surviving candidate, likely fastest first, one warm-up step at the full batch
   (oneDNN creates its kernels for the shapes there; a candidate whose warm-up already takes
   ``WARMUP_RATIO`` times the best steady step is dropped), then up to ``steps`` timed
   steps; a candidate stops as soon as its fastest step is ``SLOWER_RATIO`` slower than the
   best candidate's median.

Every step is a real training step (:func:`classlab.engine.step.train_step`) of a throwaway
copy of the model with its own optimizer, on real training images, inside a forked RNG: the
run's weights, optimizer state and random streams are untouched, so a probed run trains
bit-identically to one told the answer.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from classlab.engine.amp import Amp
from classlab.engine.batches import Normalizer
from classlab.engine.step import StepRecipe, train_step

SCREEN_RATIO = 3.0  # screening step this much slower per image than the best: dropped
SLOWER_RATIO = 1.25  # a timed step this much slower than the best median: stop timing it
# A warm-up step (first use at the full batch: slower than a steady one, ~1-2x on the dev
# machine) this much slower than the best steady step: no timed step is needed to drop it.
WARMUP_RATIO = 2.0


@dataclass(frozen=True)
class Candidate:
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool

    @property
    def name(self) -> str:
        return self.precision + ("+channels_last" if self.channels_last else "")


@dataclass
class ProbeResult:
    """The fastest candidate and what was measured: images per second of each candidate's
    timed steps (median), or of its screening step when it was dropped there."""

    best: Candidate
    rates: dict[str, float]  # candidate name -> images/s
    stopped: dict[str, str] = field(default_factory=dict)  # candidate name -> why it stopped
    seconds: float = 0.0  # wall time of the whole probe


# (candidate, one training step) -> seconds that step took; tests inject their own.
Timer = Callable[[Candidate, Callable[[], None]], float]


def wall_timer(device: torch.device) -> Timer:
    """Wall seconds of one step; on CUDA the queue is drained before and after."""
    def timer(_c: Candidate, step: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t
    return timer


StepMaker = Callable[[Candidate, int], Callable[[], None]]  # (candidate, batch) -> one step


def probe(candidates: Sequence[Candidate], make_step: StepMaker, batch: int, *, timer: Timer,
          steps: int = 3) -> ProbeResult:
    """The fastest of ``candidates``. ``make_step(candidate, batch)`` returns a zero-argument
    callable that runs one training step of ``batch`` images in that candidate."""
    t0 = time.perf_counter()
    if len(candidates) == 1:
        return ProbeResult(candidates[0], {})
    rates, stopped = {}, {}
    small = max(2, batch // 16 * 2)  # an eighth, even
    screen = {c: _second_step(c, make_step(c, small), timer) / small for c in candidates}
    fastest = min(screen.values())
    alive = []
    for c in candidates:
        if screen[c] > SCREEN_RATIO * fastest:
            rates[c.name] = 1.0 / screen[c]
            stopped[c.name] = (f"{screen[c] / fastest:.1f}x slower than the best in the "
                               f"screening step ({small} images)")
        else:
            alive.append(c)
    best_median = float("inf")
    medians: dict[Candidate, float] = {}
    for c in sorted(alive, key=screen.get):  # likely fastest first: later ones stop sooner
        step = make_step(c, batch)
        warm = timer(c, step)  # warm-up: kernel selection for the full batch's shapes
        if warm > WARMUP_RATIO * best_median:
            rates[c.name] = batch / warm
            stopped[c.name] = (f"warm-up step {warm / best_median:.1f}x the best candidate's "
                               "steady step")
            continue
        times = []
        for _ in range(steps):
            times.append(timer(c, step))
            if min(times) > SLOWER_RATIO * best_median:
                stopped[c.name] = (f"{min(times) / best_median:.2f}x slower than the best "
                                   f"after {len(times)} timed step(s)")
                break
        medians[c] = statistics.median(times)
        rates[c.name] = batch / medians[c]
        best_median = min(best_median, medians[c])
    best = min(medians, key=medians.get)
    return ProbeResult(best, rates, stopped, time.perf_counter() - t0)


def _second_step(c: Candidate, step: Callable[[], None], timer: Timer) -> float:
    timer(c, step)  # untimed: first use of this candidate's kernels at this shape
    return timer(c, step)


@dataclass
class TrainSample:
    """Training images a probe steps on, and how the run normalises them."""

    x: torch.Tensor  # uint8 [N,3,H,W] on the run's device
    y: torch.Tensor  # [N] int64 labels
    mean: Sequence[float]  # per channel, in [0, 1]
    std: Sequence[float]


def training_step_maker(model: nn.Module,
                        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                        sample: TrainSample, device: torch.device,
                        label_smoothing: float = 0.0) -> StepMaker:
    """``make_step`` for :func:`probe` from a run's model and optimizer recipe: each
    candidate trains its own deep copy of ``model`` (in the candidate's memory format, with a
    fresh optimizer from ``make_optimizer``) on the first ``batch`` of the sample's images
    (repeated when there are fewer), normalised as the run does. ``make_step(c, batch,
    wrap)``: the step calls ``wrap(copy)`` instead of the copy (torch.compile for the
    compile probe, :mod:`classlab.engine.compiling`); the optimizer steps the copy's
    parameters either way."""
    images, labels, mean, std = sample.x, sample.y, sample.mean, sample.std

    def make_step(c: Candidate, batch: int,
                  wrap: Callable[[nn.Module], nn.Module] | None = None) -> Callable[[], None]:
        reps = -(-batch // len(images))
        idx = torch.arange(batch, device=images.device) % len(images) if reps > 1 else slice(batch)
        net = copy.deepcopy(model).train()
        if c.channels_last:
            net = net.to(memory_format=torch.channels_last)
        opt = make_optimizer(net)
        amp = Amp(device.type, c.precision)
        xb = Normalizer(tuple(mean), tuple(std), device, c.channels_last)(images[idx])
        yb = labels[idx]
        recipe = StepRecipe(opt, amp, label_smoothing)
        called = wrap(net) if wrap is not None else net

        def step() -> None:
            train_step(called, xb, yb, recipe)
        return step
    return make_step


def isolated(devices: Sequence[torch.device]):
    """A context in which random draws do not advance the process's RNG streams (CPU and the
    given CUDA devices): the probe's steps may draw (dropout, a sampler), the run's may not
    notice."""
    cuda = [d.index or 0 for d in devices if d.type == "cuda"]
    return torch.random.fork_rng(devices=cuda)

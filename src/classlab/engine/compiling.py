"""``train.compile: auto``: torch.compile a run's network only where it pays for itself.

Compiling costs time once (tracing, code generation, a C++ or Triton compile: 30 s to minutes
on a 2-core CPU, see bench/README.md) and may save time on every training step after it. Which
wins depends on the model, batch, precision, memory format, machine and, above all, on how
many steps the run takes, so ``auto`` decides per run, in three stages, cheapest first:

1. **Cache**: the step times and compile time measured earlier on this machine for the same
   model, batch, precision, layout and torch version (``speed.json``, next to the precision
   choice; :mod:`classlab.engine.precision`). The numbers do not depend on the run's length,
   so a 1-epoch smoke test and a 40-epoch run share them and each gets its own answer.
2. **Bound**: without compiling anything, no compile can save more than the whole eager step.
   When even a 100% saving, ``eager step x steps``, is below ``COMPILE_MARGIN`` times the
   compile time a run would pay at least (``COMPILE_ESTIMATE_S`` per batch shape), the answer
   is no and nothing is compiled. This is what keeps a smoke test from paying a compile to
   learn that it should not compile; what it can miss is bounded by that same estimate.
3. **Probe**: compile a throwaway copy of the model (as the run would), time its first step
   (the compilation) and then eager and compiled steps in alternation
   (``TIMED_PAIRS`` of each: a shared machine's load drifts, alternation exposes both to the
   same drift), keeping the fastest of each: other processes only ever add time, and on the
   shared 2-core dev machine (load ~5) two of three identical eager steps took 8 s where the
   third took 1.2 s, which moves a median but not a minimum. Compile iff ``saving per step
   x steps > COMPILE_MARGIN x compile time x batch shapes``. In the same process the run's
   own compile then reuses what the probe compiled (torch's compiled-code cache is per model
   class and shapes), so a "yes" does not pay the compilation twice.

A failing compile (no C++ compiler for the CPU backend, an unsupported op) is no: the run
trains eagerly and the reason is the failure's first line, never a traceback. Failures are
not cached, so installing a compiler takes effect on the next run.

The margin: with ``COMPILE_MARGIN = 1.25`` a run compiles only when it gains at least a
quarter more than the compile costs. The saving is a difference of two minima of three
steps on a machine others may share (where step times drift by more than the saving of a
marginal case), a compile from a cold cache may take longer than the measured one, and
near break-even the two choices cost the same time; the eager path is then preferred, being
the numerical reference (compiled kernels round differently: see tests/test_compile_auto.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from classlab.fmt import duration, number

COMPILE_MARGIN = 1.25  # compile only when the saving beats 1.25x the compile cost (see above)
# What a run's compile costs, per batch shape, before one was measured here (seconds): the
# smallest cold compile measured on the 2-core dev machines (torch 2.13 inductor, fastnet
# width 24: 30 s on an idle Zen 3; 102 s, and ResNet18 114 s, on a Zen 4 at load 6-8;
# bench/README.md). From a warm on-disk cache (the same graph compiled before on this
# machine) a compile took 1-17 s, so the bound can refuse a run that a warm compile would
# have sped up: one whose whole eager training is under 1.25 x 30 s per batch shape (37.5 s,
# or 75 s with a smaller last batch). Even a 20% saving of 75 s is 15 s lost at most, where a
# probe that finds "no" costs a cold compile, one to two minutes.
COMPILE_ESTIMATE_S = 30.0
TIMED_PAIRS = 3  # eager and compiled steps timed in alternation after the compilation

# (what is timed: "eager" | "compile" (first compiled step) | "compiled", one step) -> seconds
StepTimer = Callable[[str, Callable[[], None]], float]


def compile_module(net: nn.Module) -> nn.Module:
    """The one way classlab compiles a network, for the probe and the run alike (so the run
    reuses the probe's compiled code). Static shapes: a run has two batch sizes at most (the
    full batch and a smaller last one), each gets its own specialised kernels, and the full
    batch keeps the kernels the probe timed (with dynamic shapes a second size recompiled
    everything as size-generic code, which then served every batch)."""
    return torch.compile(net, dynamic=False)


@dataclass
class CompileChoice:
    """Whether the run's training step is compiled, why, and what was measured."""

    use: bool
    how: str  # config | bound | probe | cache | failed | recorded
    why: str  # the reason, e.g. "saves 0.05 s/step x 440 steps = 22 s < 1.25 x 61 s ..."
    steps: int = 0  # training steps of the run the decision was made for
    shapes: int = 1  # batch shapes the run compiles (2 when the last batch is smaller)
    # seconds per step at the run's batch: eager (the compile probe's fastest, else the
    # precision probe's median) and compiled (fastest); the compile: first compiled step
    # less the fastest compiled one
    eager_s: float | None = None
    compiled_s: float | None = None
    compile_s: float | None = None
    probe_seconds: float = 0.0  # wall time this decision cost here (0: cache, config, record)

    def line(self) -> str:
        return f"compile: {'yes' if self.use else 'no'} ({self.why})"

    def measured(self) -> dict[str, float]:
        """The numbers a cache entry keeps (they do not depend on the run's length)."""
        return {"eager_s": self.eager_s, "compiled_s": self.compiled_s,
                "compile_s": self.compile_s}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CompileChoice:
        def num(k: str) -> float | None:
            return float(d[k]) if d.get(k) is not None else None
        return cls(bool(d["use"]), str(d.get("how", "recorded")), str(d.get("why", "")),
                   int(d.get("steps", 0)), int(d.get("shapes", 1)), num("eager_s"),
                   num("compiled_s"), num("compile_s"), float(d.get("probe_seconds", 0.0)))


def batch_shapes(n: int, batch: int) -> int:
    """Batch sizes an epoch of ``n`` images in batches of ``batch`` trains on: 2 when the last
    batch is smaller (a last batch of one image is dropped, see engine.batches)."""
    return 2 if n > batch and n % batch > 1 else 1


def configured(setting: bool) -> CompileChoice:
    return CompileChoice(setting, "config", f"train.compile: {str(setting).lower()}")


def bound(eager_s: float, steps: int, shapes: int) -> CompileChoice | None:
    """No, without compiling, when even a 100% saving could not pay for the compile(s);
    None when only a measurement can tell."""
    most = eager_s * steps
    least_cost = COMPILE_ESTIMATE_S * shapes
    if most >= COMPILE_MARGIN * least_cost:
        return None
    why = (f"even a 100% saving of the {number(eager_s, 2)} s eager step x {steps:,} steps = "
           f"{duration(most)} < {COMPILE_MARGIN:g} x {_cost(least_cost, shapes, '~')}; "
           "not compiled to check")
    return CompileChoice(False, "bound", why, steps, shapes, eager_s)


def decide(eager_s: float, compiled_s: float, compile_s: float, steps: int, shapes: int,
           how: str = "probe") -> CompileChoice:
    """Compile iff the saving over the run's ``steps`` beats ``COMPILE_MARGIN`` x the compile
    time of its ``shapes`` batch shapes."""
    saving, cost = eager_s - compiled_s, compile_s * shapes
    if saving <= 0:
        use = False
        why = (f"a compiled step is not faster: {number(compiled_s, 3)} s vs "
               f"{number(eager_s, 3)} s eager")
    else:
        use = saving * steps > COMPILE_MARGIN * cost
        why = (f"saves {number(saving, 2)} s/step x {steps:,} steps = "
               f"{duration(saving * steps)} {'>' if use else '<'} {COMPILE_MARGIN:g} x "
               f"{_cost(cost, shapes)}")
    return CompileChoice(use, how, why, steps, shapes, eager_s, compiled_s, compile_s)


def _cost(cost: float, shapes: int, approx: str = "") -> str:
    if shapes == 1:
        return f"{approx}{duration(cost)} to compile"
    return (f"{approx}{duration(cost)} to compile ({shapes} batch shapes, the last batch is "
            "smaller)")


def measure(eager_step: Callable[[], None], compiled_step: Callable[[], None],
            timer: StepTimer, steps: int, shapes: int) -> CompileChoice:
    """The probe (stage 3): time the compiled step's first call, then ``TIMED_PAIRS`` eager
    and compiled steps in alternation; any exception there means no (the reason kept)."""
    t0 = time.perf_counter()
    try:
        first = timer("compile", compiled_step)
        eager, compiled = [], []
        for _ in range(TIMED_PAIRS):
            eager.append(timer("eager", eager_step))
            compiled.append(timer("compiled", compiled_step))
    except Exception as e:  # noqa: BLE001 - any failure of torch.compile means: train eagerly
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        why = (f"torch.compile failed in the probe ({type(e).__name__}"
               f"{': ' + first_line if first_line else ''}); training eagerly")
        return CompileChoice(False, "failed", why, steps, shapes,
                             probe_seconds=time.perf_counter() - t0)
    c_s = min(compiled)
    choice = decide(min(eager), c_s, max(0.0, first - c_s), steps, shapes)
    choice.probe_seconds = time.perf_counter() - t0
    return choice

"""What ``train.compile: auto`` measures and decides for a recipe, on this machine.

For each recipe (default: the spec's ResNet18 at 40 epochs and experiments/fast.yaml) this
runs the run's own speed choice (:func:`classlab.engine.precision.choose_speed`: the
precision / layout probe where the recipe leaves them on auto, then the compile probe) on
synthetic uint8 batches of the run's shape (timing does not depend on the pixels), for the
run's number of steps, with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR`` is set to a
fresh folder before torch is imported: the compile timed is a cold one). Then it compiles the
same network again after ``torch._dynamo.reset()`` (torch forgets the compiled code but its
on-disk cache stays: a warm compile, what a later process on this machine pays) and prints
the decision for the full run and for a 1-epoch smoke test of the same recipe, and what the
no-compile bound says about the smoke test (:func:`classlab.engine.compiling.bound`).

Eager and compiled steps are timed alternately in one process (the probe's pairs), so their
ratio holds on a shared machine even when the absolute times drift.

    .venv/bin/python bench/compile_auto.py                       # resnet18_bn_onecycle, fast
    .venv/bin/python bench/compile_auto.py --recipes fast train.precision=fp32
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-cold-"))
os.environ.setdefault("CLASSLAB_CACHE", tempfile.mkdtemp(prefix="classlab-bench-cache-"))

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cifar10_train_images, load1, machine_line  # noqa: E402

from classlab import config  # noqa: E402
from classlab.engine import Normalizer, steps_per_epoch  # noqa: E402
from classlab.engine.compiling import bound, compile_module, decide  # noqa: E402
from classlab.engine.precision import choose_speed, cpu_flags  # noqa: E402
from classlab.engine.probe import Candidate, TrainSample, training_step_maker  # noqa: E402
from classlab.models import build_model  # noqa: E402
from classlab.optim import build_optimizer  # noqa: E402
from classlab.run.session import default_threads  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # CIFAR-10-like; only the timing matters


def _inputs(cfg: config.Config, n: int) -> tuple[torch.nn.Module, TrainSample, int]:
    torch.manual_seed(0)
    batch = cfg.train.batch_size
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    model = build_model(cfg.model, 10)
    if hasattr(model, "init_from_data"):  # fastnet's whitening layer, as the session does
        model.init_from_data(Normalizer(MEAN, STD, torch.device("cpu"))(x))
    # the whole split is only counted (steps, batch shapes): repeat the one batch
    sample = TrainSample(x.expand(n // batch + 1, *x.shape).reshape(-1, *x.shape[1:])[:n],
                         torch.randint(0, 10, (n,)), MEAN, STD)
    return model, sample, batch


def _warm_compile(cfg, model, sample, speed, batch: int) -> float:
    """Seconds of the first compiled step after torch forgets its compiled code, less a
    compiled step: the compile a later process pays when the on-disk cache holds it."""
    torch._dynamo.reset()
    make = training_step_maker(model, lambda net: build_optimizer(net, cfg.optim),
                               TrainSample(sample.x[:batch], sample.y[:batch], MEAN, STD),
                               torch.device("cpu"), cfg.train.label_smoothing)
    step = make(Candidate(speed.precision, speed.channels_last), batch, compile_module)
    times = []
    for _ in range(4):  # the compiling step, then 3 compiled ones
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times[0] - sorted(times[1:])[1]


def bench(recipe: str, overrides: list[str]) -> None:
    cfg = config.load(recipe, ["train.compile=auto", *overrides])
    n = cifar10_train_images(cfg.data.val_split)
    model, sample, batch = _inputs(cfg, n)
    per_epoch = steps_per_epoch(n, batch)
    steps = cfg.train.epochs * per_epoch
    print(f"\n{cfg.name}: {cfg.model.name} width {cfg.model.width}, batch {batch}, "
          f"{cfg.train.epochs} epochs x {per_epoch} steps = {steps:,} steps; load {load1():.2f}",
          flush=True)
    t = time.perf_counter()
    speed = choose_speed(cfg, model, sample, torch.device("cpu"), steps=steps)
    c = speed.compile
    print(f"  speed choice ({time.perf_counter() - t:.0f} s): {speed.line()}")
    if c.how != "probe":
        print(f"  no compile measured ({c.how}); load {load1():.2f}")
        return
    warm = _warm_compile(cfg, model, sample, speed, batch)
    smoke = decide(c.eager_s, c.compiled_s, c.compile_s, per_epoch, c.shapes)
    smoke_bound = bound(c.eager_s, per_epoch, c.shapes)
    print(f"  eager {c.eager_s:.3f} s/step, compiled {c.compiled_s:.3f} s/step "
          f"(ratio {c.compiled_s / c.eager_s:.3f}, saving {c.eager_s - c.compiled_s:.3f} s/step)")
    print(f"  compile: cold {c.compile_s:.1f} s (the probe's), warm {warm:.1f} s (on-disk "
          f"cache), x {c.shapes} batch shape(s); probe took {c.probe_seconds:.0f} s")
    print(f"  {cfg.train.epochs} epochs: {c.line()}")
    print(f"  1 epoch:  {smoke.line()}")
    print(f"  1 epoch, bound only: "
          f"{smoke_bound.line() if smoke_bound else 'cannot say no: the probe would run'}; "
          f"load {load1():.2f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="resnet18_bn_onecycle,fast",
                    help="recipe names or YAML files, comma-separated")
    ap.add_argument("overrides", nargs="*", help="key=value for every recipe")
    args = ap.parse_args()
    torch.set_num_threads(default_threads())
    print(machine_line())
    print(f"cpu flags: {' '.join(cpu_flags())}; "
          f"inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}")
    for recipe in args.recipes.split(","):
        bench(recipe, args.overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""classlab's ResNet18 epoch vs the spec library's own ResNet18, in one process.

The baseline is ``../shared/baselines/seed_resnet.py`` (``ResNet18("BN")``: its ``layer2``
has stride 1, so its last three stages run at 32/16/8 px) trained the way the spec trained
it: float32, contiguous, Adam (lr 1e-3), batch 128, cross-entropy. classlab's side is
``resnet18/bn`` at batch 128 with Adam, in the precision and memory format classlab itself
picks on this machine (:func:`classlab.engine.precision.choose_speed`: measured, or cached), through
classlab's own training step (``engine.step.train_step``).

A CPU epoch takes minutes, so both are timed for ``--steps`` steps after ``--warmup``
untimed ones, interleaved (A, B, A, B, ...: load changes hit both) and the epoch time is
EXTRAPOLATED: median seconds per step x steps per epoch (45,000 images, batch 128).
The images are random (timing does not depend on pixel values).

    .venv/bin/python bench/spec_resnet.py [--steps 6] [--batch 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load1, machine_line  # noqa: E402

from classlab import config  # noqa: E402
from classlab.engine import Amp, Normalizer, StepRecipe, train_step  # noqa: E402
from classlab.engine.precision import choose_speed, cpu_flags  # noqa: E402
from classlab.engine.probe import TrainSample  # noqa: E402
from classlab.models import build_model  # noqa: E402
from classlab.optim import build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def baseline_step(path: Path, batch: int):
    spec = importlib.util.spec_from_file_location("seed_resnet", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.ResNet18("BN").train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, sum(p.numel() for p in net.parameters())


def classlab_step(batch: int):
    cfg = config.load(None, ["model.name=resnet18", "model.norm=bn", "optim.name=adam",
                             "optim.lr=0.001", "optim.weight_decay=0", f"train.batch_size={batch}"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 10).train()
    x_u8 = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (batch,))
    speed = choose_speed(cfg, net, TrainSample(x_u8, y, MEAN, STD), torch.device("cpu"))
    if speed.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(net, cfg.optim)
    amp = Amp("cpu", speed.precision)
    xb = Normalizer(MEAN, STD, torch.device("cpu"), speed.channels_last)(x_u8)
    recipe = StepRecipe(opt, amp)

    def step() -> None:
        train_step(net, xb, y, recipe)
    return step, sum(p.numel() for p in net.parameters()), speed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=str(ROOT.parent / "shared" / "baselines" /
                                              "seed_resnet.py"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=45_000)
    args = ap.parse_args()
    print(machine_line())
    print(f"cpu flags (speed-relevant): {' '.join(cpu_flags()) or '-'}")
    base, base_params = baseline_step(Path(args.baseline), args.batch)
    ours, our_params, speed = classlab_step(args.batch)
    print(f"baseline: seed_resnet.ResNet18('BN'), {base_params:,} params, fp32, contiguous, "
          f"Adam, batch {args.batch}")
    print(f"classlab: resnet18/bn, {our_params:,} params, {speed.line()}")
    for _ in range(args.warmup):
        base()
        ours()
    times = {"baseline": [], "classlab": []}
    for _ in range(args.steps):
        for name, fn in (("baseline", base), ("classlab", ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    n = math.ceil(args.train_images / args.batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("baseline", "classlab"):
        print(f"{k:9s} s/step median {med[k]:.3f} (min {min(times[k]):.3f}, max "
              f"{max(times[k]):.3f}); epoch of {args.train_images} images ~{med[k] * n:.0f} s "
              "(extrapolated)")
    print(f"epoch-time ratio classlab / baseline: {med['classlab'] / med['baseline']:.3f} "
          f"(goal <= 0.15); load {load1():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training-loop overhead: classlab's ``train_one_epoch`` vs a bare PyTorch loop.

Both run the same model (same initial weights, reset before every pass), the same uint8 data
already on the device, the same batch size and the same per-batch normalisation; classlab
runs with no augmentation, no progress bar, no dynamics logger and no EMA, the bare loop is
gather -> normalise -> forward -> cross-entropy -> backward -> SGD step. Passes alternate
(bare, classlab, classlab, bare, ...) and the ratio of medians is printed, of wall time and
of CPU time (with ``--threads 1`` the CPU ratio is the robust one on a shared machine: it
does not count time other processes held the core). Goal: <= 1.03.

    .venv/bin/python bench/overhead.py [--model fastnet --width 24 --batch 512 --images 4096]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu, interleaved, load1, machine_line, wall  # noqa: E402

from classlab.config import ModelConfig, OptimConfig, SchedConfig  # noqa: E402
from classlab.engine import (  # noqa: E402
    Amp,
    EpochPlan,
    EpochStart,
    Normalizer,
    StepRecipe,
    batch_indices,
    epoch_generator,
    train_one_epoch,
)
from classlab.models import build_model  # noqa: E402
from classlab.optim import build_optimizer, build_scheduler  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fastnet")
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--images", type=int, default=4096, help="images per pass (one 'epoch')")
    ap.add_argument("--repeats", type=int, default=6, help="passes of each loop")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    # uint8 images [N,3,32,32] and labels [N], on the device like classlab keeps them
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (args.images,), device=device)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    normalize = Normalizer(mean, std, device, args.channels_last)
    model = build_model(ModelConfig(name=args.model, width=args.width), 10).to(device)
    if hasattr(model, "init_from_data"):
        model.init_from_data(normalize(x[:1000]))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    init_state = copy.deepcopy(model.state_dict())
    ocfg = OptimConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = build_optimizer(model, ocfg)
    stepper = build_scheduler(opt, SchedConfig(name="none"), 1, 1)
    amp = Amp(device.type, "fp32")
    m255 = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    s255 = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    epoch = [0]

    def reset() -> None:
        model.load_state_dict(init_state)
        opt.state.clear()

    def bare() -> None:
        reset()
        model.train()
        gen = epoch_generator(0, epoch[0], device)
        for idx in batch_indices(len(x), args.batch, gen):
            xb = (x[idx].float() - m255) / s255
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch[0] += 1

    def classlab() -> None:
        reset()
        gen = epoch_generator(0, epoch[0], device)
        plan = EpochPlan(model, StepRecipe(opt, amp), stepper, normalize, lambda xb, g: xb,
                         args.batch)
        train_one_epoch(plan, x, y, gen, EpochStart(epoch[0]), progress=False)
        epoch[0] += 1

    print(machine_line())
    print(f"model {args.model} width {args.width}, batch {args.batch}, {args.images} images "
          f"per pass, channels_last={args.channels_last}, {args.repeats} passes each")
    bare()  # warm-up: oneDNN primitive caches, allocator
    classlab()
    times = interleaved({"bare": bare, "classlab": classlab}, args.repeats)
    steps = len(batch_indices(len(x), args.batch, None))
    for what, f in (("wall", wall), ("CPU", cpu)):
        tb, tc = f(times["bare"]), f(times["classlab"])
        print(f"{what:4s}: bare loop {tb:.3f} s/pass ({1e3 * tb / steps:.1f} ms/step), "
              f"train_one_epoch {tc:.3f} s/pass ({1e3 * tc / steps:.1f} ms/step) -> ratio "
              f"classlab / bare = {tc / tb:.3f} (goal <= 1.03), per-step overhead "
              f"{1e3 * (tc - tb) / steps:+.1f} ms")
    print(f"load now {load1():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

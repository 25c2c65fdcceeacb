"""Epoch time of a model per precision / memory format / compile, on this machine.

On a CPU a full epoch takes far too long to time for every variant, so each variant runs
``--steps`` timed training steps (after one untimed warm-up step, which for ``compile`` is
where compilation happens and is reported separately) and the epoch time is EXTRAPOLATED:
median seconds per step x steps per epoch (45,000 training images: CIFAR-10 less the
default 10% validation split). Variants:

  fp32       float32, contiguous (NCHW)
  fp32_cl    float32, channels_last
  bf16       bfloat16 autocast (classlab's train.precision=bf16), NCHW
  bf16_cl    bfloat16 autocast, channels_last
  compile    float32, channels_last, torch.compile (inductor; needs a C++ compiler)

    .venv/bin/python bench/precision.py [--model resnet18 --width 64 --batch 128]
    .venv/bin/python bench/precision.py --model fastnet --width 24 --batch 512
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load1, machine_line  # noqa: E402

from classlab.config import ModelConfig  # noqa: E402
from classlab.engine import Amp  # noqa: E402
from classlab.models import build_model  # noqa: E402

VARIANTS = {  # name -> (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "fp32_cl": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16_cl": ("bf16", True, False),
    "compile": ("fp32", True, True),
}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    precision, cl, comp = VARIANTS[name]
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    model = build_model(ModelConfig(name=args.model, width=args.width), 10)
    if hasattr(model, "init_from_data"):
        model.init_from_data(x)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9, nesterov=True)
    amp = Amp("cpu", precision)
    fwd = torch.compile(model) if comp else model

    def step() -> None:
        with amp.autocast():
            loss = F.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    step()  # warm-up (compilation for "compile")
    first = time.perf_counter() - t
    steps = args.bf16_steps if precision == "bf16" else args.steps
    times, cpus = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    per_step = statistics.median(times)
    n_steps = math.ceil(args.train_images / args.batch)
    return {"name": name, "first": first, "step": per_step, "epoch": per_step * n_steps,
            "cpu_epoch": statistics.median(cpus) * n_steps, "n": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--bf16-steps", type=int, default=1,
                    help="timed steps for bf16 variants (very slow without bf16 hardware)")
    ap.add_argument("--train-images", type=int, default=45_000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"{args.model} width {args.width}, batch {args.batch}; epoch = {args.train_images} "
          "images, EXTRAPOLATED from the median of the timed steps")
    print("(wall: seconds as measured; CPU: this process's CPU seconds, which with --threads 1 "
          "do not count other processes' load)")
    print(f"{'variant':10s} {'warm-up s':>10s} {'s/step':>9s} {'epoch s (extrap.)':>18s} "
          f"{'vs fp32':>8s} {'CPU epoch s':>12s} {'vs fp32':>8s} {'steps':>6s} {'load':>5s}")
    base = None
    for name in args.variants.split(","):
        try:
            r = run_variant(name, args)
        except Exception as e:  # e.g. compile without a working C++ toolchain
            print(f"{name:10s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        if name == "fp32":
            base = (r["epoch"], r["cpu_epoch"])
        rel = f"{r['epoch'] / base[0]:.2f}x" if base else "-"
        crel = f"{r['cpu_epoch'] / base[1]:.2f}x" if base else "-"
        print(f"{name:10s} {r['first']:10.2f} {r['step']:9.3f} {r['epoch']:18.0f} {rel:>8s} "
              f"{r['cpu_epoch']:12.0f} {crel:>8s} {r['n']:6d} {load1():5.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""FLOPs of a recipe's run, and the fraction of this machine's convolution rate it reaches.

Counts (torch's ``FlopCounterMode``: a multiply-add is 2 FLOPs; matmuls and convolutions
only, elementwise work is not counted) for the recipe's model on 32x32 images:

- forward FLOPs per image;
- training FLOPs per image: one forward and backward with the run's trainable parameters
  (fastnet's frozen whitening layer needs no input gradient for block1's first conv);
- per run: ``epochs x training images x train FLOPs`` plus the final evaluation
  (``10,000 x forward x views``, the views per image of the run's ``train.tta`` and
  ``train.tta_fraction``: 6 for flip_translate, 1 + 5 x 0.2 = 2 on the least confident 20%).

Then times one 3x3 convolution forward of each shape the net uses (bf16 autocast and
channels_last by default, as the fast recipes run on a bf16-capable CPU), batch 256, and
prints each rate in TFLOP/s: the FLOP-weighted rate over the net's convolutions is the
machine's ceiling for this net. With ``--run RUN_DIR`` it reads the run's wall time and
epochs from summary.json and prints the achieved rate and its fraction of that ceiling.

    .venv/bin/python bench/flops.py --config experiments/fast94.yaml
    .venv/bin/python bench/flops.py --config experiments/fast94.yaml --run runs/fast94-...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cifar10_train_images, machine_line  # noqa: E402

from classlab import config  # noqa: E402
from classlab.engine.evaluate import TTA  # noqa: E402
from classlab.models import build_model  # noqa: E402

TEST_IMAGES = 10_000


def counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def per_image_flops(model: nn.Module, n: int = 8) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image, from a batch of ``n``."""
    x = torch.randn(n, 3, 32, 32)
    model.train()
    fwd = counted(lambda: model(x))
    train = counted(lambda: model(x).float().logsumexp(1).sum().backward())
    return fwd / n, train / n


def conv_shapes(model: nn.Module) -> list[tuple[nn.Conv2d, tuple[int, int, int]]]:
    """Every Conv2d with the input shape ``(C, H, W)`` it sees on a 32x32 image."""
    shapes: list[tuple[nn.Conv2d, tuple[int, int, int]]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: shapes.append((mod, tuple(a[0].shape[1:]))))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def conv_rate(conv: nn.Conv2d, shape: tuple[int, int, int], batch: int, bf16: bool,
              channels_last: bool, seconds: float = 2.0) -> tuple[float, float]:
    """(FLOPs of one forward call, FLOP/s) of ``conv`` on a ``[batch, *shape]`` input."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, *shape).to(memory_format=fmt)
    c = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, bias=conv.bias is not None).to(memory_format=fmt)
    def once() -> None:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            c(x)

    flops = counted(once)
    once()  # warm-up (oneDNN primitive creation)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        once()
        n += 1
    return flops, flops * n / (time.perf_counter() - t0)


def views_per_image(cfg: config.Config) -> float:
    """Forward passes per test image of the final evaluation: the plain view for all, the
    other views of ``train.tta`` for the least confident ``train.tta_fraction``."""
    n = len(TTA[cfg.train.tta](torch.zeros(1, 3, 4, 4)))
    return 1 + (n - 1) * min(1.0, cfg.train.tta_fraction)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides for the config")
    ap.add_argument("--config", default="experiments/fast94.yaml")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--fp32", action="store_true", help="time fp32 instead of bf16 autocast")
    ap.add_argument("--run", help="a finished run folder: its achieved FLOP rate")
    args = ap.parse_args()
    cfg = config.load(args.config, args.overrides)
    print(machine_line())
    model = build_model(cfg.model, 10)
    fwd, train = per_image_flops(model)
    images = cifar10_train_images(cfg.data.val_split)
    views = views_per_image(cfg)
    epoch, evaluation = images * train, views * TEST_IMAGES * fwd  # FLOPs
    run = cfg.train.epochs * epoch + evaluation
    print(f"{args.config}: forward {fwd / 1e9:.3f} GFLOPs/image, training step "
          f"{train / 1e9:.3f} GFLOPs/image; {cfg.train.epochs} epochs x {images:,} images + "
          f"{views:g} views x {TEST_IMAGES:,} test images = {run / 1e15:.3f} PFLOPs")
    total_flops = total_s = 0.0
    for conv, shape in conv_shapes(model):
        f, rate = conv_rate(conv, shape, args.batch, not args.fp32, cfg.train.channels_last
                            is not False)
        total_flops += f
        total_s += f / rate
        print(f"  conv {conv.in_channels:>4}->{conv.out_channels:<4} k{conv.kernel_size[0]} "
              f"on {shape[1]}x{shape[2]}: {rate / 1e12:.3f} TFLOP/s")
    ceiling = total_flops / total_s
    print(f"forward convolutions of the net, FLOP-weighted: {ceiling / 1e12:.3f} TFLOP/s "
          f"({'fp32' if args.fp32 else 'bf16 autocast'}, batch {args.batch})")
    if args.run:
        summary = json.loads((Path(args.run) / "summary.json").read_text())
        epochs, wall = summary["epochs_done"], summary["wall_seconds"]
        done = epochs * epoch + evaluation
        print(f"run {args.run}: {done / 1e15:.3f} PFLOPs in {wall:.0f} s (the run's wall "
              f"time: training and evaluation) = {done / wall / 1e12:.3f} TFLOP/s, "
              f"{done / wall / ceiling:.0%} of the convolution rate above")
        per_epoch = summary["seconds_per_epoch"]
        rate = epoch / per_epoch
        print(f"  training alone: {per_epoch:.0f} s per epoch = {rate / 1e12:.3f} TFLOP/s, "
              f"{rate / ceiling:.0%} of it")


if __name__ == "__main__":
    main()

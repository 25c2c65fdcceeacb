"""Augmentation policies: classlab's batched implementation vs Kornia, per op and per policy.

One batch of 512 CIFAR-sized images ``[512,3,32,32]``, fp32 and bf16, on the CPU with 2 torch
threads (the run's default on a 2-core machine). Each pair is timed in interleaved rounds
in this one process (the fastest round of each), so a change of load hits both alike; the table
prints Kornia's time over classlab's (> 1: classlab faster).

- **per op**: the image op on float pixels in [0, 1] with the same per-image parameters, as
  a policy applies it: classlab's :mod:`classlab.augment.imageops` (for the ops marked
  ``*``, where Kornia's is used, classlab's own candidate, kept in this script) against the
  ``kornia.enhance`` / ``kornia.geometry`` function of the same definition (the first
  columns), and against the ``kornia.augmentation`` module drawing its own parameters (the
  last columns; ``-`` where Kornia has no module for that op);
- **per policy**: classlab's registry op on a normalised batch against the
  ``kornia.augmentation`` policy on the same batch un-normalised first and normalised back
  after, as a run would have to. Kornia's RandAugment / TrivialAugment / AutoAugment choose
  one op (sub-policy) per *batch*; classlab's choose per *image* (what the papers do), so
  those rows compare a cheaper thing on Kornia's side.

The rule the choice follows (issue 25): use Kornia where it is within 1.5x of classlab's own
op, keep classlab's where it is not. In a run the batch reaches the augmentations as float32
(the normaliser's output) whatever the autocast dtype, so the fp32 columns are what a run
pays; bf16 shows the ops with bf16 input.

    .venv/bin/python bench/augment_policies.py [--repeats 15] [--threads 2] [--only ops]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, load1, machine_line  # noqa: E402

from classlab.augment import AUGMENTATIONS, PixelStats, make_generator  # noqa: E402
from classlab.augment import imageops as ops  # noqa: E402
from classlab.augment.mixing import mix_batch  # noqa: E402
from classlab.config import AugConfig  # noqa: E402
from classlab.engine.precision import cpu_flags  # noqa: E402

STATS = PixelStats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
N = 512


# ----------------------------------------------------------------------------- candidates
# classlab's own versions of the ops it takes from Kornia (classlab.augment.imageops), kept
# here so the choice can be measured again: the same definitions (PIL's), on float32 pixels
# [M,C,H,W] in [0, 1] with per-image parameters v [M].


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(p: torch.Tensor) -> torch.Tensor:
    return p[:, 0:1] * 0.299 + p[:, 1:2] * 0.587 + p[:, 2:3] * 0.114  # PIL's "L"


def own_brightness(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (p * _col(v)).clamp_(0.0, 1.0)


def own_contrast(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    mean = _gray(p).mean((1, 2, 3), keepdim=True)
    return torch.lerp(mean.expand_as(p), p, _col(v)).clamp_(0.0, 1.0)


def own_invert(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return 1.0 - p


def own_solarize(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.where((p * 255.0).round_() >= _col(v), 1.0 - p, p)


def own_equalize(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL's equalize per channel: lut[i] = (step // 2 + #pixels below i) // step."""
    m, c, h, w = p.shape
    q = (p * 255.0).round_().long().view(m * c, h * w)
    hist = torch.zeros(m * c, 256, dtype=torch.float32).scatter_add_(
        1, q, torch.ones_like(q, dtype=torch.float32))
    top = torch.where(hist > 0, torch.arange(256), 0).amax(1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, top), 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) - hist + torch.div(step, 2, rounding_mode="floor"),
                    step.clamp(min=1), rounding_mode="floor").clamp_(max=255.0)
    return (torch.where(step > 0, lut.gather(1, q), q.float()) / 255.0).view(m, c, h, w)


# ----------------------------------------------------------------------------- the table


def _batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels in [0, 1], the same normalised), both in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    p = torch.randint(0, 256, (N, 3, 32, 32), generator=g).float() / 255
    return p.to(dtype), STATS.from_pixels(p, dtype)


def _params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    u = torch.rand(N, generator=g)
    return {"factor": 0.1 + 1.8 * u, "bits": torch.randint(4, 9, (N,), generator=g),
            "threshold": torch.randint(0, 257, (N,), generator=g).float(),
            "hue": u - 0.5, "angle": 60 * u - 30, "shear": 0.6 * u - 0.3,
            "shift": 29 * u - 14.5}


def _kornia_ops(K, p: dict[str, torch.Tensor]) -> dict[str, tuple[Callable, Callable, Callable]]:
    """op -> (classlab, kornia function, kornia module) callables on a pixel batch."""
    E, G, A = K.enhance, K.geometry.transform, K.augmentation
    fill = STATS.fill(torch.zeros(1, 3, 1, 1))
    zero = torch.zeros(N)
    centre = torch.full((N, 2), 15.5)
    f, thr, hue = p["factor"], p["threshold"], p["hue"]

    def warp(m2x3: Callable[[torch.dtype], torch.Tensor]):
        return lambda x: G.warp_affine(x, m2x3(x.dtype), (32, 32), mode="nearest",
                                       padding_mode="fill", fill_value=fill[0, :, 0, 0],
                                       align_corners=False)

    def rot_m(dt):
        return G.get_rotation_matrix2d(centre, p["angle"], torch.ones(N, 2)).to(dt)

    def shear_m(dt):
        m = torch.zeros(N, 2, 3)
        m[:, 0, 0] = m[:, 1, 1] = 1
        m[:, 0, 1], m[:, 0, 2] = p["shear"], -p["shear"] * 15.5
        return m.to(dt)

    def shift_m(dt):
        m = torch.zeros(N, 2, 3)
        m[:, 0, 0] = m[:, 1, 1] = 1
        m[:, 0, 2] = p["shift"]
        return m.to(dt)

    return {
        "autocontrast": (lambda x: ops.autocontrast(x, zero), E.normalize_min_max,
                         A.RandomAutoContrast(p=1.0)),
        "brightness*": (lambda x: own_brightness(x, f), lambda x: E.adjust_contrast(x, f),
                        None),
        "color": (lambda x: ops.color(x, f),
                  lambda x: E.adjust_saturation_with_gray_subtraction(x, f), None),
        "contrast*": (lambda x: own_contrast(x, f),
                      lambda x: E.adjust_contrast_with_mean_subtraction(x, f), None),
        "equalize*": (lambda x: own_equalize(x, zero), E.equalize, A.RandomEqualize(p=1.0)),
        "hue": (lambda x: ops.hue(x, hue), lambda x: E.adjust_hue(x, hue * 2 * math.pi),
                A.RandomHue((-0.5, 0.5), p=1.0)),
        "invert*": (lambda x: own_invert(x, zero), E.invert, A.RandomInvert(p=1.0)),
        "posterize": (lambda x: ops.posterize(x, p["bits"].float()),
                      lambda x: E.posterize(x, p["bits"]), A.RandomPosterize((4, 8), p=1.0)),
        "sharpness": (lambda x: ops.sharpness(x, f), lambda x: E.sharpness(x, f),
                      A.RandomSharpness((0.1, 1.9), p=1.0)),
        "solarize*": (lambda x: own_solarize(x, thr), lambda x: E.solarize(x, thr / 255),
                      A.RandomSolarize(0.5, 0.0, p=1.0)),
        "rotate": (lambda x: ops.GEOMETRIC["rotate"](x.float(), p["angle"], fill),
                   warp(rot_m), A.RandomRotation(30.0, resample="nearest", p=1.0)),
        "shear_x": (lambda x: ops.GEOMETRIC["shear_x"](x.float(), p["shear"], fill),
                    warp(shear_m), A.RandomShear((-16.7, 16.7), resample="nearest", p=1.0)),
        "translate_x": (lambda x: ops.GEOMETRIC["translate_x"](x.float(), p["shift"], fill),
                        warp(shift_m), A.RandomTranslate((-0.45, 0.45), resample="nearest",
                                                         p=1.0)),
    }


def _policies(K, labels: torch.Tensor) -> dict[str, tuple[AugConfig, Callable]]:
    """policy -> (classlab config, Kornia module on a pixel batch)."""
    A = K.augmentation
    cfg = AugConfig(jitter_hue=0.0)
    mix = A.RandomMixUpV2(p=1.0, data_keys=["input", "class"])
    cut = A.RandomCutMixV2(p=1.0, data_keys=["input", "class"])
    return {
        "randaugment": (cfg, A.auto.RandAugment(n=3, m=5)),
        "trivialaugment": (cfg, A.auto.TrivialAugment()),
        "autoaugment": (cfg, A.auto.AutoAugment("cifar10")),
        "colorjitter": (cfg, A.ColorJitter(0.4, 0.4, 0.4, 0.0, p=1.0)),
        # Kornia fills with a constant: compare with classlab's constant (mean colour) fill
        "erasing": (dataclasses.replace(cfg, erasing_fill="mean"),
                    A.RandomErasing((0.02, 0.4), (0.3, 1 / 0.3), value=0.0, p=0.5)),
        "mixup": (cfg, lambda x: mix(x, labels)),
        "cutmix": (cfg, lambda x: cut(x, labels)),
    }


def _time(pair: dict[str, Callable[[], object]], repeats: int) -> dict[str, float] | None:
    """Fastest wall ms of each callable over ``repeats`` interleaved rounds (the fastest:
    on a shared machine the slower rounds measure the other jobs); None when one raises."""
    try:
        for fn in pair.values():
            fn()  # warm-up (and: does it run at all with this input?)
    except Exception as e:  # noqa: BLE001 - a Kornia op that refuses bf16, say
        print(f"    ({type(e).__name__}: {str(e).splitlines()[0][:90]})")
        return None
    return {k: 1e3 * min(t[0] for t in v) for k, v in interleaved(pair, repeats).items()}


def _fmt(ms: float | None, base: float | None = None) -> str:
    if ms is None:
        return "fails"
    return f"{ms:7.2f}" if base is None else f"{ms:7.2f} ({ms / base:5.2f}x)"


def _op_pair(ours: Callable, fn: Callable, module: Callable | None,
             pix: torch.Tensor) -> dict[str, Callable[[], object]]:
    # classlab's ops run on float32 pixels (a policy converts once, before its first
    # layer), so a bf16 batch is converted to and from float32 here
    pair = {"ours": lambda: ours(pix.float()).to(pix.dtype), "fn": lambda: fn(pix)}
    if module is not None:
        pair["module"] = lambda: module(pix)
    return pair


def _row(name: str, dtype: torch.dtype, pair: dict[str, Callable[[], object]],
         repeats: int) -> list[str]:
    t = _time(pair, repeats)
    if t is None:  # time what runs
        t = _time({"ours": pair["ours"]}, repeats) or {}
    base = t.get("ours")
    cells = [_fmt(t.get(k), base) if k in pair else "-" for k in pair if k != "ours"]
    return [name, "fp32" if dtype == torch.float32 else "bf16", _fmt(base), *cells]


def per_op(K, repeats: int) -> None:
    print("\nper op (ms per 512 images; Kornia / classlab in brackets; *: Kornia's is used,"
          " the classlab column is the candidate kept in this script):")
    print(f"{'op':<13}{'dtype':<6}{'classlab':>9}  {'kornia fn':>17}  {'kornia module':>17}")
    table = _kornia_ops(K, _params())
    for dtype in (torch.float32, torch.bfloat16):
        pix, _ = _batch(dtype)
        for name, (ours, fn, module) in table.items():
            r = _row(name, dtype, _op_pair(ours, fn, module, pix), repeats)
            print(f"{r[0]:<13}{r[1]:<6}{r[2]:>9}  {r[3]:>17}  "
                  f"{r[4] if len(r) > 4 else '-':>17}")


def _policy_pair(name: str, cfg: AugConfig, module: Callable,
                 x: torch.Tensor) -> dict[str, Callable[[], object]]:
    gen = make_generator(0, "cpu")
    if name in ("mixup", "cutmix"):
        def ours() -> object:
            return mix_batch(x, gen, cfg, (name,))
    else:
        def ours() -> object:
            return AUGMENTATIONS[name](x, gen, cfg, STATS)

    def kornia() -> object:  # the same un-normalise / normalise a run would need
        out = module(STATS.to_pixels(x).to(x.dtype))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return STATS.from_pixels(out.float(), x.dtype)

    return {"ours": ours, "kornia": kornia}


def per_policy(K, repeats: int) -> None:
    print("\nper policy (ms per 512 normalised images; Kornia / classlab in brackets):")
    print(f"{'policy':<15}{'dtype':<6}{'classlab':>9}  {'kornia':>17}")
    labels = torch.randint(0, 10, (N,))
    for dtype in (torch.float32, torch.bfloat16):
        _, x = _batch(dtype)
        for name, (cfg, module) in _policies(K, labels).items():
            r = _row(name, dtype, _policy_pair(name, cfg, module, x), repeats)
            print(f"{r[0]:<15}{r[1]:<6}{r[2]:>9}  {r[3]:>17}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["ops", "policies"], help="one of the two tables")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import kornia as K
    except ImportError:
        print("kornia is not installed: pip install 'classlab[kornia]'")
        return 2
    warnings.filterwarnings("ignore")
    print(machine_line())
    print(f"cpu flags: {', '.join(cpu_flags()) or '-'}; kornia {K.__version__}; "
          f"{N} images 3x32x32, fastest of {args.repeats} interleaved rounds")
    if args.only != "policies":
        per_op(K, args.repeats)
    if args.only != "ops":
        per_policy(K, args.repeats)
    print(f"\nload average now {load1():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

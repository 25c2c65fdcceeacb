"""Augmentation policies as batched registry ops: RandAugment, TrivialAugment (Wide),
AutoAugment's CIFAR-10 policy, colour jitter and random erasing.

Conventions are the batched pipeline's (:mod:`classlab.augment.batched`): a whole normalised
batch ``[N,C,H,W]``, every random choice drawn per image from the explicit generator on the
batch's device, a fixed number of draws per call (so the same seed gives the same images,
and a resumed epoch replays them), no Python loop over images, the input never modified.

A policy picks an op per image; the images that picked the same op are gathered and
transformed together (one ``bincount`` read back per layer, then one call per op that some
image picked). The photometric ops need pixel values: the batch is un-normalised once with
the training split's mean and std (:class:`~classlab.augment.pixels.PixelStats`), every
layer runs in float32 pixels, and the result is normalised back into the input's dtype.

Magnitudes (the papers' CIFAR settings; choices noted where the papers leave one):

- a magnitude is a fraction ``f`` of each op's maximum: RandAugment ``M / 10`` (its integer
  0..10 scale), TrivialAugment a bin uniform in ``0..30`` over 30, AutoAugment its
  sub-policy's bin ``0..9`` over 9 (its ten values per op, ``linspace(0, max, 10)``);
- maxima (AutoAugment's Table, shared by RandAugment): shear 0.3, translation 150/331 of the
  side (AutoAugment's 150 pixels of 331; about 14.5 pixels on 32x32), rotation 30 degrees,
  colour / contrast / brightness / sharpness factor ``1 ± 0.9``, posterize down to 4 bits,
  solarize down to threshold 0. TrivialAugment's "Wide" maxima: shear 0.99, translation the
  whole side (its 32 pixels on 32x32), rotation 135 degrees, factor ``1 ± 0.99``, posterize
  down to 2 bits;
- shear, translation, rotation and the factors get a random sign per image; posterize keeps
  ``8 - round(4 f)`` bits (Wide: ``8 - round(6 f)``), solarize inverts levels at or above
  ``256 (1 - f)``;
- RandAugment: N = 3 ops per image, M = 5 by default (``aug.randaugment_n`` /
  ``aug.randaugment_m``), each op uniform over its 14 ops, identity included, with
  replacement; TrivialAugment: one op per image, uniform over the same 14;
- AutoAugment: one of the paper's 25 CIFAR-10 sub-policies per image, each of its two ops
  applied with its own probability.
"""

from __future__ import annotations

import math

import torch

from classlab.augment.imageops import GEOMETRIC, PHOTOMETRIC, brightness, color, contrast, hue
from classlab.augment.pixels import PixelStats, stats_for
from classlab.config import AugConfig

__all__ = ["AUTOAUGMENT_CIFAR10", "NEEDS_KORNIA", "POLICY_OPS", "RANDAUGMENT_OPS", "apply_layer",
           "autoaugment", "colorjitter", "erasing", "missing_kornia", "op_values", "randaugment",
           "trivialaugment"]

# The 14 ops RandAugment and TrivialAugment choose from (identity included).
RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color",
                   "posterize", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
                   "translate_x", "translate_y")

# Each op's maximum magnitude (see the module docstring); translations as a fraction of the
# side, posterize as bits removed, solarize as the levels the threshold moves down.
STANDARD = {"shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331, "translate_y": 150 / 331,
            "rotate": 30.0, "color": 0.9, "contrast": 0.9, "brightness": 0.9,
            "sharpness": 0.9, "posterize": 4.0, "solarize": 256.0}
WIDE = {"shear_x": 0.99, "shear_y": 0.99, "translate_x": 1.0, "translate_y": 1.0,
        "rotate": 135.0, "color": 0.99, "contrast": 0.99, "brightness": 0.99,
        "sharpness": 0.99, "posterize": 6.0, "solarize": 256.0}
_FACTORS = ("color", "contrast", "brightness", "sharpness")
_SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")

# AutoAugment's CIFAR-10 policy (Cubuk et al. 2019, appendix): 25 sub-policies of two
# (op, probability, magnitude bin 0..9) each; autocontrast, equalize and invert take none.
AUTOAUGMENT_CIFAR10 = (
    (("invert", 0.1, 0), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, 0), ("equalize", 0.9, 0)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 0), ("equalize", 0.5, 0)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 0), ("autocontrast", 0.4, 0)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 0)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 0), ("equalize", 0.6, 0)),
    (("color", 0.9, 9), ("equalize", 0.6, 0)),
    (("autocontrast", 0.8, 0), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 0)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, 0), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 0), ("invert", 0.1, 0)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, 0)),
)
AUTOAUGMENT_OPS = RANDAUGMENT_OPS + ("invert",)


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point batch [N, C, H, W], got "
                         f"{x.dtype} of shape {tuple(x.shape)}")


def op_values(name: str, f: torch.Tensor, negative: torch.Tensor, ranges: dict[str, float],
              h: int, w: int) -> torch.Tensor:
    """``[M]`` float32: the parameter op ``name`` gets at magnitude fraction ``f`` ``[M]``
    (and sign ``-1`` where ``negative``): a factor, shear, angle (degrees), translation
    (pixels), number of bits or solarize threshold (levels)."""
    if name not in ranges:  # identity, autocontrast, equalize, invert
        return torch.zeros_like(f)
    amount = f * ranges[name]
    if name in _FACTORS or name in _SIGNED:
        amount = torch.where(negative, -amount, amount)
    if name in _FACTORS:
        return 1.0 + amount
    if name == "translate_x":
        return amount * w
    if name == "translate_y":
        return amount * h
    if name == "posterize":
        return 8.0 - amount.round()
    if name == "solarize":
        return 256.0 - amount
    return amount  # shear factor, degrees


def apply_layer(p: torch.Tensor, names: tuple[str, ...], op: torch.Tensor, f: torch.Tensor,
                negative: torch.Tensor, ranges: dict[str, float],
                fill: torch.Tensor) -> torch.Tensor:
    """One policy layer on float32 pixels ``p`` ``[M,C,H,W]``: image i gets op
    ``names[op[i]]`` at magnitude fraction ``f[i]`` (negated where ``negative[i]``).
    The images of each op are transformed together; returns a new tensor."""
    counts = torch.bincount(op, minlength=len(names)).tolist()  # one read-back per layer
    order = torch.argsort(op, stable=True)
    out = p.clone()
    _, _, h, w = p.shape
    for name, idx in zip(names, order.split(counts)):
        if name == "identity" or idx.numel() == 0:
            continue
        v = op_values(name, f.index_select(0, idx), negative.index_select(0, idx), ranges, h, w)
        sub = p.index_select(0, idx)
        res = GEOMETRIC[name](sub, v, fill) if name in GEOMETRIC else PHOTOMETRIC[name](sub, v)
        out.index_copy_(0, idx, res)
    return out


def _pixels(x: torch.Tensor, stats: PixelStats | None) -> tuple[PixelStats, torch.Tensor]:
    s = stats_for(x, stats)
    return s, s.to_pixels(x)


def randaugment(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                stats: PixelStats | None = None) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): ``aug.randaugment_n`` ops per image, each uniform over
    :data:`RANDAUGMENT_OPS`, all at magnitude ``aug.randaugment_m`` (of 10)."""
    _check_batch(x, "randaugment")
    n, layers = x.shape[0], cfg.randaugment_n
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (layers, n), generator=gen, device=x.device)
    negative = torch.rand((layers, n), generator=gen, device=x.device) < 0.5
    s, p = _pixels(x, stats)
    f = torch.full((n,), cfg.randaugment_m / 10.0, device=x.device)
    for k in range(layers):
        p = apply_layer(p, RANDAUGMENT_OPS, ops[k], f, negative[k], STANDARD, s.fill(x))
    return s.from_pixels(p, x.dtype)


TRIVIAL_BINS = 31  # TrivialAugment's magnitude bins 0..30


def trivialaugment(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                   stats: PixelStats | None = None) -> torch.Tensor:
    """TrivialAugment Wide (Müller & Hutter 2021, the paper's default): one op per image,
    uniform over :data:`RANDAUGMENT_OPS`, at a magnitude bin uniform in 0..30, wide ranges."""
    _check_batch(x, "trivialaugment")
    n = x.shape[0]
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (n,), generator=gen, device=x.device)
    bins = torch.randint(0, TRIVIAL_BINS, (n,), generator=gen, device=x.device)
    negative = torch.rand(n, generator=gen, device=x.device) < 0.5
    s, p = _pixels(x, stats)
    f = bins.float() / (TRIVIAL_BINS - 1)
    p = apply_layer(p, RANDAUGMENT_OPS, ops, f, negative, WIDE, s.fill(x))
    return s.from_pixels(p, x.dtype)


def _autoaugment_table(device: torch.device) -> tuple[torch.Tensor, ...]:
    """``[25, 2]`` op index (into AUTOAUGMENT_OPS), probability, magnitude fraction."""
    ops = torch.tensor([[AUTOAUGMENT_OPS.index(o) for o, _, _ in sub]
                        for sub in AUTOAUGMENT_CIFAR10], device=device)
    prob = torch.tensor([[q for _, q, _ in sub] for sub in AUTOAUGMENT_CIFAR10], device=device)
    f = torch.tensor([[b / 9 for _, _, b in sub] for sub in AUTOAUGMENT_CIFAR10], device=device)
    return ops, prob, f


def autoaugment(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                stats: PixelStats | None = None) -> torch.Tensor:
    """AutoAugment's CIFAR-10 policy (Cubuk et al. 2019): one of its 25 sub-policies per
    image, uniformly; each of the sub-policy's two ops with its own probability."""
    _check_batch(x, "autoaugment")
    n = x.shape[0]
    pick = torch.randint(0, len(AUTOAUGMENT_CIFAR10), (n,), generator=gen, device=x.device)
    u = torch.rand((2, n), generator=gen, device=x.device)
    negative = torch.rand((2, n), generator=gen, device=x.device) < 0.5
    table_ops, table_p, table_f = (t[pick] for t in _autoaugment_table(x.device))  # [N, 2]
    s, p = _pixels(x, stats)
    for k in range(2):
        op = torch.where(u[k] < table_p[:, k], table_ops[:, k], 0)  # 0: identity
        p = apply_layer(p, AUTOAUGMENT_OPS, op, table_f[:, k], negative[k], STANDARD,
                        s.fill(x))
    return s.from_pixels(p, x.dtype)


def colorjitter(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                stats: PixelStats | None = None) -> torch.Tensor:
    """Colour jitter (torchvision's ColorJitter on every image): brightness, contrast,
    saturation factors uniform in ``[1 - j, 1 + j]`` and a hue rotation uniform in
    ``[-h, h]`` turns, per image, applied in that fixed order (torchvision shuffles the order
    per call; a fixed order keeps it one pass of four batched ops)."""
    _check_batch(x, "colorjitter")
    n = x.shape[0]
    u = torch.rand((4, n), generator=gen, device=x.device) * 2.0 - 1.0  # [4, N] in [-1, 1)
    amounts = (cfg.jitter_brightness, cfg.jitter_contrast, cfg.jitter_saturation)
    if not any(amounts) and cfg.jitter_hue == 0:
        return x
    s, p = _pixels(x, stats)
    for k, (op, j) in enumerate(zip((brightness, contrast, color), amounts)):
        if j > 0:
            p = op(p, 1.0 + j * u[k])
    if cfg.jitter_hue > 0:
        p = hue(p, cfg.jitter_hue * u[3])
    return s.from_pixels(p, x.dtype)


ERASING_TRIES = 10  # candidate rectangles per image; the first that fits is used
ERASING_MIN_AREA = 0.02  # Zhong et al.'s s_l
ERASING_ASPECT = 0.3  # Zhong et al.'s r_1: aspect ratios in [0.3, 1 / 0.3]


def _erasing_boxes(n: int, h: int, w: int, gen: torch.Generator, device: torch.device,
                   max_area: float) -> tuple[torch.Tensor, ...]:
    """Per image ``(top, left, height, width, found)`` ``[N]`` of the first of
    ERASING_TRIES random rectangles (area fraction uniform, aspect log-uniform) that fits."""
    u = torch.rand((4, ERASING_TRIES, n), generator=gen, device=device)
    area = (ERASING_MIN_AREA + (max_area - ERASING_MIN_AREA) * u[0]) * (h * w)
    log_r = math.log(ERASING_ASPECT) * (1.0 - 2.0 * u[1])  # log-uniform in [r1, 1/r1]
    bh = torch.sqrt(area * torch.exp(log_r)).round().long()  # [T, N]
    bw = torch.sqrt(area / torch.exp(log_r)).round().long()
    fits = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
    first = fits.int().argmax(0, keepdim=True)  # [1, N]: first try that fits (0 if none)
    pick = [t.gather(0, first)[0] for t in (bh, bw, u[2], u[3])]
    bh, bw, uy, ux = pick
    top = (uy * (h - bh + 1)).long().clamp(max=h - 1)
    left = (ux * (w - bw + 1)).long().clamp(max=w - 1)
    return top, left, bh, bw, fits.any(0)


def erasing(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
            stats: PixelStats | None = None) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability ``aug.erasing_p`` per image, a
    rectangle of area uniform in ``[0.02, aug.erasing_max_area]`` of the image and aspect
    ratio log-uniform in ``[0.3, 1/0.3]``, placed uniformly inside, is replaced by random
    pixel values (uniform in [0, 1], normalised; ``aug.erasing_fill: random``, the paper's)
    or by the mean colour (``mean``). Up to 10 candidates per image; an image whose 10 do
    not fit is left as it is (the paper retries until one fits)."""
    _check_batch(x, "erasing")
    n, c, h, w = x.shape
    if cfg.erasing_p <= 0:
        return x
    top, left, bh, bw, found = _erasing_boxes(n, h, w, gen, x.device, cfg.erasing_max_area)
    apply = (torch.rand(n, generator=gen, device=x.device) < cfg.erasing_p) & found
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_y = (ys >= top[:, None]) & (ys < (top + bh)[:, None])  # [N, H]
    in_x = (xs >= left[:, None]) & (xs < (left + bw)[:, None])  # [N, W]
    box = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None])[:, None]  # [N,1,H,W]
    if cfg.erasing_fill == "mean":
        return x * (~box).to(x.dtype)
    noise = torch.rand((n, c, h, w), generator=gen, device=x.device)
    fill = stats_for(x, stats).from_pixels(noise, x.dtype)
    return torch.where(box, fill, x)


# The policies that apply Kornia's image ops (classlab.augment.imageops): they need the
# optional extra classlab[kornia]
NEEDS_KORNIA = ("autoaugment", "colorjitter", "randaugment", "trivialaugment")


def missing_kornia(names: list[str]) -> str | None:
    """The first of ``names`` that needs Kornia when Kornia cannot be imported, else None."""
    need = [n for n in names if n in NEEDS_KORNIA]
    if not need:
        return None
    try:
        import kornia.enhance  # noqa: F401
    except ImportError:
        return need[0]
    return None


# name -> registry op (registered into classlab.augment.AUGMENTATIONS by the package)
POLICY_OPS = {"autoaugment": autoaugment, "colorjitter": colorjitter, "erasing": erasing,
              "randaugment": randaugment, "trivialaugment": trivialaugment}

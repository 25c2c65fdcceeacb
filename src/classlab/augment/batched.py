"""Batched, on-device training augmentations.

Every augmentation takes a whole batch ``x`` of shape ``[N, C, H, W]`` (floating point,
already normalised, so 0 is the dataset's mean colour), a ``torch.Generator`` living on
``x.device`` and the :class:`~classlab.config.AugConfig`, and returns a new tensor of the
same shape, dtype and device. Randomness comes only from the explicit generator, so the
same seed and input give bit-identical output, and per-image parameters are drawn as
vectors and applied with index arithmetic, broadcasting or ``grid_sample``: no Python loop
over images, so the cost stays a handful of kernel launches per batch on a GPU.

The input is never modified in place. An op whose parameters make it the identity (crop
padding 0, rotation 0 degrees, flip/cutout probability 0) returns ``x`` itself.

Every op also takes the batch's normalisation statistics (:class:`~classlab.augment.pixels.
PixelStats`, optional): the policy ops of :mod:`classlab.augment.policies` un-normalise with
them; the ops here work in normalised units and ignore them. The mixing ops of
:mod:`classlab.augment.mixing` are in the registry too, but :func:`augment` skips them: they
change the targets, so the training step applies them (:mod:`classlab.engine.epoch`).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from classlab.augment.pixels import PixelStats
from classlab.config import AugConfig


class AugFn(Protocol):
    """A registry op: ``(x [N,C,H,W] normalised, generator, config, stats) -> new batch``."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                 stats: PixelStats | None = None) -> torch.Tensor: ...


__all__ = [
    "AUGMENTATIONS",
    "AugFn",
    "alternate_flip",
    "augment",
    "cutout",
    "epoch_images",
    "make_generator",
    "normjitter",
    "random_crop",
    "random_flip",
    "random_rotate",
]


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (the one the augmentations draw from)."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a floating-point batch [N, C, H, W], got "
            f"{x.dtype} of shape {tuple(x.shape)}"
        )


# --------------------------------------------------------------------------- crop


def _reflect_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Map any integer index onto ``[0, size)`` by mirroring about the edge pixels.

    Same convention as ``F.pad(mode="reflect")`` / ``np.pad(mode="reflect")`` (the edge
    pixel is not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 ...), but valid for any distance
    outside the image, since the reflection is periodic with period ``2 * (size - 1)``.
    """
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.abs().remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def _translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad_mode: str,
               mirror: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i, :, y, x] = x[i, :, y + dy[i], x + dx[i]]``, outside pixels per ``pad_mode``;
    where bool ``mirror[i]``, the result is also flipped left-right (read column
    ``W - 1 - x + dx[i]``), in the same gather.

    dy, dx: integer ``[N]`` on ``x.device``. This equals cropping ``H x W`` at offset
    ``(p + dy, p + dx)`` out of ``x`` padded by ``p`` on every side, without building the
    ``[N, C, H + 2p, W + 2p]`` padded copy: one ``gather`` on the flattened ``H * W`` axis.
    Zeros mode clamps the indices and multiplies by a 0/1 inside-mask afterwards (3 ms per
    512 CIFAR images on one CPU core; gathering from a zero-padded copy took 16 ms and
    ``masked_fill`` with a broadcast mask 5 ms).
    """
    n, c, h, w = x.shape
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    src_y = ys[None, :] + dy[:, None]  # [N, H] source row of each output row
    src_x = xs[None, :] + dx[:, None]  # [N, W] source column of each output column
    if mirror is not None:
        src_x = torch.where(mirror[:, None], xs.flip(0)[None, :] + dx[:, None], src_x)
    keep = None
    if pad_mode == "reflect":
        src_y, src_x = _reflect_index(src_y, h), _reflect_index(src_x, w)
    elif pad_mode == "zeros":
        in_y = ((src_y >= 0) & (src_y < h)).to(x.dtype)  # [N, H]
        in_x = ((src_x >= 0) & (src_x < w)).to(x.dtype)  # [N, W]
        keep = (in_y[:, :, None] * in_x[:, None, :])[:, None]  # [N, 1, H, W]: 1 inside
        src_y, src_x = src_y.clamp(0, h - 1), src_x.clamp(0, w - 1)
    else:
        raise ValueError(f"pad_mode: unknown value {pad_mode!r}; allowed: zeros, reflect")
    flat = (src_y[:, :, None] * w + src_x[:, None, :]).reshape(n, 1, h * w)  # [N, 1, H*W]
    out = x.reshape(n, c, h * w).gather(2, flat.expand(n, c, h * w)).view(n, c, h, w)
    return out if keep is None else out * keep


def random_crop(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                stats: PixelStats | None = None) -> torch.Tensor:
    """Pad by ``cfg.crop_padding`` (``cfg.pad_mode``) and take a random ``H x W`` crop.

    That is a per-image integer translation by ``(dy, dx)``, each uniform in ``[-p, p]``;
    with offsets ``(oy, ox) = (dy + p, dx + p)`` into the padded image,
    ``out[i, :, y, x] == padded[i, :, y + oy_i, x + ox_i]``. Reflect padding wider than the
    image keeps mirroring (``F.pad`` would refuse ``p >= H``).
    """
    _check_batch(x, "random_crop")
    p = cfg.crop_padding
    if p == 0:
        return x
    # [2, N]: row and column offsets, drawn in one call so both come from the same stream
    d = torch.randint(-p, p + 1, (2, x.shape[0]), generator=gen, device=x.device)
    return _translate(x, d[0], d[1], cfg.pad_mode)


# --------------------------------------------------------------------------- flip


def random_flip(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                stats: PixelStats | None = None) -> torch.Tensor:
    """Flip each image left-right with probability ``cfg.flip_p``."""
    _check_batch(x, "random_flip")
    if cfg.flip_p <= 0:
        return x
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < cfg.flip_p  # [N]
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# --------------------------------------------------------------------------- rotate


def _rotate(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by ``angles_deg[i]`` degrees, counter-clockwise
    as displayed (y axis down), bilinear, zeros outside, ``align_corners=False``.

    ``affine_grid`` maps output to input coordinates normalised to ``[-1, 1]`` per axis, so
    a rotation by ``a`` in pixel space becomes ``[[cos, -sin * H/W], [sin * W/H, cos]]``
    (the aspect factors keep non-square images undistorted). The grid and sampling run in
    float32 for half/bfloat16 input: a bf16 grid would misplace samples by ~0.1 pixel.
    """
    n, c, h, w = x.shape
    if x.numel() == 0:  # affine_grid rejects empty sizes; nothing to rotate anyway
        return x
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    a = angles_deg.to(device=x.device, dtype=work.dtype) * (math.pi / 180.0)  # [N] radians
    cos = torch.cos(a)[:, None, None, None]  # [N, 1, 1, 1]
    sin = torch.sin(a)[:, None, None, None]
    # The grid affine_grid builds for theta = [[cos, -sin * H/W, 0], [sin * W/H, cos, 0]],
    # as cos * (x, y) + sin * (-y H/W, x W/H) over the pixel centres (align_corners=False):
    # two broadcasts instead of affine_grid's batched matmul (~8 ms per 512 CIFAR images on
    # one CPU core) or a stack into the last axis (~10 ms).
    bx = (torch.arange(w, device=x.device, dtype=work.dtype) * 2 + 1) / w - 1  # [W]
    by = (torch.arange(h, device=x.device, dtype=work.dtype) * 2 + 1) / h - 1  # [H]
    gx, gy = bx[None, :].expand(h, w), by[:, None].expand(h, w)
    base = torch.stack([gx, gy], dim=-1)[None]  # [1, H, W, 2]
    turn = torch.stack([-gy * (h / w), gx * (w / h)], dim=-1)[None]  # [1, H, W, 2]
    grid = cos * base + sin * turn  # [N, H, W, 2]
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def random_rotate(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
                  stats: PixelStats | None = None) -> torch.Tensor:
    """Rotate each image by an angle uniform in ``[-d, d]`` degrees (``d = cfg.rotate_degrees``)."""
    _check_batch(x, "random_rotate")
    d = cfg.rotate_degrees
    if d == 0:
        return x
    u = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=torch.float32)  # [N]
    return _rotate(x, (2.0 * u - 1.0) * d)


# --------------------------------------------------------------------------- cutout


def _cutout_mask(
    centres_y: torch.Tensor, centres_x: torch.Tensor, size: int, h: int, w: int
) -> torch.Tensor:
    """``[N, H, W]`` bool, True inside a ``size x size`` square per image, clipped at borders.

    The square covers rows ``cy - size // 2 .. cy - size // 2 + size - 1`` (and likewise
    columns), so it is centred on ``(cy, cx)`` for odd sizes and one pixel up-left of the
    centre for even ones; parts outside the image are simply dropped.
    """
    y0 = centres_y - size // 2  # [N]
    x0 = centres_x - size // 2
    ys = torch.arange(h, device=centres_y.device)
    xs = torch.arange(w, device=centres_x.device)
    in_y = (ys[None, :] >= y0[:, None]) & (ys[None, :] < (y0 + size)[:, None])  # [N, H]
    in_x = (xs[None, :] >= x0[:, None]) & (xs[None, :] < (x0 + size)[:, None])  # [N, W]
    return in_y[:, :, None] & in_x[:, None, :]


def cutout(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
           stats: PixelStats | None = None) -> torch.Tensor:
    """With probability ``cfg.cutout_p`` per image, zero (= mean colour) a square of side
    ``cfg.cutout_size`` whose centre is uniform over the image's pixels, clipped at borders
    (DeVries & Taylor 2017), so squares near an edge remove fewer pixels."""
    _check_batch(x, "cutout")
    if cfg.cutout_p <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen, device=x.device)
    cx = torch.randint(0, w, (n,), generator=gen, device=x.device)
    apply = torch.rand(n, generator=gen, device=x.device) < cfg.cutout_p  # [N]
    mask = _cutout_mask(cy, cx, cfg.cutout_size, h, w) & apply[:, None, None]  # [N, H, W]
    # a broadcast multiply by the 0/1 keep-mask: ~4x faster than masked_fill's broadcast path
    # on CPU (1.2 vs 4-6 ms per 512 CIFAR images on one core); inputs are finite
    return x * (~mask)[:, None].to(x.dtype)


# --------------------------------------------------------------------------- normjitter


def normjitter(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
               stats: PixelStats | None = None) -> torch.Tensor:
    """Brightness and contrast jitter in normalised units (hiverge's cifar10-speedrun): per
    image, ``(x + b) * c`` with ``b`` uniform in ``[-aug.norm_brightness, +]`` (channel stds)
    and ``c`` uniform in ``1 +- aug.norm_contrast``. Contrast thus scales about the dataset's
    mean colour (normalised 0), not the image's own mean as colorjitter's does, and no value
    is clipped: two multiply-adds per value, no trip through pixel space."""
    _check_batch(x, "normjitter")
    if cfg.norm_brightness == 0 and cfg.norm_contrast == 0:
        return x
    u = torch.rand((2, x.shape[0], 1, 1, 1), generator=gen, device=x.device) * 2.0 - 1.0
    b = (cfg.norm_brightness * u[0]).to(x.dtype)  # [N, 1, 1, 1]
    c = (1.0 + cfg.norm_contrast * u[1]).to(x.dtype)
    return (x + b) * c


# --------------------------------------------------------------------------- pipeline

AUGMENTATIONS: dict[str, AugFn] = {
    "crop": random_crop,
    "flip": random_flip,
    "rotate": random_rotate,
    "cutout": cutout,
    "normjitter": normjitter,
}


# The registry names applied at the training step, not here (classlab.augment.mixing.MIXING;
# written out because that module registers itself after this one).
STEP_OPS = ("cutmix", "mixup")


def augment(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
            stats: PixelStats | None = None) -> torch.Tensor:
    """Apply ``AUGMENTATIONS[name]`` for each name in ``cfg.ops``, in order; ``stats``: the
    mean and std ``x`` was normalised with (the policy ops need them; None: ``x`` holds
    pixel values in [0, 1]). The mixing ops (mixup, cutmix) are skipped here.

    With ``cfg.flip_mode == "alternate"`` the per-batch flip is skipped: the training loop
    mirrors the stored images per epoch instead (:func:`alternate_flip`)."""
    ops = [name for name in cfg.ops if not (name == "flip" and cfg.flip_mode == "alternate")
           and name not in STEP_OPS]
    i = 0
    while i < len(ops):
        fn = AUGMENTATIONS.get(ops[i])
        if fn is None:
            raise ValueError(
                f"aug.ops: unknown value {ops[i]!r}; allowed: {', '.join(sorted(AUGMENTATIONS))}"
            )
        if ops[i:i + 2] == ["crop", "flip"] and cfg.crop_padding > 0 and cfg.flip_p > 0:
            x = _crop_then_flip(x, gen, cfg)
            i += 2
            continue
        x = fn(x, gen, cfg, stats)
        i += 1
    return x


def _crop_then_flip(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig) -> torch.Tensor:
    """``random_flip(random_crop(x))`` bit for bit (the same draws in the same order), as one
    gather instead of a gather plus a mirrored copy: ~2 ms less per 512 CIFAR images."""
    _check_batch(x, "random_crop")
    p = cfg.crop_padding
    d = torch.randint(-p, p + 1, (2, x.shape[0]), generator=gen, device=x.device)
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < cfg.flip_p  # [N]
    return _translate(x, d[0], d[1], cfg.pad_mode, mirror=flip)


def epoch_images(x: torch.Tensor, epoch: int, seed: int, cfg: AugConfig) -> torch.Tensor:
    """The stored training images ``x`` as the batched ops see them in ``epoch``: mirrored
    per :func:`alternate_flip` when ``cfg.flip_mode`` is ``alternate`` and ``flip`` is in
    ``cfg.ops`` (the per-batch flip is then skipped by :func:`augment`), else ``x`` itself."""
    if cfg.flip_mode == "alternate" and "flip" in cfg.ops:
        return alternate_flip(x, epoch, seed)
    return x


def alternate_flip(x: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """The whole training set ``x`` ``[N, C, H, W]`` (any dtype) as seen in ``epoch`` under
    alternating flip: a fixed random half of the images (drawn from ``seed``) is mirrored in
    odd epochs, the other half in even epochs. Each image thus alternates orientation from
    epoch to epoch instead of repeating one by chance, which airbench (arXiv 2404.00498)
    found to beat random flipping whenever flipping helps at all. Returns a new tensor."""
    gen = make_generator(seed, x.device)
    first = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5  # [N]
    flip = first if epoch % 2 == 1 else ~first
    return torch.where(flip[:, None, None, None], x.flip(-1), x)

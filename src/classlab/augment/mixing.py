"""mixup and CutMix: images mixed with a partner from the same batch, and their soft targets.

Per image ``i`` (not one draw per batch: every image gets its own weight, as timm's
``mode="elem"``), from the explicit generator on the batch's device:

- a partner ``perm[i]`` (a random permutation of the batch; this process's share of it under
  torchrun);
- whether it is mixed at all (probability ``aug.mix_p``, timm's ``mixup_prob``) and, with both
  ops in ``aug.ops``, whether by CutMix (probability ``aug.mix_switch_p``, timm's
  ``switch_prob``) or mixup;
- mixup (Zhang et al. 2018): ``lam ~ Beta(a, a)`` (``aug.mixup_alpha``), the image becomes
  ``lam x_i + (1 - lam) x_perm[i]``;
- CutMix (Yun et al. 2019): ``lam ~ Beta(a, a)`` (``aug.cutmix_alpha``), a box of sides
  ``floor(H sqrt(1 - lam))`` x ``floor(W sqrt(1 - lam))`` centred uniformly over the pixels and
  clipped at the border is pasted from the partner; ``lam`` then becomes the share of the
  image left unpasted, so the targets match the pasted area exactly.

The target of image i is ``lam_i onehot(y_i) + (1 - lam_i) onehot(y_perm[i])`` (``lam = 1``:
not mixed); :func:`mixed_cross_entropy` is the cross-entropy against it, label smoothing
applied to both one-hots (the same as smoothing the mixed target: cross-entropy is linear in
the target). "Training accuracy" under mixing counts a prediction right when it is the
image's dominant label, the one with weight at least 1/2 (:func:`dominant_labels`).

The mixing draws come from the same epoch generator as the per-image ops, after them, in the
training stream itself, so a resumed epoch replays them. Only the training step sees mixed
images: evaluation, TTA, calibration, the per-image training dynamics (which record only
unmixed images), lr-find and CAMs never do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from classlab.augment.pixels import PixelStats
from classlab.config import AugConfig

__all__ = ["MIXING", "MIXING_OPS", "Mix", "beta", "cutmix", "dominant_labels", "make_mixer",
           "mix_batch", "mixed_cross_entropy", "mixed_targets", "mixup"]

MIXING = ("cutmix", "mixup")  # the aug.ops names applied at the training step
_GAMMA_TRIES = 16  # Marsaglia-Tsang proposals per variate (each accepted with p > 0.95)


@dataclass
class Mix:
    """How a batch was mixed: image i kept weight ``lam[i]`` of itself and took ``1 - lam[i]``
    of image ``perm[i]``."""

    perm: torch.Tensor  # int64 [N]
    lam: torch.Tensor  # float32 [N], in [0, 1]; 1 = not mixed


def _gamma(a: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``[n]`` Gamma(a, 1) variates from ``gen`` (torch's own sampler takes no generator):
    Marsaglia & Tsang's method, vectorised over a fixed number of proposals per variate, so
    every call draws the same amount; for ``a < 1`` boosted as ``Gamma(a + 1) U^(1/a)``."""
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((_GAMMA_TRIES, n), generator=gen, device=device)
    u = torch.rand((_GAMMA_TRIES, n), generator=gen, device=device)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp(min=1e-30)))
    first = ok.int().argmax(0, keepdim=True)  # the first accepted proposal
    g = d * v.clamp(min=1e-30).gather(0, first)[0]
    if boost:
        g = g * torch.rand(n, generator=gen, device=device) ** (1.0 / a)
    return g


def beta(a: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``[n]`` float32 Beta(a, a) variates from ``gen``."""
    x, y = _gamma(a, n, gen, device), _gamma(a, n, gen, device)
    return x / (x + y).clamp(min=1e-30)


def _boxes(lam: torch.Tensor, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """``[N,H,W]`` bool CutMix boxes for target weights ``lam`` (see the module docstring)."""
    n, dev = lam.shape[0], lam.device
    ratio = torch.sqrt(1.0 - lam)
    ch, cw = (h * ratio).floor().long(), (w * ratio).floor().long()
    cy = torch.randint(0, h, (n,), generator=gen, device=dev)
    cx = torch.randint(0, w, (n,), generator=gen, device=dev)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch - ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw - cw // 2).clamp(0, w)
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_y = (ys >= y0[:, None]) & (ys < y1[:, None])
    in_x = (xs >= x0[:, None]) & (xs < x1[:, None])
    return in_y[:, :, None] & in_x[:, None, :]


def mix_batch(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
              ops: tuple[str, ...] | None = None) -> tuple[torch.Tensor, Mix]:
    """Mix the normalised batch ``x`` ``[N,C,H,W]`` with the ``ops`` (default: the mixing
    names in ``cfg.ops``) as the module docstring says; returns a new batch and the
    :class:`Mix`. Every call draws the same amount from ``gen``."""
    ops = tuple(o for o in cfg.ops if o in MIXING) if ops is None else ops
    n, _, h, w = x.shape
    dev = x.device
    perm = torch.randperm(n, generator=gen, device=dev)
    use = torch.rand(n, generator=gen, device=dev) < cfg.mix_p
    switch = cfg.mix_switch_p if len(ops) == 2 else (1.0 if ops == ("cutmix",) else 0.0)
    cut = torch.rand(n, generator=gen, device=dev) < switch
    lam_mixup = beta(cfg.mixup_alpha, n, gen, dev)
    box = _boxes(beta(cfg.cutmix_alpha, n, gen, dev), h, w, gen)  # [N,H,W]
    box &= (use & cut)[:, None, None]
    lam_cut = 1.0 - box.flatten(1).float().mean(1)  # the share left unpasted
    lam = torch.where(use, torch.where(cut, lam_cut, lam_mixup), 1.0)
    partner = x[perm]
    weight = torch.where(cut | ~use, 1.0, lam).to(x.dtype).view(n, 1, 1, 1)
    mixed = torch.lerp(partner, x, weight)
    return torch.where(box[:, None], partner, mixed), Mix(perm, lam)


def mixup(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
          stats: PixelStats | None = None) -> torch.Tensor:
    """The images of :func:`mix_batch` with mixup alone (the registry's ``mixup``; training
    applies it at the step, with its targets)."""
    return mix_batch(x, gen, cfg, ("mixup",))[0]


def cutmix(x: torch.Tensor, gen: torch.Generator, cfg: AugConfig,
           stats: PixelStats | None = None) -> torch.Tensor:
    """The images of :func:`mix_batch` with CutMix alone (the registry's ``cutmix``)."""
    return mix_batch(x, gen, cfg, ("cutmix",))[0]


def mixed_targets(y: torch.Tensor, mix: Mix, num_classes: int) -> torch.Tensor:
    """``[N, K]`` float32 soft targets: ``lam onehot(y) + (1 - lam) onehot(y[perm])``."""
    own = F.one_hot(y, num_classes).float()
    lam = mix.lam[:, None]
    return lam * own + (1.0 - lam) * own[mix.perm]


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mix: Mix,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``[N,K]`` against :func:`mixed_targets` with label
    smoothing (as a weighted sum of the two hard-label losses: the same value)."""
    own = F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="none")
    other = F.cross_entropy(logits, y[mix.perm], label_smoothing=label_smoothing,
                            reduction="none")
    return (mix.lam * own + (1.0 - mix.lam) * other).mean()


def dominant_labels(y: torch.Tensor, mix: Mix) -> torch.Tensor:
    """``[N]`` the label of each mixed image with weight ≥ 1/2 (its own on a tie): what
    training accuracy counts under mixing."""
    return torch.where(mix.lam >= 0.5, y, y[mix.perm])


def make_mixer(cfg: AugConfig) -> Callable[[torch.Tensor, torch.Generator],
                                           tuple[torch.Tensor, Mix]] | None:
    """``(batch, generator) -> (mixed batch, Mix)`` for the mixing ops in ``cfg.ops``, or
    None when there are none."""
    if not any(o in MIXING for o in cfg.ops):
        return None
    return lambda xb, gen: mix_batch(xb, gen, cfg)


# name -> registry op (registered into classlab.augment.AUGMENTATIONS by the package)
MIXING_OPS = {"cutmix": cutmix, "mixup": mixup}

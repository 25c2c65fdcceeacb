"""Is a saliency map faithful to the model? Deletion and insertion curves (Petsiuk, Das and
Saenko, BMVC 2018, "RISE"), against a random-map baseline.

For a map M [H,W] of image x and target class c, the pixels are ranked by M, most relevant
first (ties in a fixed random order, never raster order: a flat map must not favour the
top-left corner). With S steps, step t = 0..S covers the first k_t = round(t * H*W / S)
pixels of that ranking:

- **deletion**: those pixels are replaced by the fill. A faithful map makes the softmax
  probability p_c fall fast, so the area under the curve of p_c over the removed fraction is
  small (lower is better);
- **insertion**: only those pixels are shown, over the fill. p_c rises fast for a faithful
  map (higher is better).

The fill is ``mean`` (the training set's mean colour, 0 after normalisation) or ``blur``
(the image blurred by a Gaussian of sigma = H/16 pixels: 2 at 32x32). The areas use the
trapezoid rule over the fraction 0..1, so they are probabilities (0..1).

**Chance.** The baseline map of a layer is random: uniform values on the layer's own cell
grid (h x w), upsampled like a CAM, so its blocks are as coarse as the layer's maps (a
pixel-wise random order would be a different, unfair kind of deletion). A map is better than
chance when the per-image paired difference of (insertion - deletion) to the random map is
positive by more than twice its standard error.

Every masked image is built and scored in batches (no Python loop over images), under the
run's autocast, with no gradient.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FILLS = ("blur", "mean")

Key = tuple[str, str]  # (method, layer)


def fill_images(x: torch.Tensor, fill: str) -> torch.Tensor:
    """What replaces removed pixels of normalised ``x`` [N,3,H,W]: ``mean`` = zeros (the
    training mean after normalisation), ``blur`` = ``x`` blurred by a separable Gaussian of
    sigma = H/16 pixels (radius 3 sigma, reflected borders)."""
    if fill == "mean":
        return torch.zeros_like(x)
    if fill != "blur":
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    h, w = x.shape[-2:]
    sigma = max(1.0, h / 16)
    radius = max(1, min(int(math.ceil(3 * sigma)), min(h, w) - 1))  # reflect needs < side
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)  # [2r+1], sums to 1: a flat image stays flat
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def tie_keys(n: int, size: tuple[int, int], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """[N,H*W] random keys that order tied map values (shared by every map of an image, so
    two maps of the same image are compared under the same tie order)."""
    return torch.rand(n, size[0] * size[1], generator=generator, device=device)


def relevance_ranks(maps: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[N,H*W] int32: each pixel's place in its map's ranking, 0 = most relevant (maps
    [N,H,W]; ties ordered by ``keys`` [N,H*W])."""
    n, h, w = maps.shape
    p = h * w
    by_key = keys.argsort(dim=1)  # a random order of the pixels
    vals = maps.reshape(n, p).gather(1, by_key)
    # stable sort on -value keeps the random order among equal values
    order = by_key.gather(1, torch.sort(-vals, dim=1, stable=True).indices)  # [N,P]
    rank = torch.empty(n, p, dtype=torch.int32, device=maps.device)
    rank.scatter_(1, order, torch.arange(p, dtype=torch.int32, device=maps.device).expand(n, p))
    return rank


def step_counts(steps: int, pixels: int, device: torch.device) -> torch.Tensor:
    """[S+1] int32: k_t = round(t * pixels / S), the pixels covered at step t = 0..S."""
    t = torch.arange(steps + 1, device=device, dtype=torch.float64)
    return torch.round(t * pixels / steps).to(torch.int32)


def relevance_masks(maps: torch.Tensor, steps: int, keys: torch.Tensor) -> torch.Tensor:
    """[N,S+1,H,W] bool: mask t holds the k_t most relevant pixels of each map [N,H,W]."""
    n, h, w = maps.shape
    k = step_counts(steps, h * w, maps.device)
    rank = relevance_ranks(maps, keys)
    return (rank[:, None, :] < k[None, :, None]).view(n, steps + 1, h, w)


def random_maps(n: int, cells: tuple[int, int], size: tuple[int, int],
                generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """[N,H,W] random maps: uniform on an h x w grid, upsampled bilinearly like a CAM."""
    grid = torch.rand(n, 1, *cells, generator=generator, device=device)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]


def _layout(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def probability_curves(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                       ranks: torch.Tensor, steps: int, fill: torch.Tensor, *, amp: Any = None,
                       batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves, each [J,N,S+1] float32 probabilities of the target
    class, for J maps per image given by their pixel ranks ``ranks`` [J,N,H*W] (from
    :func:`relevance_ranks`), of the normalised images ``x`` [N,3,H,W] with ``fill``
    [N,3,H,W] and ``targets`` [N].

    Step t covers the pixels ranked below k_t (:func:`step_counts`); deletion shows
    ``fill`` there, insertion shows ``x`` there and ``fill`` elsewhere. Both ends are the
    same for every map (the whole image, the whole fill), so they are scored once per image;
    the J*N*(S-1)*2 interior images are built from the ranks (4 bytes per pixel, not S+1
    masks) and scored ``batch_size`` at a time."""
    j, n = ranks.shape[:2]
    h, w = x.shape[-2:]
    k = step_counts(steps, h * w, x.device)
    fmt = _layout(x)
    was_training = model.training
    model.eval()

    def probs(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), (amp.autocast() if amp is not None
                               else contextlib.nullcontext()):
            logits = model(xb.contiguous(memory_format=fmt)).float()
        return torch.softmax(logits, dim=1).gather(1, tb[:, None])[:, 0]  # [B]

    try:
        ends = probs(torch.cat([x, fill]), torch.cat([targets, targets]))
        p_image, p_fill = ends[:n], ends[n:]  # [N] each
        inner = steps - 1  # interior steps per curve
        total = j * n * inner * 2
        scores = []
        for q in torch.arange(total, device=x.device).split(max(1, int(batch_size))):
            # flat index q -> (map, image, step, curve): curve 0 deletion, 1 insertion
            rest, curve = q // 2, q % 2
            rest, t = rest // inner, rest % inner + 1
            js, ns = rest // n, rest % n
            covered = ranks[js, ns] < k[t][:, None]  # [B,H*W]
            hide = (covered ^ curve.bool()[:, None]).view(-1, 1, h, w)  # where fill shows
            scores.append(probs(torch.where(hide, fill[ns], x[ns]), targets[ns]))
        mid = (torch.cat(scores) if scores else x.new_zeros(0)).view(j, n, inner, 2)
    finally:
        model.train(was_training)
    pi = p_image.expand(j, n)[..., None]
    pf = p_fill.expand(j, n)[..., None]
    deletion = torch.cat([pi, mid[..., 0], pf], dim=2)  # [J,N,S+1]
    insertion = torch.cat([pf, mid[..., 1], pi], dim=2)
    return deletion, insertion


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves [...,S+1] sampled at fractions 0, 1/S, .., 1: [...]."""
    steps = curves.shape[-1] - 1
    return (curves.sum(-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / steps


@dataclass
class Faithfulness:
    """Per map set (method, layer) and per layer's random baseline: the per-image areas and
    the mean curves (for the figure)."""

    steps: int
    fill: str
    deletion: dict[Key, torch.Tensor]  # [N] AUC per image (CPU, float64)
    insertion: dict[Key, torch.Tensor]
    curves: dict[Key, tuple[torch.Tensor, torch.Tensor]]  # mean deletion, insertion [S+1]

    def rows(self, cells: dict[str, tuple[int, int]]) -> list[dict]:
        """One JSON-ready row per (method, layer), compared with its layer's random map."""
        out = []
        for (method, layer), d in self.deletion.items():
            if method == "random":
                continue
            i, dr, ir = (self.insertion[(method, layer)], self.deletion[("random", layer)],
                         self.insertion[("random", layer)])
            gain = (i - d) - (ir - dr)  # [N] paired: this map minus chance, same image
            n = len(gain)
            se = float(gain.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
            mean = float(gain.mean()) if n else float("nan")
            out.append({
                "method": method, "layer": layer, "cells": list(cells[layer]), "images": n,
                "deletion_auc": float(d.mean()), "insertion_auc": float(i.mean()),
                "random_deletion_auc": float(dr.mean()),
                "random_insertion_auc": float(ir.mean()),
                "gain": mean, "gain_se": se,
                "better_than_chance": bool(n > 1 and mean > 2 * se),
            })
        return out


def faithfulness(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                 maps: dict[Key, torch.Tensor], cells: dict[str, tuple[int, int]], *,
                 steps: int = 16, fill: str = "mean", seed: int = 0, amp: Any = None,
                 batch_size: int = 512) -> Faithfulness:
    """Deletion / insertion AUCs of every map set ``maps`` ((method, layer) -> [N,H,W] for
    the normalised images ``x`` [N,3,H,W] and ``targets`` [N]) and of one random map per
    layer of ``cells`` (layer -> its map's (h, w) cells), keyed ("random", layer).

    ``seed`` fixes the random maps and the tie order, so a rerun gives the same numbers."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    n, size, dev = len(x), tuple(x.shape[-2:]), x.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    keys = tie_keys(n, size, gen, dev)
    sets = dict(maps)
    for layer in dict.fromkeys(layer for _, layer in maps):
        sets[("random", layer)] = random_maps(n, cells[layer], size, gen, dev)
    names = list(sets)
    ranks = torch.stack([relevance_ranks(sets[k].to(dev).float(), keys)
                         for k in names])  # [J,N,H*W] int32
    deletion, insertion = probability_curves(model, x, targets.to(dev), ranks, steps,
                                             fill_images(x, fill), amp=amp,
                                             batch_size=batch_size)
    d_auc, i_auc = auc(deletion).double().cpu(), auc(insertion).double().cpu()  # [J,N]
    return Faithfulness(
        steps, fill,
        {k: d_auc[j] for j, k in enumerate(names)},
        {k: i_auc[j] for j, k in enumerate(names)},
        {k: (deletion[j].mean(0).cpu(), insertion[j].mean(0).cpu())
         for j, k in enumerate(names)})

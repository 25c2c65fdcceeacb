"""Normalization layers by name: each a factory ``(channels) -> nn.Module``.

Inner blocks receive the factory and never see a name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from classlab.config import ModelConfig

NormLayer = Callable[[int], nn.Module]


def _group_norm(channels: int, groups: int) -> nn.Module:
    return nn.GroupNorm(groups, channels)


def _batch_norm(cfg: ModelConfig) -> NormLayer:
    """BatchNorm2d: batch statistics while training, running averages at eval."""
    return nn.BatchNorm2d


def _layer_norm(cfg: ModelConfig) -> NormLayer:
    """The spec's "Layer Normalization" for conv nets: statistics over (C, H, W) of each
    image, with a per-channel affine, which is GroupNorm with a single group."""
    return partial(_group_norm, groups=1)


def _gn(cfg: ModelConfig) -> NormLayer:
    """GroupNorm with ``model.gn_groups`` groups (must divide every layer's channels)."""
    return partial(_group_norm, groups=cfg.gn_groups)


# model.norm -> factory of the norm layer (the names are classlab.config.schema.NORMS)
NORMS: dict[str, Callable[[ModelConfig], NormLayer]] = {
    "bn": _batch_norm,
    "gn": _gn,
    "ln": _layer_norm,
}


def norm_layer(cfg: ModelConfig) -> NormLayer:
    """The norm-layer factory named by ``cfg.norm``; an unknown name is an error, never a
    silent default."""
    if cfg.norm not in NORMS:
        raise KeyError(f"model.norm: unknown value {cfg.norm!r}; allowed: {', '.join(NORMS)}")
    return NORMS[cfg.norm](cfg)

"""Models and normalization layers, each from a registry.

Names become classes once, here at the edge (:func:`build_model`); inner blocks receive a
``norm_layer`` callable ``(channels) -> nn.Module`` and never see a string. The names are
:data:`classlab.config.schema.MODELS` and :data:`~classlab.config.schema.NORMS`.

- :mod:`~classlab.models.resnet`: the spec's ResNet18/34 for 32x32 images
- :mod:`~classlab.models.fastnet`: the fast recipe's airbench-like net
- :mod:`~classlab.models.norms`: BatchNorm, LayerNorm (one group), GroupNorm
- :mod:`~classlab.models.activations`: the activations ``model.activation`` may name
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from classlab.config import ModelConfig
from classlab.models.activations import ACTIVATIONS, Activation
from classlab.models.fastnet import FastNet, fastnet
from classlab.models.norms import NORMS, NormLayer, norm_layer
from classlab.models.resnet import CifarResNet, resnet18, resnet34

ModelFn = Callable[..., nn.Module]  # (num_classes, norm_layer, width, act) -> model
MODELS: dict[str, ModelFn] = {"fastnet": fastnet, "resnet18": resnet18, "resnet34": resnet34}


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Resolve the registry names in ``cfg`` and build the model (weights from torch's RNG)."""
    if cfg.name not in MODELS:
        raise KeyError(f"model.name: unknown model {cfg.name!r}; allowed: {', '.join(MODELS)}")
    if cfg.activation != "auto" and cfg.activation not in ACTIVATIONS:
        raise KeyError(f"model.activation: unknown value {cfg.activation!r}; allowed: auto, "
                       f"{', '.join(ACTIVATIONS)}")
    return MODELS[cfg.name](num_classes=num_classes, norm_layer=norm_layer(cfg),
                            width=cfg.width, act=ACTIVATIONS.get(cfg.activation))


def count_params(model: nn.Module) -> int:
    """Trainable parameters (the spec's "Params" column)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ACTIVATIONS", "MODELS", "NORMS", "Activation", "CifarResNet", "FastNet", "NormLayer",
           "build_model", "count_params", "norm_layer", "resnet18", "resnet34"]

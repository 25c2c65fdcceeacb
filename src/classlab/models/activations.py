"""Activations by name (``model.activation``): each a factory ``() -> nn.Module``.

Inner blocks receive the factory, or None for the architecture's own (``auto``: ReLU in the
ResNets, GELU in fastnet), and never see a name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Activation = Callable[[], nn.Module]

# model.activation -> factory (the names are classlab.config.schema.ACTIVATIONS)
ACTIVATIONS: dict[str, Activation] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}

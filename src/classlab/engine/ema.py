"""Exponential moving average of the weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Ema:
    """Exponential moving average of a model's weights, kept as a full copy of the model.

    After each optimizer step: ``w_ema <- decay * w_ema + (1 - decay) * w``; buffers (BatchNorm
    running statistics) are copied, since they are already running averages.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()),
                             [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

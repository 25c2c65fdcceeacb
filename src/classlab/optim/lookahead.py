"""Lookahead with airbench's late-training ramp, as an optimizer post-step hook."""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    """Lookahead (Zhang et al. 2019, "k steps forward, 1 step back") on a model's weights,
    with airbench's late-training ramp (Keller Jordan, arXiv 2404.00498).

    Every ``every`` optimizer steps the slow copy moves toward the trained (fast) weights,
    ``slow <- decay_t * slow + (1 - decay_t) * fast``, and the fast weights restart from
    it. ``decay_t = decay**every * (t / total)**3``: ~0 early on (lookahead does nothing
    while the LR is high), up to ``decay**every`` at the end; after step ``total`` the fast
    weights are set to the slow ones. The slow copy covers every floating-point entry of
    the state dict, BatchNorm running statistics included (they then match the weights).

    Runs as an optimizer post-step hook (:meth:`attach`), so a step skipped by the fp16
    gradient scaler does not count; :meth:`state_dict` goes into checkpoints.
    """

    def __init__(self, model: nn.Module, every: int, decay: float, total: int) -> None:
        self.every, self.decay, self.total = every, decay, total
        self.steps = 0
        self.active = True  # False while an LR range test borrows the optimizer
        # state_dict() tensors share storage with the module: copy_ into them updates it
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.fast]

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_post_hook(lambda *_: self.after_step())

    @torch.no_grad()
    def after_step(self) -> None:
        if not self.active:
            return
        self.steps += 1
        if self.steps == self.total:  # end of training: the slow weights are the result
            torch._foreach_copy_(self.fast, self.slow)
        elif self.steps < self.total and self.steps % self.every == 0:
            decay = self.decay ** self.every * (self.steps / self.total) ** 3
            torch._foreach_lerp_(self.slow, self.fast, 1.0 - decay)
            torch._foreach_copy_(self.fast, self.slow)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": [t.clone() for t in self.slow]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for t, s in zip(self.slow, state["slow"]):
            t.copy_(s)

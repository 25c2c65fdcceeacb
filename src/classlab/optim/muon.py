"""Muon for the conv filters, SGD for everything else (``optim.name: muon``).

Muon (Keller Jordan, 2024; used by the airbench94_muon CIFAR-10 speed record) replaces a
filter bank's momentum update ``M`` (``[out, in, kh, kw]``, viewed as ``[out, in*kh*kw]``) by
an approximately orthogonal matrix with the same singular vectors, computed by a few
Newton-Schulz iterations, and keeps each bank at a fixed norm (``sqrt(out)``) so the step
size is ``lr`` whatever the gradient scale. The published recipe's facts used here: quintic
iteration coefficients (3.4445, -4.7750, 2.0315), 3 iterations, Nesterov momentum 0.6, lr 0.24,
no weight decay on the filters.

Every other trainable parameter (the linear head, norm biases) is updated as classlab's
``sgd`` would (``optim.lr``, ``optim.momentum``, ``optim.nesterov``, L2 ``weight_decay``, the
norm/bias LR scale), so a recipe switches the filters to Muon and keeps the rest. One
optimizer holds both, so schedulers, Lookahead and checkpoints see one object.
"""

from __future__ import annotations

import torch

from classlab.config import OptimConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz approximation of ``U V^T`` for ``g = U S V^T`` (``[m, n]``, float32).

    Singular values end up roughly in [0.5, 1.5] rather than exactly 1, which the method's
    author found does not hurt; float32 here (the matrices are small next to a conv step)."""
    a, b, c = NS_COEFFS
    x = g.float() / (g.norm() + eps)  # top singular value <= 1
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T  # [m, m] with m = min(rows, cols)
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Groups with ``muon=True`` (4-D filters) take Muon steps; the others SGD steps."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool) -> None:
        super().__init__(groups, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": 0.0, "muon": False})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        g = p.grad
        if group["weight_decay"] and not group["muon"]:
            g = g.add(p, alpha=group["weight_decay"])
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(g)
        mom = group["momentum"]
        buf.mul_(mom).add_(g)  # torch SGD's recursion (no dampening), also Muon's
        step = g.add(buf, alpha=mom) if group["nesterov"] else buf
        if not group["muon"]:
            p.add_(step, alpha=-group["lr"])
            return
        out = p.shape[0]
        p.mul_(out ** 0.5 / p.norm().clamp_min(1e-12))  # keep the bank at norm sqrt(out)
        update = orthogonalize(step.reshape(out, -1)).view(p.shape).to(p.dtype)
        p.add_(update, alpha=-group["lr"])


def muon_groups(groups: list[dict], cfg: OptimConfig) -> list[dict]:
    """Split ``param_groups``' output: 4-D filters first, as a Muon group (no decay), then the
    SGD groups without them."""
    filters = [p for g in groups for p in g["params"] if p.ndim == 4]
    rest = [{**g, "params": [p for p in g["params"] if p.ndim != 4]} for g in groups]
    out = [{"params": filters, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum,
            "weight_decay": 0.0, "nesterov": True, "muon": True}] if filters else []
    return out + [g for g in rest if g["params"]]


def build_muon(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return Muon(muon_groups(groups, cfg), lr=cfg.lr, momentum=cfg.momentum,
                nesterov=cfg.nesterov and cfg.momentum > 0)

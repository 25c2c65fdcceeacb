"""Optimizers by name (torch's own classes), with per-group weight decay and LR scale for
norm weights and biases."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from classlab.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """One group, or two when norm weights / biases get their own weight decay or LR; plus,
    with ``optim.whiten_bias_epochs``, a last group holding fastnet's whitening bias.

    A parameter counts as "norm or bias" when it is 1-D (BN/GN/LN affine, conv/linear bias):
    decaying those shrinks the scale of normalized activations without regularising anything.
    """
    window = whiten_bias_group(model, cfg)
    held = {id(p) for p in window["params"]} if window else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in held]
    if not cfg.no_decay_norm_bias and cfg.norm_bias_lr_scale == 1.0:
        groups = [{"params": params, "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
    else:
        nd = [p for p in params if p.ndim <= 1]
        wd = [p for p in params if p.ndim > 1]
        groups = [
            {"params": wd, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
            {"params": nd, "weight_decay": 0.0 if cfg.no_decay_norm_bias else cfg.weight_decay,
             "lr": cfg.lr * cfg.norm_bias_lr_scale},
        ]
    return groups + ([window] if window else [])


def whiten_bias_group(model: nn.Module, cfg: OptimConfig) -> dict | None:
    """``optim.whiten_bias_epochs > 0``: the whitening layer's bias, made trainable, in a group
    of its own (the norm biases' LR, no decay) whose ``train_epochs`` key tells the scheduler
    to decay its LR to 0 over those epochs and then freeze it (:class:`~.schedulers.Window`).
    Setting it trainable here means every optimizer built for the model (the run's, the speed
    probe's) times and trains the same backward pass."""
    whiten = getattr(model, "whiten", None)
    if cfg.whiten_bias_epochs <= 0 or not isinstance(whiten, nn.Conv2d) or whiten.bias is None:
        return None
    whiten.bias.requires_grad_(True)
    return {"params": [whiten.bias], "weight_decay": 0.0, "lr": cfg.lr * cfg.norm_bias_lr_scale,
            "train_epochs": cfg.whiten_bias_epochs}


def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
                           and cfg.momentum > 0, weight_decay=cfg.weight_decay)


def _adam(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    # Adam's weight_decay is coupled: added to the gradient before the adaptive scaling.
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)


def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    # AdamW's is decoupled: w <- w - lr * wd * w, independent of the gradient scaling.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             weight_decay=cfg.weight_decay)


def _muon(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    from classlab.optim.muon import build_muon

    return build_muon(groups, cfg)


OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "muon": _muon,
}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](param_groups(model, cfg), cfg)


def current_lr(opt: torch.optim.Optimizer) -> float:
    """LR of the first parameter group (the one that holds the conv/linear weights)."""
    return float(opt.param_groups[0]["lr"])


def current_momentum(opt: torch.optim.Optimizer) -> float | None:
    """SGD momentum or Adam beta1 of the first group (cycled by onecycle)."""
    g = opt.param_groups[0]
    if "betas" in g:
        return float(g["betas"][0])
    return float(g["momentum"]) if "momentum" in g else None

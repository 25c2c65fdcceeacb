"""Class activation maps: one small function per method, hooks that are always removed, and
:func:`compute_cams` (one forward and one backward pass for all layers and images).

The method names are :data:`classlab.config.schema.CAMS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class DiagnoseError(RuntimeError):
    """Bad diagnose input (layer, method, count, target); one-line, user-facing message."""


# (activations A [N,K,h,w], gradients dy_c/dA [N,K,h,w]) -> raw map [N,h,w] (after ReLU)
CamFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al. 2017: alpha_k = mean_ij g_k(i,j); map = ReLU(sum_k alpha_k A_k)."""
    alpha = g.mean(dim=(2, 3), keepdim=True)  # [N,K,1,1]
    return torch.relu((alpha * a).sum(1))


def _gradcampp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Chattopadhyay et al. 2018 (Grad-CAM++), with the paper's exponential-score closed form:
    a_kij = g^2 / (2 g^2 + sum_ab A_k(a,b) g^3), w_k = sum_ij a_kij ReLU(g_kij),
    map = ReLU(sum_k w_k A_k)."""
    g2 = g * g
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g  # [N,K,h,w]
    # Where the gradient (hence the numerator) is 0, the coefficient is 0 by definition; a
    # denominator of exactly 0 elsewhere would divide by zero, so it gets 0 as well.
    ok = (g != 0) & (denom != 0)
    coef = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)),
                       torch.zeros_like(g))
    w = (coef * torch.relu(g)).sum(dim=(2, 3), keepdim=True)  # [N,K,1,1]
    return torch.relu((w * a).sum(1))


def _layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Jiang et al. 2021 (LayerCAM): map = ReLU(sum_k ReLU(g_k) * A_k), element-wise."""
    return torch.relu((torch.relu(g) * a).sum(1))


CAMS: dict[str, CamFn] = {"gradcam": _gradcam, "gradcampp": _gradcampp, "layercam": _layercam}


# --------------------------------------------------------------------------- hooks


@dataclass
class Captured:
    """What :func:`capture` records of one module during a forward/backward pass."""

    name: str
    module: nn.Module
    activations: torch.Tensor | None = None  # the module's output, still in the graph
    gradients: torch.Tensor | None = None  # d(backpropagated scalar)/d(activations)
    _tensor_hooks: list = field(default_factory=list, repr=False)


def module_named(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise DiagnoseError(f"diagnose.layers: unknown layer {name!r}; valid: "
                            f"{', '.join(valid_layers(model))}")
    return modules[name]


def valid_layers(model: nn.Module) -> list[str]:
    """Every named submodule, the model's direct children first (the usual CAM targets)."""
    top = [n for n, _ in model.named_children()]
    rest = [n for n, _ in model.named_modules() if n and n not in top]
    return top + rest


@contextlib.contextmanager
def capture(model: nn.Module, layer_name: str) -> Iterator[Captured]:
    """Record the output of ``model.<layer_name>`` and, on backward, its gradient.

    A forward hook keeps the output and puts a tensor hook on it for the gradient (a tensor
    hook sees the gradient of exactly that tensor, unlike a module backward hook). Both kinds
    of hook are removed on exit, also when the body raises, so nothing leaks into later
    forward passes or keeps the graph alive.
    """
    cap = Captured(layer_name, module_named(model, layer_name))

    def save_grad(grad: torch.Tensor) -> None:
        cap.gradients = grad

    def on_forward(_mod: nn.Module, _inp: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise DiagnoseError(f"diagnose.layers: {layer_name!r} does not output a tensor")
        # A module called more than once per forward (e.g. a shared activation) is recorded
        # at its last call, and only that output's gradient is kept, so the two match.
        for h in cap._tensor_hooks:
            h.remove()
        cap._tensor_hooks.clear()
        cap.activations, cap.gradients = out, None
        if out.requires_grad:
            cap._tensor_hooks.append(out.register_hook(save_grad))

    handle = cap.module.register_forward_hook(on_forward)
    try:
        yield cap
    finally:
        handle.remove()
        for h in cap._tensor_hooks:
            h.remove()
        cap._tensor_hooks.clear()


# --------------------------------------------------------------------------- CAMs


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Min-max each map of ``cam`` [N,H,W] to [0,1]; a flat map (constant up to float
    rounding, e.g. all zeros) becomes all zeros instead of 0/0 = NaN or amplified noise."""
    cam = torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    lo = cam.amin(dim=(1, 2), keepdim=True)  # [N,1,1]
    hi = cam.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    scale = torch.maximum(hi.abs(), lo.abs())
    flat = span <= torch.clamp(scale * 1e-5, min=torch.finfo(cam.dtype).tiny)
    out = (cam - lo) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, torch.zeros_like(out), out).clamp_(0.0, 1.0)


def _check_targets(targets: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """``[N]`` class ids (None: each image's predicted class), checked against the logits."""
    n, k = logits.shape
    if targets is None:
        return logits.argmax(1)
    targets = torch.as_tensor(targets, device=logits.device).long().view(-1)
    if targets.shape[0] != n or bool(((targets < 0) | (targets >= k)).any()):
        raise DiagnoseError(f"CAM targets must be {n} class ids in [0, {k}); got "
                            f"{targets.tolist()}")
    return targets


def _forward_backward(model: nn.Module, x: torch.Tensor, layers: list[str],
                      targets: torch.Tensor | None) -> list[tuple[Captured, torch.Tensor | None]]:
    """One forward pass recording every layer's output, one backward pass of the summed target
    logits: (capture, gradient or None) per layer. The hooks are removed on return."""
    with contextlib.ExitStack() as stack, torch.enable_grad():
        caps = [stack.enter_context(capture(model, name)) for name in layers]
        # A fresh leaf that requires grad: the layer outputs are in a graph even when the
        # model's parameters are frozen, and a caller's inference tensor is not reused.
        inp = x.detach().clone()
        inp = (inp if inp.is_floating_point() else inp.float()).requires_grad_(True)
        logits = model(inp).float()  # [N,C]
        targets = _check_targets(targets, logits)
        for c in caps:
            if c.activations is None:
                raise DiagnoseError(f"diagnose.layers: {c.name!r} is not used by the "
                                    "model's forward pass")
        # In eval mode the images of a batch do not interact (BatchNorm uses its running
        # statistics), so d(sum_i y_{i,c_i})/dA_i = dy_{i,c_i}/dA_i: one backward pass
        # gives every image's gradient at every layer.
        score = logits.gather(1, targets[:, None]).sum()
        # A layer whose output does not depend on the input has no gradient (zeros).
        live = [c.activations for c in caps if c.activations.requires_grad]
        found = iter(torch.autograd.grad(score, live, allow_unused=True) if live else [])
        grads = [next(found) if c.activations.requires_grad else None for c in caps]
    return list(zip(caps, grads, strict=True))


def compute_cams(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    method: str = "gradcam",
    targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Class activation maps of ``x`` (normalised float ``[N,3,H,W]``) at each of ``layers``.

    ``targets``: ``[N]`` class ids; None means each image's predicted class. The score y_c
    is the logit (pre-softmax). Returns ``layer -> [N,H,W]`` float32 maps on ``x``'s device,
    upsampled bilinearly (align_corners=False) to ``H,W`` and min-max normalised per image.

    One forward and one backward pass for all layers. The model runs in eval mode (its
    training flag is restored afterwards); gradients are taken with ``torch.autograd.grad``
    with respect to the layer outputs only, so no parameter ``.grad`` is created or changed.
    """
    if method not in CAMS:
        raise DiagnoseError(f"diagnose.method: unknown method {method!r}; allowed: "
                            f"{', '.join(CAMS)}")
    layers = list(dict.fromkeys(layers))  # unique, in order
    if not layers:
        raise DiagnoseError("diagnose.layers: no layer given")
    for name in layers:  # check every name before any hook is placed
        module_named(model, name)
    h, w = x.shape[-2:]
    was_training = model.training
    model.eval()
    try:
        maps = {}
        for c, g in _forward_backward(model, x, layers, targets):
            a = c.activations.detach().float()  # [N,K,h',w']
            g = torch.zeros_like(a) if g is None else g.detach().float()
            cam = CAMS[method](a, g)  # [N,h',w']
            cam = F.interpolate(cam[:, None], size=(h, w), mode="bilinear",
                                align_corners=False)[:, 0]  # [N,H,W]
            maps[c.name] = _normalise(cam)
            c.activations = c.gradients = None  # drop the graph now
        return maps
    finally:
        model.train(was_training)

"""Class activation maps: one small registry entry per method, hooks that are always removed,
and :func:`compute_cams_by_method` (one forward pass, and one backward pass when a method
needs gradients, for all layers, methods and images).

The method names are :data:`classlab.config.schema.CAMS`. A method declares what it needs
besides the layer's activations ``A [N,K,h,w]``:

- ``"gradients"``: ``fn(A, dy_c/dA) -> map [N,h,w]`` (Grad-CAM, Grad-CAM++, LayerCAM,
  XGrad-CAM, HiResCAM);
- ``"nothing"``: ``fn(A) -> map`` (Eigen-CAM: no target, no gradient);
- ``"scores"``: ``fn(A, scorer) -> map``, where ``scorer(masks [N,K,H,W]) -> [N,K]`` runs
  the batched masked forward passes (Score-CAM).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from classlab.config.schema import CAM_TITLES


class DiagnoseError(RuntimeError):
    """Bad diagnose input (layer, method, count, target); one-line, user-facing message."""


# --------------------------------------------------------------------------- the methods


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


def _xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Fu et al. 2020 (XGrad-CAM, "Axiom-based Grad-CAM"):
    alpha_k = sum_ij (A_k(i,j) / sum_ab A_k(a,b)) g_k(i,j); map = ReLU(sum_k alpha_k A_k).
    A channel whose activations sum to exactly 0 gets alpha_k = 0 (0/0 otherwise)."""
    total = a.sum(dim=(2, 3), keepdim=True)  # [N,K,1,1]
    ok = total != 0
    alpha = torch.where(ok, (a * g).sum(dim=(2, 3), keepdim=True)
                        / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(total))
    return torch.relu((alpha * a).sum(1))


def _hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Draelos & Carin 2020 (HiResCAM): map = ReLU(sum_k g_k * A_k), element-wise (LayerCAM
    without the ReLU on the gradient; the sum before the ReLU is the exact contribution of
    each position to the score when the layers above are linear)."""
    return torch.relu((g * a).sum(1))


def _eigencam(a: torch.Tensor) -> torch.Tensor:
    """Muhammad & Yeasin 2020 (Eigen-CAM): the activations of each image as a matrix
    O [h*w, K] projected on its first right singular vector v_1: map = O v_1 (= s_1 u_1), no
    centring, no target class, no gradient. A singular vector's sign is arbitrary, so it is
    chosen to make the map's sum >= 0 (for non-negative activations v_1 has one sign and the
    map is then >= 0); then ReLU as for the other methods."""
    n, k, h, w = a.shape
    o = a.flatten(2).transpose(1, 2).double()  # [N,h*w,K]; float64: SVD of near-rank-1 data
    u, s, _ = torch.linalg.svd(o, full_matrices=False)  # u [N,h*w,r], s [N,r] (descending)
    proj = u[:, :, 0] * s[:, :1]  # [N,h*w]: O v_1 = s_1 u_1
    sign = torch.where(proj.sum(1, keepdim=True) < 0, -1.0, 1.0).to(proj.dtype)
    return torch.relu(proj * sign).view(n, h, w).to(a.dtype)


def _scorecam(a: torch.Tensor, score: MaskScorer) -> torch.Tensor:
    """Wang et al. 2020 (Score-CAM): each channel, upsampled to the input size and min-max
    scaled to [0,1], masks the input: H_k = norm(up(A_k)); its weight is the channel's
    increase of confidence alpha_k = p_c(X * H_k) - p_c(X_b) (softmax probability of the
    target class, X_b the baseline: the dataset-mean image); map = ReLU(sum_k alpha_k A_k).
    ``score`` turns masks [N,K,H,W] into alpha [N,K] with batched forward passes."""
    n, k, h, w = a.shape
    up = F.interpolate(a.reshape(n * k, 1, h, w), size=score.size, mode="bilinear",
                       align_corners=False)[:, 0]  # [N*K,H,W]
    masks = _normalise(up).view(n, k, *score.size)
    alpha = score(masks)  # [N,K]
    return torch.relu((alpha[:, :, None, None] * a).sum(1))


@dataclass(frozen=True)
class CamMethod:
    """One CAM method: its map function and what it needs (see the module docstring)."""

    fn: Callable[..., torch.Tensor]
    needs: str = "gradients"  # "gradients" | "nothing" | "scores"
    # Smallest h*w of the layer's map the method can use: a 1x1 map upsampled is one
    # constant (Score-CAM: every mask would be the same flat mask; Eigen-CAM: no spatial
    # component to project on).
    min_cells: int = 1
    class_specific: bool = True  # False: the map ignores the target class (Eigen-CAM)
    name: str = ""  # its config name, filled in by the registry below

    @property
    def title(self) -> str:
        """Display name in figures and the report (the vocabulary's CAM_TITLES)."""
        return CAM_TITLES[self.name]


CAMS: dict[str, CamMethod] = {
    name: dataclasses.replace(method, name=name) for name, method in {
        "eigencam": CamMethod(_eigencam, needs="nothing", min_cells=2, class_specific=False),
        "gradcam": CamMethod(_gradcam),
        "gradcampp": CamMethod(_gradcampp),
        "hirescam": CamMethod(_hirescam),
        "layercam": CamMethod(_layercam),
        "scorecam": CamMethod(_scorecam, needs="scores", min_cells=2),
        "xgradcam": CamMethod(_xgradcam),
    }.items()
}


def check_methods(methods: list[str]) -> None:
    """One-line DiagnoseError for an unknown method name, listing the valid ones."""
    for m in methods:
        if m not in CAMS:
            raise DiagnoseError(f"diagnose.method: unknown method {m!r}; allowed: "
                                f"{', '.join(CAMS)}")


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


# --------------------------------------------------------------------------- layer checks


def layer_shapes(model: nn.Module, layers: list[str],
                 image_hw: tuple[int, int]) -> dict[str, tuple[int, ...] | None]:
    """Per-image output shape of each layer (None: not a tensor, or not called), from one
    forward pass of one blank ``[1,3,H,W]`` image on the model's device: the meta device for
    a skeleton, so checking costs nothing there. Hooks and the training flag are restored."""
    mods = {name: module_named(model, name) for name in layers}
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    shapes: dict[str, tuple[int, ...] | None] = dict.fromkeys(layers)

    def hook(name: str):
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in mods.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *image_hw, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def check_layers(model: nn.Module, layers: list[str], methods: list[str],
                 image_hw: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """The ``(h, w)`` map size of each layer, after a one-line DiagnoseError for a layer that
    gives no ``[K,h,w]`` feature map or one too small for a method's masks."""
    # The model's direct children too: the hint of an error names those that would do.
    top = [n for n, _ in model.named_children()]
    shapes = layer_shapes(model, list(dict.fromkeys([*layers, *top])), image_hw)
    cells: dict[str, tuple[int, int]] = {}
    for name in layers:
        shape = shapes[name]
        if shape is None:
            raise DiagnoseError(f"diagnose.layers: {name!r} is not used by the model's "
                                "forward pass (or does not output a tensor)")
        if len(shape) != 3:
            spatial = [n for n in top if shapes[n] is not None and len(shapes[n]) == 3
                       and shapes[n][1] * shapes[n][2] > 1]
            hint = f"; e.g. {', '.join(spatial)}" if spatial else ""
            raise DiagnoseError(f"diagnose.layers: {name!r} outputs [{', '.join(map(str, shape))}]"
                                f" per image, not a [channels, h, w] feature map{hint}")
        h, w = shape[1], shape[2]
        for m in methods:
            need = CAMS[m].min_cells
            if h * w < need:
                raise DiagnoseError(f"diagnose.layers: {name!r} gives a {h}x{w} map, too "
                                    f"small for {m}'s masks (needs at least {need} cells)")
        cells[name] = (h, w)
    return cells


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


def _autocast(amp: Any) -> contextlib.AbstractContextManager:
    """The run's autocast (:class:`classlab.engine.Amp`), or none."""
    return amp.autocast() if amp is not None else contextlib.nullcontext()


def _forward_backward(model: nn.Module, x: torch.Tensor, layers: list[str],
                      targets: torch.Tensor | None, need_grad: bool, amp: Any
                      ) -> tuple[list[tuple[Captured, torch.Tensor | None]], torch.Tensor]:
    """One forward pass recording every layer's output and, if ``need_grad``, one backward
    pass of the summed target logits: ((capture, gradient or None) per layer, targets [N]).
    The hooks are removed on return."""
    grad_mode = torch.enable_grad() if need_grad else torch.no_grad()
    with contextlib.ExitStack() as stack, grad_mode:
        caps = [stack.enter_context(capture(model, name)) for name in layers]
        # A fresh leaf that requires grad: the layer outputs are in a graph even when the
        # model's parameters are frozen, and a caller's inference tensor is not reused.
        inp = x.detach().clone()
        inp = (inp if inp.is_floating_point() else inp.float()).requires_grad_(need_grad)
        with _autocast(amp):
            logits = model(inp).float()  # [N,C]
        targets = _check_targets(targets, logits)
        for c in caps:
            if c.activations is None:
                raise DiagnoseError(f"diagnose.layers: {c.name!r} is not used by the "
                                    "model's forward pass")
        if not need_grad:
            return [(c, None) for c in caps], targets
        # In eval mode the images of a batch do not interact (BatchNorm uses its running
        # statistics), so d(sum_i y_{i,c_i})/dA_i = dy_{i,c_i}/dA_i: one backward pass
        # gives every image's gradient at every layer.
        score = logits.gather(1, targets[:, None]).sum()
        # A layer whose output does not depend on the input has no gradient (zeros).
        live = [c.activations for c in caps if c.activations.requires_grad]
        found = iter(torch.autograd.grad(score, live, allow_unused=True) if live else [])
        grads = [next(found) if c.activations.requires_grad else None for c in caps]
    return list(zip(caps, grads, strict=True)), targets


class MaskScorer:
    """Score-CAM's masked forward passes: ``scorer(masks [N,K,H,W] in [0,1]) -> [N,K]``,
    p_c(x_n * M_nk) - p_c(baseline) for image n's target c_n (softmax probabilities).

    ``x`` is normalised, so multiplying by a mask moves the masked-out pixels to 0, the
    training set's mean colour; the baseline is the all-mean image (x * 0). The N*K masked
    images are built and scored ``batch_size`` at a time under the run's autocast, with no
    gradient. Identical images (e.g. the same image with two targets) are scored once: their
    activations, hence masks, are identical and one forward pass gives every class.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, amp: Any,
                 batch_size: int) -> None:
        self.model, self.amp, self.batch_size = model, amp, max(1, int(batch_size))
        self.size = tuple(x.shape[-2:])  # (H, W)
        uniq, inverse = torch.unique(x.flatten(1), dim=0, return_inverse=True)
        # first occurrence of each distinct image: [U] indices into x
        first = torch.full((len(uniq),), len(x), dtype=torch.long, device=x.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(x), device=x.device), "amin")
        self.x, self.first, self.inverse, self.targets = x[first], first, inverse, targets
        self.baseline = self._probs(torch.zeros_like(x[:1]))[0]  # [C]

    def _probs(self, xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _autocast(self.amp):
            return torch.softmax(self.model(xb).float(), dim=1)  # [B,C]

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        m = masks[self.first]  # [U,K,H,W]
        u, k = m.shape[:2]
        flat = torch.arange(u * k, device=m.device)
        probs = torch.cat([  # [U*K,C]; one batched forward pass per chunk of masked images
            self._probs(self.x[chunk // k] * m.flatten(0, 1)[chunk][:, None])
            for chunk in flat.split(self.batch_size)]).view(u, k, -1)
        per_image = probs[self.inverse]  # [N,K,C]
        gain = per_image - self.baseline  # increase of confidence, every class
        return gain.gather(2, self.targets.view(-1, 1, 1).expand(-1, k, 1))[..., 0]  # [N,K]


def compute_cams_by_method(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    methods: list[str],
    targets: torch.Tensor | None = None,
    *,
    amp: Any = None,
    batch_size: int = 512,
) -> dict[str, dict[str, torch.Tensor]]:
    """``method -> layer -> [N,H,W]`` maps of ``x`` (normalised float ``[N,3,H,W]``).

    ``targets``: ``[N]`` class ids; None means each image's predicted class. The score y_c
    of the gradient methods is the logit (pre-softmax); Score-CAM uses the softmax
    probability. Maps are float32 on ``x``'s device, upsampled bilinearly
    (align_corners=False) to ``H,W`` and min-max normalised per image.

    One forward pass records every layer; one backward pass (only when a method needs
    gradients) serves every gradient method; Score-CAM adds its batched masked forward
    passes (``batch_size`` images each). ``amp``: the run's :class:`classlab.engine.Amp`
    (autocast), None for float32. The model runs in eval mode (its training flag is restored
    afterwards); gradients are taken with ``torch.autograd.grad`` with respect to the layer
    outputs only, so no parameter ``.grad`` is created or changed.
    """
    methods = list(dict.fromkeys(methods))
    check_methods(methods)
    layers = list(dict.fromkeys(layers))  # unique, in order
    if not layers:
        raise DiagnoseError("diagnose.layers: no layer given")
    for name in layers:  # check every name before any hook is placed
        module_named(model, name)
    h, w = x.shape[-2:]
    need_grad = any(CAMS[m].needs == "gradients" for m in methods)
    was_training = model.training
    model.eval()
    try:
        captured, targets = _forward_backward(model, x, layers, targets, need_grad, amp)
        scorer = (MaskScorer(model, x.detach().float(), targets, amp, batch_size)
                  if any(CAMS[m].needs == "scores" for m in methods) else None)
        maps: dict[str, dict[str, torch.Tensor]] = {m: {} for m in methods}
        for c, g in captured:
            for m, cam in _layer_maps(c, g, methods, scorer, (h, w)).items():
                maps[m][c.name] = cam
        return maps
    finally:
        model.train(was_training)


def _layer_maps(c: Any, g: torch.Tensor | None, methods: list[str], scorer: Any,
                size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Every method's ``[N,H,W]`` map of one captured layer ``c`` (its activations, and
    ``g`` their gradients), upsampled to ``size`` and normalised per image."""
    a = c.activations.detach().float()  # [N,K,h',w']
    if a.ndim != 4:
        raise DiagnoseError(f"diagnose.layers: {c.name!r} outputs {list(a.shape)}, not an "
                            "[N,K,h,w] feature map")
    g = torch.zeros_like(a) if g is None else g.detach().float()
    c.activations = c.gradients = None  # drop the graph now
    out = {}
    for m in methods:
        method = CAMS[m]
        if a.shape[2] * a.shape[3] < method.min_cells:
            raise DiagnoseError(f"diagnose.layers: {c.name!r} gives a {a.shape[2]}x{a.shape[3]} "
                                f"map, too small for {m}'s masks (needs at least "
                                f"{method.min_cells} cells)")
        args = {"gradients": (g,), "nothing": (), "scores": (scorer,)}[method.needs]
        cam = method.fn(a, *args)  # [N,h',w']
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear",
                            align_corners=False)[:, 0]  # [N,H,W]
        out[m] = _normalise(cam)
    return out


def compute_cams(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    method: str = "gradcam",
    targets: torch.Tensor | None = None,
    *,
    amp: Any = None,
    batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """``layer -> [N,H,W]`` maps of one method: :func:`compute_cams_by_method`."""
    check_methods([method])
    return compute_cams_by_method(model, x, layers, [method], targets, amp=amp,
                                  batch_size=batch_size)[method]

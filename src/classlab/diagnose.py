"""Look inside a trained run: predictions, curves, mistakes, per-class accuracy, confusion
matrix and class activation maps (Grad-CAM, Grad-CAM++, LayerCAM) at several layers.

The model runs over the test set once (:func:`classlab.train.evaluate` with
``keep_outputs=True``); every table and picture is derived from those predictions. CAMs are
computed for the shown images in one batch, with one forward and one backward pass for all
layers together (:func:`compute_cams`).

matplotlib is imported lazily (config validation imports :data:`CAMS` from here and must
stay fast); it always uses the Agg backend and every figure is closed after saving.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classlab import _io


class DiagnoseError(RuntimeError):
    """Bad diagnose input (layer, method, count, target); one-line, user-facing message."""


# --------------------------------------------------------------------------- CAM methods

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


def _module(model: nn.Module, name: str) -> nn.Module:
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
    cap = Captured(layer_name, _module(model, layer_name))

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
        _module(model, name)
    n, (h, w) = x.shape[0], x.shape[-2:]
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack, torch.enable_grad():
            caps = [stack.enter_context(capture(model, name)) for name in layers]
            # A fresh leaf that requires grad: the layer outputs are in a graph even when the
            # model's parameters are frozen, and a caller's inference tensor is not reused.
            inp = x.detach().clone()
            inp = (inp if inp.is_floating_point() else inp.float()).requires_grad_(True)
            logits = model(inp).float()  # [N,C]
            if targets is None:
                targets = logits.argmax(1)
            targets = torch.as_tensor(targets, device=logits.device).long().view(-1)
            if targets.shape[0] != n or bool(((targets < 0) | (targets >= logits.shape[1]))
                                             .any()):
                raise DiagnoseError(f"CAM targets must be {n} class ids in "
                                    f"[0, {logits.shape[1]}); got {targets.tolist()}")
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
        maps = {}
        for c, g in zip(caps, grads, strict=True):
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


# --------------------------------------------------------------------------- plotting helpers


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 100) -> None:
    """PNG written atomically; the figure is closed whatever happens."""
    plt = _plt()
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        _io.atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)


def _blank(ax) -> None:
    """No ticks or frame, but keep the axis labels visible (unlike ``axis('off')``)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _placeholder(path: Path, text: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 1.2))
    _blank(ax)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    _save(fig, path)


# --------------------------------------------------------------------------- curves


def _lr_per_step(path: Path) -> tuple[list[int], list[float]]:
    """(step, lr) rows of dynamics.csv; streamed, since the file also holds per-layer rows."""
    steps, lrs = [], []
    if not path.is_file():
        return steps, lrs
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("metric") == "lr":
                try:
                    steps.append(int(r["step"]))
                    lrs.append(float(r["value"]))
                except (TypeError, ValueError):
                    continue  # a cut-off last line
    return steps, lrs


def plot_curves(run_dir: Path, out: Path) -> bool:
    """Loss and accuracy per epoch (train/val/test) and the LR; False if no metrics.csv."""
    from matplotlib.ticker import MaxNLocator

    from classlab.train import read_metrics

    mpath = Path(run_dir) / "metrics.csv"
    if not mpath.is_file():
        return False
    rows = read_metrics(mpath)
    if not rows:
        return False
    plt = _plt()
    epochs = [r["epoch"] for r in rows]
    colors = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), layout="constrained")
    for ax, what, ylabel in ((axes[0], "loss", "cross-entropy loss"),
                             (axes[1], "acc", "accuracy (%)")):
        for split in ("train", "val", "test"):
            ys = [r[f"{split}_{what}"] for r in rows]
            if all(v != v for v in ys):  # no such split (e.g. val_split=0)
                continue
            ax.plot(epochs, ys, marker="o", ms=3, color=colors[split], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Loss per epoch")
    axes[1].set_title("Accuracy per epoch")
    steps, lrs = _lr_per_step(Path(run_dir) / "dynamics.csv")
    ax = axes[2]
    if steps:
        ax.plot(steps, lrs, color="tab:purple", label="lr")
        ax.set_xlabel("step")
        ax.set_title("Learning rate per step")
    else:
        ax.plot(epochs, [r["lr"] for r in rows], marker="o", ms=3, color="tab:purple",
                label="lr")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Learning rate per epoch (at its start)")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)
    return True


# --------------------------------------------------------------------------- galleries

# Galleries are drawn as one pixel mosaic (numpy) shown 1:1 in a single axes, with the text
# placed in pixel coordinates: a 20x5 grid of separate axes takes ~6 s to lay out and draw
# on a 2-core CPU, the mosaic well under a second.
_DPI = 100
_GAP = 8  # pixels between cells


def _hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 [N,3,H,W] (any device) -> uint8 [N,H,W,3] for display: the stored pixels, so
    no de-normalisation is involved."""
    return images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()


def _label(classes: list[str], t: int, p: int, conf: float) -> str:
    return f"{classes[t]} → {classes[p]} ({100 * conf:.0f}%)"


def _upscale(img: np.ndarray, s: int) -> np.ndarray:
    """Nearest-neighbour enlargement of [H,W,...] by an integer factor: crisp pixels."""
    return np.repeat(np.repeat(img, s, axis=0), s, axis=1)


def _overlay(img: np.ndarray, cam: np.ndarray, s: int) -> np.ndarray:
    """uint8 [H,W,3] image and [H,W] map in [0,1] -> uint8 [sH,sW,3]: the jet-coloured map
    blended with alpha 0.5 over the (nearest-enlarged) image. The map is enlarged bilinearly
    (it is a smooth field, not pixels)."""
    from matplotlib import colormaps

    h, w = cam.shape
    big = F.interpolate(torch.as_tensor(cam, dtype=torch.float32)[None, None],
                        size=(h * s, w * s), mode="bilinear", align_corners=False)[0, 0]
    heat = colormaps["jet"](big.clamp(0, 1).numpy())[..., :3]  # [sH,sW,3] in [0,1]
    base = _upscale(img, s).astype(np.float32) / 255.0
    return np.clip((0.5 * base + 0.5 * heat) * 255.0 + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1024)
def _text_px(text: str, size: float, weight: str = "normal") -> float:
    """Width in pixels of ``text`` at ``size`` points (widest line), as Agg draws it."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = _renderer(RendererAgg)
    prop = FontProperties(size=size, weight=weight)
    return max((renderer.get_text_width_height_descent(line, prop, ismath=False)[0]
                for line in text.split("\n") if line), default=0.0)


@functools.lru_cache(maxsize=1)
def _renderer(cls):
    return cls(10, 10, _DPI)


def _mosaic_figure(cells: list[list[tuple[np.ndarray, str]]], out: Path, *, title: str,
                   col_headers: list[str] | None = None, row_labels: list[str] | None = None,
                   colorbar: bool = False, title_size: float = 8.5) -> None:
    """Save a grid of equally sized uint8 tiles, each with an optional title above it.

    cells[r][c] = (tile [h,w,3], title); rows may be shorter than the widest one.
    """
    plt = _plt()
    th, tw = cells[0][0][0].shape[:2]
    ncols = max(len(r) for r in cells)
    cell_titles = [t for r in cells for _, t in r if t]
    cw = int(max([tw] + [_text_px(t, title_size) + 6 for t in set(cell_titles)]))
    ct = 18 if cell_titles else 0  # band above each tile for its title
    left = int(_text_px("\n".join(row_labels), 9) + 20) if row_labels else _GAP
    top = 40 + (22 if col_headers else 0)
    bottom = 46 if colorbar else _GAP
    width = max(left + ncols * cw + (ncols - 1) * _GAP + _GAP,
                int(_text_px(title, 11)) + 4 * _GAP)
    height = top + len(cells) * (ct + th) + (len(cells) - 1) * _GAP + bottom
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    texts: list[tuple[float, float, str, dict]] = []
    for r, row in enumerate(cells):
        y0 = top + r * (ct + th + _GAP)
        for c, (tile, text) in enumerate(row):
            x0 = left + c * (cw + _GAP)
            xt = x0 + (cw - tw) // 2  # tile centred in its cell
            canvas[y0 + ct:y0 + ct + th, xt:xt + tw] = tile
            if text:
                texts.append((x0 + cw / 2, y0 + ct - 3, text,
                              {"ha": "center", "va": "bottom", "fontsize": title_size}))
        if row_labels:
            texts.append((left - 10, y0 + ct + th / 2, row_labels[r],
                          {"ha": "right", "va": "center", "fontsize": 9}))
    if col_headers:
        for c, name in enumerate(col_headers):
            texts.append((left + c * (cw + _GAP) + cw / 2, top - 6, name,
                          {"ha": "center", "va": "bottom", "fontsize": 10,
                           "fontweight": "bold"}))
    texts.append((width / 2, 10, title, {"ha": "center", "va": "top", "fontsize": 11}))
    if colorbar:  # what the overlay colours mean
        from matplotlib import colormaps

        lw, hw = _text_px("low", 8), _text_px("high", 8)
        bw, y0 = int(min(240, width - lw - hw - 4 * _GAP)), height - 30
        x0 = (width - bw) // 2
        strip = colormaps["jet"](np.linspace(0, 1, bw))[:, :3]  # [bw,3]
        canvas[y0:y0 + 12, x0:x0 + bw] = (0.5 * strip + 0.5) * 255  # as blended on white
        texts.append((x0 - 5, y0 + 6, "low", {"ha": "right", "va": "center", "fontsize": 8}))
        texts.append((x0 + bw + 5, y0 + 6, "high",
                      {"ha": "left", "va": "center", "fontsize": 8}))
    # figimage puts the canvas pixels 1:1 into the figure (no resampling); text positions
    # are pixel coordinates from the top left, converted to figure fractions.
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    fig.figimage(canvas, 0, 0, origin="upper")
    for x, y, s, kw in texts:
        fig.text(x / width, 1 - y / height, s, **kw)
    _save(fig, out, dpi=_DPI)


def plot_mistakes(images: np.ndarray, titles: list[str], out: Path, per_row: int = 5,
                  scale: int = 4) -> None:
    """Gallery of uint8 [N,H,W,3] images, ``per_row`` per row, each titled."""
    if len(images) == 0:
        _placeholder(out, "no misclassified test images")
        return
    tiles = [(_upscale(im, scale), t) for im, t in zip(images, titles, strict=True)]
    rows = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    _mosaic_figure(rows, out, title="Most confident mistakes: true → predicted (confidence)")


def plot_cam_grid(images: np.ndarray, maps: dict[str, np.ndarray], row_labels: list[str],
                  out: Path, title: str, scale: int = 4) -> None:
    """Rows = images, columns = the image, then one CAM overlay (jet, alpha 0.5) per layer;
    column headers are the layer names."""
    if len(images) == 0:
        _placeholder(out, "no misclassified test images")
        return
    rows = [[(_upscale(images[r], scale), "")]
            + [(_overlay(images[r], cam[r], scale), "") for cam in maps.values()]
            for r in range(len(images))]
    labels = [lab.replace(" (", "\n(") for lab in row_labels]
    _mosaic_figure(rows, out, title=title, col_headers=["image", *maps], row_labels=labels,
                   colorbar=True)


def plot_pred_vs_true(images: np.ndarray, cam_pred: np.ndarray, cam_true: np.ndarray,
                      labels: list[tuple[str, str, float, float]], layer: str,
                      method: str, out: Path, scale: int = 4) -> None:
    """Columns: image | CAM for the predicted class | CAM for the true class. ``labels``:
    (true name, predicted name, p(pred), p(true)) per row."""
    if len(images) == 0:
        _placeholder(out, "no misclassified test images")
        return
    rows = [[(_upscale(images[r], scale), f"true: {true}"),
             (_overlay(images[r], cam_pred[r], scale), f"pred: {pred} ({100 * pp:.0f}%)"),
             (_overlay(images[r], cam_true[r], scale), f"true: {true} ({100 * pt:.0f}%)")]
            for r, (true, pred, pp, pt) in enumerate(labels)]
    _mosaic_figure(rows, out, title=f"{method} at {layer}: predicted vs true class",
                   col_headers=["image", "CAM for predicted", "CAM for true"],
                   colorbar=True)


# --------------------------------------------------------------------------- per class


def plot_per_class(classes: list[str], acc: list[float], out: Path,
                   overall: float | None = None) -> None:
    """Bar per class (accuracy %), with the overall test accuracy as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(classes) + 2), 4.3),
                           layout="constrained")
    vals = [0.0 if a != a else a for a in acc]
    bars = ax.bar(range(len(classes)), vals, color="tab:blue")
    for b, a in zip(bars, acc, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1,
                "n/a" if a != a else f"{a:.1f}", ha="center", va="bottom", fontsize=8)
    if overall is not None:
        ax.axhline(overall, color="tab:red", ls="--", lw=1.2,
                   label=f"all classes: {overall:.2f}%")
        ax.legend(loc="upper right", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_ylim(0, 112)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-class test accuracy")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)


def plot_confusion(cm: np.ndarray, classes: list[str], out: Path) -> None:
    """K x K counts; rows = true class, columns = predicted class."""
    plt = _plt()
    k = len(classes)
    side = max(6.0, 0.62 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(im, ax=ax, shrink=0.8, label="images")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    thresh = cm.max() / 2 if cm.size and cm.max() > 0 else 1
    size = 9 if k <= 12 else 6
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=size,
                    color="white" if cm[i, j] > thresh else "black")
    ax.set_xticks(range(k), classes, rotation=40, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test set)")
    _save(fig, out)


# --------------------------------------------------------------------------- tables


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    _io.atomic_write_text(path, buf.getvalue())


def _fmt(v: float, digits: int = 6) -> str:
    return "" if v != v else f"{v:.{digits}g}"


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """[K,K] int64 counts, rows = true, columns = predicted; all K classes always present."""
    return torch.bincount(y.long() * k + pred.long(), minlength=k * k).view(k, k)


def top_confused(cm: torch.Tensor, n: int = 10) -> list[tuple[int, int, int]]:
    """(true, pred, count) of the ``n`` largest non-zero off-diagonal cells, largest first
    (ties by row, then column)."""
    off = cm.clone()
    off.fill_diagonal_(0)
    flat = off.flatten()
    order = sorted(range(len(flat)), key=lambda i: (-int(flat[i]), i))
    k = cm.shape[0]
    return [(i // k, i % k, int(flat[i])) for i in order[:n] if int(flat[i]) > 0]


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _fast_cpu_layout(model: nn.Module, s) -> Iterator[Any]:
    """On CPU, run inference with channels_last (oneDNN convolutions were ~1.4-1.8x faster
    than NCHW on the 2-core dev machine); the model's memory format is put back afterwards.
    Yields the normaliser that matches."""
    from classlab.train import Normalizer

    if s.device.type != "cpu" or s.normalize.channels_last:
        yield s.normalize  # CUDA, or the run already uses channels_last
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield Normalizer(s.splits.mean, s.splits.std, s.device, channels_last=True)
    finally:
        model.to(memory_format=torch.contiguous_format)


def _eval_model(s) -> nn.Module:
    """The weights whose metrics the run reported (the EMA copy when the run keeps one)."""
    model = getattr(s, "eval_model", None)
    return s.model if model is None else model


def _check_args(model: nn.Module, layers: list[str], method: str, count: int,
                target: str) -> None:
    if method not in CAMS:
        raise DiagnoseError(f"diagnose.method: unknown method {method!r}; allowed: "
                            f"{', '.join(CAMS)}")
    if not layers:
        raise DiagnoseError("diagnose.layers: no layer given; valid: "
                            f"{', '.join(valid_layers(model))}")
    for name in layers:
        _module(model, name)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise DiagnoseError(f"diagnose.count: {count!r} is out of range; must be ≥ 1")
    if target not in ("pred", "true"):
        raise DiagnoseError(f"diagnose.target: unknown value {target!r}; allowed: pred, true")


def _skeleton(state: dict) -> nn.Module:
    """The run's model built on the meta device (no memory, no init): for checking layer
    names before the data is loaded."""
    from classlab import config
    from classlab.models import build_model

    cfg = config.from_dict(state["config"])
    with torch.device("meta"):
        return build_model(cfg.model, num_classes=len(state.get("classes") or range(10)))


def diagnose_run(
    run_dir: Path,
    *,
    session=None,
    data_root: Path | None = None,
    layers: list[str] | None = None,
    method: str | None = None,
    count: int | None = None,
    target: str | None = None,
    device: str | None = None,
) -> dict:
    """Write predictions.csv and ``run_dir/diagnose/*`` for the run's last checkpoint.

    ``session``: a :class:`classlab.train.Session` whose model already holds the weights
    (e.g. right after training); None loads ``run_dir/last.pt`` (``device`` applies only
    then). layers/method/count/target default to the run config's ``diagnose`` section.
    All arguments are checked before the data is loaded or the model is run.
    """
    from classlab import config, train

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise _io.RunDirError(f"{run_dir}: not a run folder (no such folder)")
    seconds: dict[str, float] = {}
    state = None
    if session is None:
        state = _io.load_checkpoint(run_dir / "last.pt")
        cfg = config.from_dict(state["config"])
        probe = _skeleton(state)
    else:
        cfg, probe = session.cfg, _eval_model(session)
    if layers is None:
        layers = cfg.diagnose.layers
    elif isinstance(layers, str):  # "layer1,layer4", as on the command line
        layers = [x for x in layers.split(",") if x]
    layers = list(dict.fromkeys(layers))  # unique, in order
    method = cfg.diagnose.method if method is None else method
    count = cfg.diagnose.count if count is None else count
    target = cfg.diagnose.target if target is None else target
    _check_args(probe, layers, method, count, target)

    t = time.perf_counter()
    if session is None:
        session, state = train.session_from_run(run_dir, data_root, device)
    s = session
    model = _eval_model(s)
    seconds["load"] = time.perf_counter() - t
    out_dir = run_dir / "diagnose"
    out_dir.mkdir(exist_ok=True)
    classes = list(s.splits.classes)
    k = len(classes)
    x_u8, y_dev = s.data["test"]  # uint8 [N,3,H,W], int64 [N] on the device
    n = len(x_u8)
    if n == 0:
        raise DiagnoseError(f"{run_dir}: the test split is empty")

    # 1. predictions, once, for everything below; with the run's test-time augmentation,
    # if any, so that they are the predictions behind its reported test accuracy.
    t = time.perf_counter()
    # The last epoch of training saved them (test_outputs.pt) for the checkpoint it wrote;
    # they are recomputed only when they are missing or belong to another checkpoint.
    ckpt_epoch = state["epoch"] if state is not None else _epochs_done(run_dir)
    ev = train.load_test_outputs(run_dir, ckpt_epoch, n)
    if ev is None:
        with _fast_cpu_layout(model, s) as normalize:
            ev = train.evaluate(model, x_u8, y_dev, normalize=normalize,
                                batch_size=s.cfg.train.eval_batch_size, amp=s.amp,
                                keep_outputs=True, tta=s.cfg.train.tta)
    y = y_dev.cpu()
    pred, probs, losses = ev.preds, ev.probs.float(), ev.losses.float()
    conf = probs.gather(1, pred[:, None])[:, 0]  # [N] probability of the predicted class
    p_true = probs.gather(1, y[:, None])[:, 0]  # [N] probability of the true class
    files = {"predictions": run_dir / "predictions.csv"}
    _write_csv(files["predictions"],
               ["index", "true", "pred", "confidence", "loss", "true_name", "pred_name"],
               [[i, int(a), int(b), _fmt(float(c)), _fmt(float(lo)), classes[a], classes[b]]
                for i, (a, b, c, lo) in enumerate(zip(y.tolist(), pred.tolist(),
                                                      conf.tolist(), losses.tolist()))])
    correct = int((pred == y).sum())
    seconds["predictions"] = time.perf_counter() - t

    # 2. curves
    t = time.perf_counter()
    files["curves"] = out_dir / "curves.png"
    if not plot_curves(run_dir, files["curves"]):
        del files["curves"]
    seconds["curves"] = time.perf_counter() - t

    # 3. the most confident mistakes ("top losses"), most confident first
    t = time.perf_counter()
    wrong = torch.nonzero(pred != y)[:, 0]  # [M]
    order = np.lexsort((wrong.numpy(), -losses[wrong].numpy(), -conf[wrong].numpy()))
    shown = wrong[torch.from_numpy(order[:count]).long()]  # [m] test-set indices
    images = _hwc(x_u8[shown.to(x_u8.device)])  # uint8 [m,H,W,3]
    titles = [_label(classes, int(y[i]), int(pred[i]), float(conf[i])) for i in shown]
    files["mistakes"] = out_dir / "mistakes.png"
    plot_mistakes(images, titles, files["mistakes"])
    seconds["mistakes"] = time.perf_counter() - t

    # 4. per class and confusion
    t = time.perf_counter()
    cm = confusion_matrix(y, pred, k)  # [K,K]
    support = cm.sum(1)
    per_class = [{"class": classes[i], "images": int(support[i]), "correct": int(cm[i, i]),
                  "accuracy": (100.0 * int(cm[i, i]) / int(support[i])
                               if int(support[i]) else float("nan"))} for i in range(k)]
    files["per_class_csv"] = out_dir / "per_class.csv"
    _write_csv(files["per_class_csv"], ["class_id", "class", "images", "correct", "accuracy"],
               [[i, r["class"], r["images"], r["correct"], _fmt(r["accuracy"])]
                for i, r in enumerate(per_class)])
    files["per_class"] = out_dir / "per_class.png"
    plot_per_class(classes, [r["accuracy"] for r in per_class], files["per_class"],
                   100.0 * correct / n)
    files["confusion_csv"] = out_dir / "confusion.csv"
    _write_csv(files["confusion_csv"], ["true\\pred", *classes],
               [[classes[i], *cm[i].tolist()] for i in range(k)])
    files["confusion"] = out_dir / "confusion.png"
    plot_confusion(cm.numpy(), classes, files["confusion"])
    pairs = [{"true": classes[a], "pred": classes[b], "count": c}
             for a, b, c in top_confused(cm, 10)]
    files["confused_pairs"] = out_dir / "confused_pairs.csv"
    _write_csv(files["confused_pairs"], ["true", "pred", "count"],
               [[p["true"], p["pred"], p["count"]] for p in pairs])
    seconds["confusion"] = time.perf_counter() - t

    # 5. CAMs: the grid's images with the chosen target, plus the first <=10 of them again
    # with the other target (for pred-vs-true), all in one batch: one forward + backward.
    t = time.perf_counter()
    m = len(shown)
    m2 = min(m, 10)
    files["cam_mistakes"] = out_dir / "cam_mistakes.png"
    files["cam_pred_vs_true"] = out_dir / "cam_pred_vs_true.png"
    last = layers[-1]
    if m:
        t_pred, t_true = pred[shown], y[shown]  # [m]
        first, other = (t_pred, t_true) if target == "pred" else (t_true, t_pred)
        idx = torch.cat([shown, shown[:m2]]).to(x_u8.device)
        xb = s.normalize(x_u8[idx])  # float [m+m2,3,H,W]
        maps = compute_cams(model, xb, layers, method,
                            torch.cat([first, other[:m2]]).to(x_u8.device))
        maps = {name: v.cpu().numpy() for name, v in maps.items()}  # [m+m2,H,W] each
        grid = {name: v[:m] for name, v in maps.items()}
        extra = maps[last][m:]  # [m2,H,W], the other target, last layer
        cam_pred, cam_true = ((grid[last][:m2], extra) if target == "pred"
                              else (extra, grid[last][:m2]))
    else:
        grid = {name: np.zeros((0,)) for name in layers}
        cam_pred = cam_true = np.zeros((0,))
    plot_cam_grid(images, grid, titles, files["cam_mistakes"],
                  f"{method} on the most confident mistakes (target: "
                  f"{'predicted' if target == 'pred' else 'true'} class)")
    plot_pred_vs_true(images[:m2], cam_pred, cam_true,
                      [(classes[int(y[i])], classes[int(pred[i])], float(conf[i]),
                        float(p_true[i])) for i in shown[:m2]], last, method,
                      files["cam_pred_vs_true"])
    seconds["cams"] = time.perf_counter() - t

    # 6. summary
    seconds["total"] = time.perf_counter() - t_start
    epoch = int(state["epoch"]) if state is not None else _epochs_done(run_dir)
    result = {
        "run_dir": str(run_dir),
        "checkpoint_epoch": epoch,
        "test_images": n,
        "test_correct": correct,
        "test_acc": 100.0 * correct / n,
        "test_loss": float(losses.double().mean()),
        "mistakes": n - correct,
        "shown": m,
        "count": count,
        "method": method,
        "layers": layers,
        "target": target,
        "tta": s.cfg.train.tta,
        "classes": classes,
        "per_class": per_class,
        "confused_pairs": pairs,
        "shown_images": [{"index": int(i), "true": classes[int(y[i])],
                          "pred": classes[int(pred[i])], "confidence": float(conf[i])}
                         for i in shown],
        "seconds": {key: round(v, 3) for key, v in seconds.items()},
    }
    files["json"] = out_dir / "diagnose.json"
    rel = {key: str(p.relative_to(run_dir)) for key, p in files.items()}
    _io.write_json(files["json"], _jsonable({**result, "files": rel}))
    print(f"Diagnose: test acc {result['test_acc']:.2f}% ({correct}/{n}), {n - correct} "
          f"misclassified ({m} shown), {method} at {', '.join(layers)}; "
          f"{seconds['total']:.1f}s -> {out_dir}", flush=True)
    return {**result, "dir": out_dir, "files": files}


def _epochs_done(run_dir: Path) -> int | None:
    try:
        return _io.read_json(run_dir / "summary.json").get("epochs_done")
    except (OSError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj

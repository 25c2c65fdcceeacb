"""The diagnosis's figures: curves, the mistakes gallery, CAM grids, per-class accuracy and
the confusion matrix. Every figure is a ``matplotlib.figure.Figure`` (no pyplot: no global
state, no backend to choose) saved atomically with :func:`classlab.rundir.save_figure`."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from classlab.fmt import is_nan
from classlab.rundir import RunFiles, save_figure
from classlab.rundir.metrics import read_metrics


def _blank(ax) -> None:
    """No ticks or frame, but keep the axis labels visible (unlike ``axis('off')``)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _placeholder(path: Path, text: str) -> None:
    fig = Figure(figsize=(5, 1.2))
    ax = fig.subplots()
    _blank(ax)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    save_figure(fig, path)


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
    fig = curves_figure(run_dir)
    if fig is None:
        return False
    save_figure(fig, out)
    return True


def curves_figure(run_dir: Path, size: tuple[float, float] = (16, 4.2)) -> Figure | None:
    """The figure of :func:`plot_curves` (inches ``size``); None if no metrics.csv."""
    from matplotlib.ticker import MaxNLocator

    files = RunFiles(run_dir)
    rows = read_metrics(files.metrics)
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    colors = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, what, ylabel in ((axes[0], "loss", "cross-entropy loss"),
                             (axes[1], "acc", "accuracy (%)")):
        for split in ("train", "val", "test"):
            ys = [r[f"{split}_{what}"] for r in rows]
            if all(is_nan(v) for v in ys):  # no such split (e.g. val_split=0)
                continue
            ax.plot(epochs, ys, marker="o", ms=3, color=colors[split], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Loss per epoch")
    axes[1].set_title("Accuracy per epoch")
    steps, lrs = _lr_per_step(files.dynamics)
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
    return fig


# --------------------------------------------------------------------------- galleries

# Galleries are drawn as one pixel mosaic (numpy) shown 1:1 in a single axes, with the text
# placed in pixel coordinates: a 20x5 grid of separate axes takes ~6 s to lay out and draw
# on a 2-core CPU, the mosaic well under a second.
_DPI = 100
_GAP = 8  # pixels between cells


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 [N,3,H,W] (any device) -> uint8 [N,H,W,3] for display: the stored pixels, so
    no de-normalisation is involved."""
    return images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()


def label(classes: list[str], t: int, p: int, conf: float) -> str:
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
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    fig.figimage(canvas, 0, 0, origin="upper")
    for x, y, s, kw in texts:
        fig.text(x / width, 1 - y / height, s, **kw)
    save_figure(fig, out, dpi=_DPI)


def plot_mistakes(images: np.ndarray, titles: list[str], out: Path, per_row: int = 5,
                  scale: int = 4,
                  title: str = "Most confident mistakes: true → predicted (confidence)",
                  empty: str = "no misclassified test images",
                  framed: list[bool] | None = None) -> None:
    """Gallery of uint8 [N,H,W,3] images, ``per_row`` per row, each titled; the images
    ``framed`` marks get a red frame (e.g. a suspected label error)."""
    if len(images) == 0:
        _placeholder(out, empty)
        return
    tiles = [(_upscale(im, scale), t) for im, t in zip(images, titles, strict=True)]
    for (tile, _), red in zip(tiles, framed or [], strict=False):
        if red:
            frame(tile)
    rows = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    _mosaic_figure(rows, out, title=title)


def frame(tile: np.ndarray, width: int = 3, colour: tuple[int, int, int] = (220, 30, 30)
          ) -> np.ndarray:
    """Draw a ``width``-pixel frame into the uint8 [H,W,3] ``tile`` (in place)."""
    tile[:width], tile[-width:], tile[:, :width], tile[:, -width:] = colour, colour, colour, \
        colour
    return tile


def plot_gallery_rows(rows: list[tuple[np.ndarray, list[str]]], row_labels: list[str],
                      out: Path, title: str, scale: int = 4) -> None:
    """One row of titled images per entry of ``rows`` ((uint8 [n,H,W,3], titles)), each
    row labelled on its left; rows may hold different numbers of images (none: skipped)."""
    cells = [[(_upscale(im, scale), t) for im, t in zip(images, titles, strict=True)]
             for images, titles in rows]
    kept = [(c, lab) for c, lab in zip(cells, row_labels, strict=True) if c]
    if not kept:
        _placeholder(out, "no images")
        return
    _mosaic_figure([c for c, _ in kept], out, title=title, row_labels=[lab for _, lab in kept])


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
    save_figure(per_class_figure(classes, acc, overall), out)


def per_class_figure(classes: list[str], acc: list[float],
                     overall: float | None = None) -> Figure:
    """The figure of :func:`plot_per_class`."""
    fig = Figure(figsize=(max(6.0, 0.75 * len(classes) + 2), 4.3), layout="constrained")
    ax = fig.subplots()
    vals = [0.0 if is_nan(a) else a for a in acc]
    bars = ax.bar(range(len(classes)), vals, color="tab:blue")
    for b, a in zip(bars, acc, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1,
                "n/a" if is_nan(a) else f"{a:.1f}", ha="center", va="bottom", fontsize=8)
    if overall is not None:
        ax.axhline(overall, color="tab:red", ls="--", lw=1.2,
                   label=f"all classes: {overall:.2f}%")
        ax.legend(loc="upper right", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_ylim(0, 112)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-class test accuracy")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_confusion(cm: np.ndarray, classes: list[str], out: Path) -> None:
    """K x K counts; rows = true class, columns = predicted class."""
    save_figure(confusion_figure(cm, classes), out)


def confusion_figure(cm: np.ndarray, classes: list[str]) -> Figure:
    """The figure of :func:`plot_confusion`."""
    k = len(classes)
    side = max(6.0, 0.62 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
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
    return fig


# --------------------------------------------------------------------------- trust

_RANDOM = "0.45"  # the random-map baseline: grey, dashed


def _method_colours(methods: list[str]) -> dict[str, str]:
    """A fixed tab10 colour per method, by position in the list of methods."""
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def _verdict(row: dict) -> str:
    """ins−del gain over the random map ± standard error, and whether it beats chance."""
    gain, se = row.get("gain"), row.get("gain_se")
    if gain is None or is_nan(gain):
        return "n/a"
    mark = "better than chance" if row.get("better_than_chance") else "not above chance"
    return f"{gain:+.3f} ± {se:.3f}: {mark}" if not is_nan(se) else f"{gain:+.3f}"


def _faithfulness_curves(ax: Any, curves: dict, by_key: dict, layer: str, r: int,
                         methods: list[str], titles: dict[str, str]) -> None:
    """One panel of :func:`plot_faithfulness`: the deletion (``r`` 0) or insertion (1)
    curves of every method at ``layer``, and the layer's random map, dashed."""
    what = ("deletion", "insertion")[r]
    colours = _method_colours(methods)
    rand_auc = None
    for m in methods:
        row = by_key.get((m, layer))
        if row is None:
            continue
        ys = np.asarray(curves[(m, layer)][r], dtype=np.float64)
        ax.plot(np.linspace(0, 1, len(ys)), ys, color=colours[m], lw=1.6,
                label=f"{titles.get(m, m)}  {row[f'{what}_auc']:.3f}")
        rand_auc = row[f"random_{what}_auc"]
    if ("random", layer) in curves:
        ys = np.asarray(curves[("random", layer)][r], dtype=np.float64)
        ax.plot(np.linspace(0, 1, len(ys)), ys, color=_RANDOM, ls="--", lw=1.4,
                label=f"random map  {rand_auc:.3f}" if rand_auc is not None else "random map")


def plot_faithfulness(curves: dict, rows: list[dict], layers: list[str], methods: list[str],
                      titles: dict[str, str], fill: str, out: Path) -> None:
    """Mean deletion (top row) and insertion (bottom row) curves per layer (columns): the
    target-class probability against the fraction of pixels removed / revealed, most
    relevant first, for every method and the layer's random map. ``curves``:
    (method, layer) -> (deletion [S+1], insertion [S+1]); ``rows``: Faithfulness.rows()."""
    by_key = {(r["method"], r["layer"]): r for r in rows}
    n = rows[0]["images"] if rows else 0
    # Margins in inches, laid out by hand: constrained layout took ~0.4 s more per figure.
    left, right, top, bottom, gap_w, gap_h, panel_h = 0.9, 0.2, 1.05, 0.55, 0.4, 0.85, 2.9
    panel_w = 3.9 if len(layers) > 1 else 6.6 - left - right  # one: room for the title
    width = left + right + len(layers) * panel_w + (len(layers) - 1) * gap_w
    height = top + bottom + 2 * panel_h + gap_h
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=bottom / height, wspace=gap_w / panel_w, hspace=gap_h / panel_h)
    axes = fig.subplots(2, len(layers), squeeze=False, sharey=True)
    for c, layer in enumerate(layers):
        cells = next((r["cells"] for r in rows if r["layer"] == layer), None)
        for r, what in enumerate(("deletion", "insertion")):
            ax = axes[r, c]
            _faithfulness_curves(ax, curves, by_key, layer, r, methods, titles)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(title="area under curve", fontsize=7.5, title_fontsize=7.5,
                      loc="upper right" if what == "deletion" else "lower right")
            ax.set_xlabel(f"fraction of pixels {'removed' if what == 'deletion' else 'revealed'}"
                          " (most relevant first)", fontsize=9)
            if c == 0:
                better = "lower" if what == "deletion" else "higher"
                ax.set_ylabel(f"{what}: p(target class)\n({better} area is better)")
            if r == 0:
                coarse = cells and min(cells) < 5  # see classlab.diagnose.trust.COARSE_CELLS
                size = (f" ({cells[0]}x{cells[1]} cells{': coarse' if coarse else ''})"
                        if cells else "")
                head = f"{layer}{size}"
                if len(methods) == 1 and (methods[0], layer) in by_key:
                    head += f"\nins−del vs random: {_verdict(by_key[(methods[0], layer)])}"
                ax.set_title(head, fontsize=10)
    steps = len(next(iter(curves.values()))[0]) - 1 if curves else 0
    fig.suptitle(f"Faithfulness on the {n} images shown\nremove (top) or reveal (bottom) "
                 f"pixels in {steps} steps, fill: "
                 f"{'dataset mean colour' if fill == 'mean' else 'blurred image'}",
                 fontsize=11, y=1 - 0.12 / height, va="top")
    save_figure(fig, out)


def plot_sanity(rows: list[dict], layers: list[str], methods: list[str],
                titles: dict[str, str], flag_rho: float, out: Path) -> None:
    """Model-randomisation check: mean rank correlation with the trained model's maps after
    each cascading re-initialisation step (x axis), the flag threshold dotted. One method:
    one panel, a line per layer; several: a panel per layer, a line per method."""
    by_key = {(r["method"], r["layer"]): r for r in rows}
    steps = rows[0]["steps"] if rows else []
    if len(methods) == 1:
        panels = [(f"{titles.get(methods[0], methods[0])} at each layer",
                   [((methods[0], layer), layer) for layer in layers])]
        colours = _method_colours(layers)
    else:
        panels = [(layer, [((m, layer), titles.get(m, m)) for m in methods]) for layer in layers]
        colours = _method_colours(methods)
    ncols = min(len(panels), 2)  # two wide panels a row stay legible in the report
    nrows = -(-len(panels) // ncols)
    width = max(4.2, 0.5 * len(steps) + 1.8)
    fig = Figure(figsize=(width * ncols + 0.8, 3.9 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    xs = np.arange(len(steps) + 1)
    for ax, (head, lines) in zip(axes, panels):
        for key, name in lines:
            row = by_key.get(key)
            if row is None:
                continue
            ys = [1.0] + [np.nan if v is None else v for v in row["rho"]]
            flag = "  FLAGGED" if row["flagged"] else ""
            ax.plot(xs, ys, marker="o", ms=3.5, lw=1.6,
                    color=colours[key[1] if len(methods) == 1 else key[0]],
                    label=f"{name}{flag}")
        ax.axhline(flag_rho, color="tab:red", ls=":", lw=1.2,
                   label=f"flag: ≥ {flag_rho:g} at the end")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xticks(xs, ["trained"] + [f"+{s}" for s in steps], rotation=35, ha="right",
                      fontsize=8)
        ax.set_ylim(-0.5, 1.05)
        ax.set_title(head, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left", ncols=2 if len(lines) > 4 else 1)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for r in range(nrows):
        axes[r * ncols].set_ylabel("rank correlation with the\ntrained model's maps (mean)")
    fig.supxlabel("modules re-initialised, from the output end down (cumulative)", fontsize=9)
    fig.suptitle("Model-randomisation sanity check (Adebayo et al. 2018):\na map that explains "
                 "the model must change when its weights are random", fontsize=11)
    save_figure(fig, out)


def plot_sanity_maps(image: np.ndarray, trained: dict, first_maps: dict, keys: list,
                     steps: list[str], labels: list[str], out: Path, scale: int = 3) -> None:
    """One image's maps after each randomisation step: rows = (method, layer) ``keys``
    (labelled ``labels``), columns = the image, the trained model's map, then each step.
    ``trained`` [H,W] and ``first_maps`` [S,H,W] per key, numpy in [0,1]."""
    rows = []
    for key in keys:
        cells = [(_upscale(image, scale), ""), (_overlay(image, trained[key], scale), "")]
        cells += [(_overlay(image, m, scale), "") for m in first_maps[key]]
        rows.append(cells)
    _mosaic_figure(rows, out, title="The first image's maps as the model is re-initialised "
                   "from the output end down", col_headers=["image", "trained",
                                                            *[f"+{s}" for s in steps]],
                   row_labels=labels, colorbar=True)


def _strip(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """uint8 tiles [h,w,3] side by side, ``gap`` white pixels apart: one mosaic cell."""
    h = tiles[0].shape[0]
    white = np.full((h, gap, 3), 255, dtype=np.uint8)
    parts = [p for t in tiles for p in (t, white)][:-1]
    return np.concatenate(parts, axis=1)


def plot_cam_methods(images: np.ndarray, maps: dict, methods: list[str], layers: list[str],
                     row_labels: list[str], scores: dict, col_headers: list[str], out: Path,
                     scale: int = 2) -> None:
    """Every method on the same images: rows = ``methods`` (labelled ``row_labels``), columns
    = ``layers`` (headed ``col_headers``); each cell is the strip of the images' overlays,
    titled with ``scores[(method, layer)]``. The first row holds the images themselves.
    ``maps``: method -> layer -> [N,H,W] numpy in [0,1]."""
    if len(images) == 0:
        _placeholder(out, "no misclassified test images")
        return
    plain = _strip([_upscale(im, scale) for im in images])
    rows = [[(plain, "") for _ in layers]]
    rows += [[(_strip([_overlay(images[i], maps[m][layer][i], scale)
                       for i in range(len(images))]), scores.get((m, layer), ""))
              for layer in layers] for m in methods]
    _mosaic_figure(rows, out, title=f"CAM methods on the same {len(images)} images; above each "
                   "cell: insertion − deletion AUC minus the random map's, ± standard error",
                   col_headers=col_headers, row_labels=["images", *row_labels], colorbar=True,
                   title_size=8)

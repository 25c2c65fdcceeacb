"""The weight-update section of the report and the grid's overlay: dynamics.csv (written
during training by :class:`classlab.engine.dynamics.DynamicsLogger`) drawn as a layer x
step heat map of the update/weight ratio, gradient norms per stage and the LR trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from classlab.rundir import RunFiles, make_folder, save_figure
from classlab.rundir.metrics import read_rows

LAYER_METRICS = ("grad_norm", "weight_norm", "update_ratio")


def read_dynamics(path: Path) -> list[dict]:
    """Rows of ``dynamics.csv`` as dicts with typed values (step, epoch int; value float)."""
    rows = []
    for r in read_rows(path)[0]:  # complete rows: a running point's last line may be cut off
        try:
            rows.append({"step": int(r["step"]), "epoch": int(r["epoch"]),
                         "layer": r["layer"], "metric": r["metric"],
                         "value": float(r["value"])})
        except (KeyError, ValueError):  # not a dynamics row (a damaged or foreign file)
            continue
    return rows


# --------------------------------------------------------------------------- plots & summary

RULE_OF_THUMB = 1e-3  # update/weight ratio often quoted as healthy (Karpathy, CS231n notes)
HIGH, LOW = 1e-2, 1e-5  # flag layers whose ratio stays beyond these for most of training


def _stage(name: str) -> str:
    """Plot group of a parameter: its top-level module (stem convs/norms grouped as 'stem')."""
    top = name.split(".")[0]
    return "stem" if top in ("conv1", "bn1") else top


def _layer_table(rows: list[dict], metric: str) -> tuple[list[str], list[int], np.ndarray]:
    """(layer names in model order, steps, values [L, S]) for one per-layer metric."""
    layers = list(dict.fromkeys(r["layer"] for r in rows if r["metric"] == metric))
    steps = sorted({r["step"] for r in rows if r["metric"] == metric})
    li = {n: i for i, n in enumerate(layers)}
    si = {s: i for i, s in enumerate(steps)}
    table = np.full((len(layers), len(steps)), np.nan)
    for r in rows:
        if r["metric"] == metric:
            table[li[r["layer"]], si[r["step"]]] = r["value"]
    return layers, steps, table


def _trace(rows: list[dict], metric: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r["value"]) for r in rows if r["metric"] == metric and r["layer"] == ""]
    return [p[0] for p in pts], [p[1] for p in pts]


def flag_layers(layers: list[str], ratios: np.ndarray) -> list[tuple[str, str, float]]:
    """Layers whose update/weight ratio is > HIGH or < LOW at more than half the logged steps:
    (layer, "high"|"low", median ratio)."""
    flags = []
    for name, row in zip(layers, ratios):
        ok = row[np.isfinite(row)]
        if len(ok) == 0:
            continue
        med = float(np.median(ok))
        if (ok > HIGH).mean() > 0.5:
            flags.append((name, "high", med))
        elif (ok < LOW).mean() > 0.5:
            flags.append((name, "low", med))
    return flags


def _plot_heatmap(layers, steps, ratios, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    logr = np.log10(np.where(ratios > 0, ratios, np.nan))
    lo, hi = np.nanmin(logr), np.nanmax(logr)
    lo, hi = min(lo, -3.5), max(hi, -2.5)
    fig = Figure(figsize=(10, max(3, 0.16 * len(layers) + 1.5)))
    ax = fig.subplots()
    # Black: undefined ratio, the weight was exactly zero before the step.
    cmap = colormaps["coolwarm"].with_extremes(bad="black")
    # Diverging colours centred on the 1e-3 rule of thumb: blue = slower, red = faster.
    im = ax.imshow(logr, aspect="auto", interpolation="nearest", cmap=cmap,
                   norm=TwoSlopeNorm(vmin=lo, vcenter=np.log10(RULE_OF_THUMB), vmax=hi),
                   extent=(steps[0] - 0.5, steps[-1] + 0.5, len(layers) - 0.5, -0.5))
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(layers, fontsize=6)
    ax.set_xlabel("optimizer step")
    ax.set_title("log10 update/weight ratio ‖Δw‖/‖w‖ per parameter tensor\n"
                 "(pale = 1e-3 rule of thumb, red = faster, blue = slower, black = w was 0)")
    cb = fig.colorbar(im, ax=ax)
    cb.ax.axhline(np.log10(RULE_OF_THUMB), color="k", lw=2)
    cb.set_label("log10 ratio (black line: 1e-3 rule of thumb)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _plot_grad_norms(layers, steps, grads, path: Path) -> None:
    stages = list(dict.fromkeys(_stage(n) for n in layers))
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for st in stages:
        idx = [i for i, n in enumerate(layers) if _stage(n) == st]
        # L2 norm of the whole stage's gradient: sqrt of the sum of squared tensor norms.
        ax.plot(steps, np.sqrt(np.nansum(grads[idx] ** 2, axis=0)), label=st)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("gradient L2 norm")
    ax.set_title("Gradient norm per stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _plot_lr(rows: list[dict], path: Path) -> None:
    s, lr = _trace(rows, "lr")
    ms, mom = _trace(rows, "momentum")
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    ax.plot(s, lr, color="C0")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate", color="C0")
    if mom and len(set(mom)) > 1:
        ax2 = ax.twinx()
        ax2.plot(ms, mom, color="C1")
        ax2.set_ylabel("momentum / beta1", color="C1")
    ax.set_title("Learning rate (and momentum) at every step")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def report_section(run_dir: Path) -> tuple[str, list[tuple[str, Path]]] | None:
    """Plots of ``run_dir/dynamics.csv`` into ``run_dir/diagnose/`` plus a Markdown summary;
    None when the run logged no dynamics."""
    files = RunFiles(run_dir)
    if not files.dynamics.exists():
        return None
    rows = read_dynamics(files.dynamics)
    layers, steps, ratios = _layer_table(rows, "update_ratio")
    if not layers:
        return None
    _, _, grads = _layer_table(rows, "grad_norm")
    make_folder(files.diagnose)
    images = [
        ("Update/weight ratio per layer and step", files.dyn_update_ratio),
        ("Gradient norm per stage", files.dyn_grad_norms),
        ("Learning rate and momentum", files.dyn_lr),
    ]
    _plot_heatmap(layers, steps, ratios, images[0][1])
    _plot_grad_norms(layers, steps, grads, images[1][1])
    _plot_lr(rows, images[2][1])
    return _summary_text(layers, steps, ratios), images


def _summary_text(layers: list[str], steps: list[int], ratios: np.ndarray) -> str:
    med = np.nanmedian(ratios, axis=0)  # [S] median over layers at each logged step
    thirds = np.array_split(np.arange(len(steps)), 3)
    parts = ", ".join(f"{np.nanmedian(med[t]):.1e}" for t in thirds if len(t))
    lines = [
        f"Logged every {steps[1] - steps[0] if len(steps) > 1 else '?'} steps "
        f"({len(steps)} snapshots of {len(layers)} parameter tensors). The median "
        f"update/weight ratio over layers, in the first, middle and last third of training: "
        f"{parts} (rule of thumb: about {RULE_OF_THUMB:.0e}).",
    ]
    flags = flag_layers(layers, ratios)
    if flags:
        lines.append("")
        lines.append("Layers whose ratio stays far from the rest for most of training:")
        for name, kind, m in flags:
            why = "above 1e-2: large steps, may be unstable" if kind == "high" else \
                "below 1e-5: barely learning"
            lines.append(f"- `{name}`: median {m:.1e} ({why})")
    else:
        lines.append("")
        lines.append("No layer stays above 1e-2 or below 1e-5 for most of training.")
    return "\n".join(lines)


def plot_compare(points: list[tuple[str, Path]], out: Path) -> Path | None:
    """Overlay, for several runs, the median update/weight ratio and the LR over steps."""
    curves = []
    for name, run_dir in points:
        p = RunFiles(run_dir).dynamics
        if p.exists():
            rows = read_dynamics(p)
            _, steps, ratios = _layer_table(rows, "update_ratio")
            if steps or _trace(rows, "lr")[0]:  # a damaged or empty file gives nothing
                curves.append((name, steps, np.nanmedian(ratios, axis=0) if steps else [],
                               *_trace(rows, "lr")))
    if not curves:
        return None
    fig = Figure(figsize=(9, 7))
    a1, a2 = fig.subplots(2, 1, sharex=True)
    for name, steps, med, ls, lr in curves:
        if len(steps):
            a1.plot(steps, med, label=name)
        a2.plot(ls, lr, label=name)
    if any(np.nanmax(c[2], initial=0) > 0 for c in curves if len(c[1])):  # log needs > 0
        a1.set_yscale("log")
    a1.axhline(RULE_OF_THUMB, color="k", ls="--", lw=1)
    a1.set_ylabel("median ‖Δw‖/‖w‖ over layers")
    a1.set_title("What each run's schedule does to the weight updates (dashed: 1e-3)")
    if any(len(c[1]) for c in curves):
        a1.legend(fontsize=7, ncol=2)
    if any(v > 0 for c in curves for v in c[4]):
        a2.set_yscale("log")
    a2.set_xlabel("optimizer step")
    a2.set_ylabel("learning rate")
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return out

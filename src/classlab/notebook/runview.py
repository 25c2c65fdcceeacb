"""A run in a notebook: its card (status, the key numbers, a small curves picture, the run
folder), its report or one section of it inline, and its figures as matplotlib Figures."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from classlab import fmt
from classlab.notebook import markup
from classlab.notebook.detect import figures_inline, in_notebook, show
from classlab.rundir import RunDirError, RunFiles, read_json_object
from classlab.rundir.lock import hold

# run.show(name): the report's sections (their headings) that each name shows
SECTIONS = {
    "summary": ("Summary", "Results"),
    "epochs": ("Epochs",),
    "curves": ("Curves",),
    "per_class": ("Per-class accuracy",),
    "confusion": ("Confusion matrix",),
    "calibration": ("Calibration",),
    "mistakes": ("Misclassified images",),
    "cams": ("Class activation maps", "Can the CAMs be trusted?"),
    "data": ("Is it the data?",),
    "weights": ("Weight updates",),
    "config": ("Configuration",),
}
STATUS_COLOURS = {"finished": "#1a7f37", "running": "#0969da", "failed": "#cf222e",
                  "interrupted": "#9a6700"}
REPORT_CSS = (".classlab-report figure{margin:.6em 0}"
              ".classlab-report figure img{max-width:100%;height:auto}"
              ".classlab-report figcaption{color:#57606a;font-size:.9em;font-style:italic}")


# --------------------------------------------------------------------------- the card


def card(run_dir: Path, summary: dict) -> str:
    """The run's card as HTML (what a notebook shows for a :class:`classlab.Run`)."""
    name = summary.get("name") or run_dir.name
    status = summary.get("status", "not started")
    colour = STATUS_COLOURS.get(status, "#57606a")
    what = " · ".join(str(summary[k]) for k in ("model", "norm", "optimizer", "scheduler")
                      if summary.get(k))
    params = f"{summary['params']:,} params" if summary.get("params") else ""
    head = (f'<div style="font-size:15px"><b>{markup.esc(name)}</b> '
            f'<span style="background:{colour};color:#fff;border-radius:8px;padding:0 7px;'
            f'font-size:12px">{markup.esc(status)}</span></div>'
            + markup.notes([" · ".join(x for x in (what, params) if x)]))
    error = markup.notes([f"error: {summary['error']}"]) if summary.get("error") else ""
    picture = _small_curves(run_dir)
    body = (f'<div style="display:flex;gap:1.2em;align-items:flex-start;flex-wrap:wrap">'
            f"<div>{_numbers(summary)}</div><div>{picture}</div></div>")
    folder = (f'<div style="{markup.NOTE}">Run folder: <code>{markup.esc(run_dir)}</code> · '
              "<code>run.show()</code>: the report inline; <code>run.show(\"mistakes\")</code>: "
              "one section</div>")
    return markup.frame(
        f'<div style="border:1px solid #d0d7de;border-radius:8px;padding:.6em .9em">'
        f"{head}{error}{body}{folder}</div>")


def _numbers(summary: dict) -> str:
    final = summary.get("final") or {}
    rows = [[split, fmt.pct(final.get(f"{split}_acc")), fmt.fixed(final.get(f"{split}_loss"), 4)]
            for split in ("train", "val", "test") if not fmt.missing(final.get(f"{split}_acc"))]
    best = summary.get("best_by_val") or {}
    facts = [f"epochs {summary.get('epochs_done', 0)}/{summary.get('epochs', '?')}",
             f"wall time {fmt.duration(summary.get('wall_seconds'))}"]
    if best.get("by") == "val_acc":
        facts.append(f"best by val: epoch {best.get('epoch')}, test acc "
                     f"{fmt.pct(best.get('test_acc'))}")
    facts += [str(summary[k]) for k in ("device", "precision") if summary.get(k)]
    table = markup.table(["split", "accuracy", "loss"], rows) if rows else ""
    return table + markup.notes(facts)


def _small_curves(run_dir: Path) -> str:
    from classlab.diagnose.figures import curves_figure

    fig = curves_figure(run_dir, size=(9.0, 2.5))
    if fig is None:
        return ""
    return markup.img(markup.png_bytes(fig, dpi=70), "loss, accuracy and LR per epoch")


# --------------------------------------------------------------------------- the report


def report_html(run_dir: Path, section: str | None = None) -> str:
    """The report (or the sections ``section`` names, see :data:`SECTIONS`) as an HTML
    fragment, built now from what the run folder holds."""
    from classlab.report.blocks import P
    from classlab.report.htmlpage import body_html
    from classlab.report.sections import blocks

    if section is not None and section not in SECTIONS:
        raise ValueError(f"section: unknown value {section!r}; allowed: "
                         f"{', '.join(SECTIONS)}")
    with hold(run_dir):  # the weight-update section draws its figures into the run folder
        chosen = blocks(run_dir, weights=section in (None, "weights"))
    if section is not None:
        chosen = _section(chosen, SECTIONS[section]) or [
            P(f"No {section} section in this run's report yet: run.diagnose() makes the "
              "diagnostics, then run.show() draws them.")]
    return markup.frame(f"<style>{REPORT_CSS}</style>" + body_html(chosen, run_dir),
                        "classlab-report")


def _section(report: list, headings: tuple[str, ...]) -> list:
    """The blocks under the level-2 headings that start with one of ``headings``."""
    from classlab.report.blocks import H

    out, keep = [], False
    for b in report:
        if isinstance(b, H) and b.level <= 2:
            keep = b.level == 2 and b.text.startswith(headings)
        if keep:
            out.append(b)
    return out


def show_report(run_dir: Path, section: str | None = None) -> None:
    """The report inline in a notebook; elsewhere one line saying where report.html is."""
    page = report_html(run_dir, section) if in_notebook() else None
    if page is not None:
        show(markup.Html(page, f"report of {run_dir}" + (f": {section}" if section else "")))
        return
    html = RunFiles(run_dir).report_html
    print(f"{html} (open it in a browser; in a notebook run.show() draws it inline)"
          if html.is_file() else f"{run_dir}: no report.html yet; run.report() writes it")


# --------------------------------------------------------------------------- figures


def figure(run_dir: Path, name: str) -> Any:
    """A matplotlib Figure of the run: curves, per_class, confusion, calibration (from the
    run's files), mistakes or cams (the diagnosis's pictures, shown 1:1)."""
    if in_notebook():
        figures_inline()
    files = RunFiles(run_dir)
    if name == "curves":
        from classlab.diagnose.figures import curves_figure

        fig = curves_figure(run_dir)
        if fig is None:
            raise RunDirError(f"{run_dir}: no epoch finished yet (metrics.csv is empty)")
        return fig
    if name == "per_class":
        return _per_class(files)
    if name == "confusion":
        return _confusion(files)
    if name == "calibration":
        return _calibration(files)
    pictures = {"mistakes": (files.mistakes, "Most confident mistakes"),
                "cams": (files.cam_mistakes, "CAMs of the misclassified images per layer")}
    return picture(*pictures[name], run_dir)


def _rows(path: Path, run_dir: Path) -> list[list[str]]:
    try:
        with open(path, newline="") as f:
            return [r for r in csv.reader(f) if r]
    except OSError:
        raise _not_diagnosed(run_dir, path) from None


def _not_diagnosed(run_dir: Path, path: Path) -> RunDirError:
    return RunDirError(f"{run_dir}: no {path.name} yet; run.diagnose() makes it")


def _per_class(files: RunFiles) -> Any:
    from classlab.diagnose.figures import per_class_figure

    rows = _rows(files.per_class_csv, files.root)[1:]  # class_id, class, images, correct, acc
    images, correct = sum(int(r[2]) for r in rows), sum(int(r[3]) for r in rows)
    return per_class_figure([r[1] for r in rows], [fmt.as_float(r[4]) for r in rows],
                            100.0 * correct / images if images else None)


def _confusion(files: RunFiles) -> Any:
    import numpy as np

    from classlab.diagnose.figures import confusion_figure

    rows = _rows(files.confusion_csv, files.root)
    return confusion_figure(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), rows[0][1:])


def _calibration(files: RunFiles) -> Any:
    from classlab.diagnose.calibration import reliability_figure

    cal = (read_json_object(files.diagnose_json) or {}).get("calibration")
    if not isinstance(cal, dict):
        raise _not_diagnosed(files.root, files.diagnose_json)
    return reliability_figure(cal["bins"], "Test set, as the model predicts",
                              cal.get("bins_scaled"))


def picture(path: Path, title: str, run_dir: Path) -> Any:
    """A saved PNG as a Figure, pixel for pixel (the galleries are drawn as one mosaic)."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    if not path.is_file():
        raise _not_diagnosed(run_dir, path)
    pixels = imread(path)
    dpi = 100
    fig = Figure(figsize=(pixels.shape[1] / dpi, pixels.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(pixels, interpolation="nearest")
    ax.set_axis_off()  # the mosaic carries its own titles
    ax.set_label(title)
    return fig

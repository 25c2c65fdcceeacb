"""``classlab table``: a grid folder's results.md, results.csv, test accuracy overlay and
weight-update overlay, rebuilt at any time from the point folders (config.yaml says what a
point is, summary.json how far it got)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from classlab import config
from classlab.config import ConfigError
from classlab.grid.folder import read_grid_dir
from classlab.report.dynamics import plot_compare
from classlab.report.names import MODEL_NAMES, NORM_NAMES, SCHED_NAMES
from classlab.rundir import GridFiles, atomic_write_text, save_figure
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import is_finished, read_summary

# Axis keys that get a fixed, human-named column (always shown, even when not an axis).
NAMED_COLUMNS = {"model.name": ("Model", MODEL_NAMES),
                 "model.norm": ("Normalization", NORM_NAMES),
                 "sched.name": ("Scheduler", SCHED_NAMES)}


def main_table(grid_dir: str | Path) -> int:
    """``classlab table``: rebuild results.md/.csv and test_acc.png, print the table."""
    md, g = write_table(grid_dir), GridFiles(grid_dir)
    print(md.read_text(), end="")
    print(f"wrote {md}, {g.results_csv}, {g.test_acc} and, where weight updates were "
          f"logged, {g.dynamics}")
    return 0


def write_table(grid_dir: str | Path) -> Path:
    """Write results.md, results.csv, test_acc.png and (when the points logged weight updates)
    dynamics.png of a grid folder; returns results.md."""
    grid_dir = Path(grid_dir)
    grid = read_grid_dir(grid_dir)
    extra = [k for k in grid.get("axes", {}) if k not in NAMED_COLUMNS]
    rows = [_gather(grid_dir, entry, extra) for entry in grid["points"]]
    g = GridFiles(grid_dir)
    atomic_write_text(g.results_md, _markdown(grid.get("name", grid_dir.name), rows, extra))
    atomic_write_text(g.results_csv, _csv(rows, extra))
    _plot(g, grid)
    plot_compare([(e["name"], grid_dir / e["name"]) for e in grid["points"]], g.dynamics)
    return g.results_md


def _gather(grid_dir: Path, entry: dict, extra: list[str]) -> dict:
    """One point's facts from its folder: config.yaml for what it is, summary.json for how
    far it got. Missing files give blanks."""
    files = GridFiles(grid_dir).point(entry["name"])
    values = entry.get("values") or {}
    raw = _read_raw_config(files.config)
    summary = read_summary(files.summary) or {}
    row = {"folder": entry["name"], "status": _status(summary), "error": summary.get("error"),
           "params": summary.get("params"), "epochs_done": summary.get("epochs_done"),
           "epochs": summary.get("epochs", _lookup(raw, "train.epochs")),
           "spe": summary.get("seconds_per_epoch")}
    for key, (column, names) in NAMED_COLUMNS.items():
        value = values.get(key, _lookup(raw, key))
        row[column] = "" if value is None else names.get(value, cell(value))
    for key in extra:
        row[key] = cell(values.get(key))
    done = row["status"] == "finished"  # accuracies of unfinished points stay blank
    final = (summary.get("final") or {}) if done else {}
    best = (summary.get("best_by_val") or {}) if done else {}
    row.update(train_acc=final.get("train_acc"), val_acc=final.get("val_acc"),
               test_acc=final.get("test_acc"), best_test=best.get("test_acc"),
               best_epoch=best.get("epoch"))
    return row


def _read_raw_config(path: Path) -> dict:
    try:
        return config.read_yaml(path)
    except ConfigError:
        return {}


def _lookup(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _status(summary: dict) -> str:
    if not summary:
        return "not started"
    if is_finished(summary):
        return "finished"
    if summary.get("status") == "failed":
        return "failed"
    return "unfinished"  # still running, or killed: the summary cannot tell which


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    return str(value)


def _pct(value: Any) -> str:
    # 2 decimals: with 10,000 test images one image is exactly 0.01%.
    return "" if value is None or value != value else f"{value:.2f}"


MD_TAIL = ["Params", "Train acc", "Val acc", "Test acc", "Best-by-val test acc", "Epochs",
           "s/epoch", "Status", "Run folder"]
CSV_TAIL = ["Params", "Train acc", "Val acc", "Test acc", "Best-by-val test acc",
            "Best-by-val epoch", "Epochs", "Epochs planned", "s/epoch", "Status", "Error",
            "Run folder"]
HEAD = [column for column, _ in NAMED_COLUMNS.values()]


def _markdown(name: str, rows: list[dict], extra: list[str]) -> str:
    header = HEAD + extra + MD_TAIL
    lines = [f"# Grid {name}", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    for r in rows:
        cells = [r[c] for c in HEAD + extra] + _md_tail(r)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Accuracies in %. Train acc is the running accuracy of the last epoch over "
              "its augmented images; Val and Test acc are of the final epoch. Best-by-val test "
              "acc is the test accuracy of the epoch with the best validation accuracy (the "
              "test set chooses nothing).", ""]
    return "\n".join(lines)


def _md_tail(r: dict) -> list[str]:
    pct = {k: f"{_pct(r[k])}%" if _pct(r[k]) else "" for k in ("train_acc", "val_acc",
                                                               "test_acc", "best_test")}
    best = f"{pct['best_test']} (epoch {r['best_epoch']})" if pct["best_test"] else ""
    done, planned = r["epochs_done"], r["epochs"]
    epochs = "" if planned is None else (str(planned) if done == planned
                                         else f"{done or 0}/{planned}")
    status = f"failed: {r['error']}" if r["status"] == "failed" and r["error"] else r["status"]
    return [f"{r['params']:,}" if r["params"] is not None else "", pct["train_acc"],
            pct["val_acc"], pct["test_acc"], best, epochs,
            f"{r['spe']:.1f}" if r["spe"] is not None else "", status,
            f"[{r['folder']}]({r['folder']}/)"]


def _csv(rows: list[dict], extra: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEAD + extra + CSV_TAIL)
    for r in rows:
        w.writerow([r[c] for c in HEAD + extra] + [
            "" if r["params"] is None else r["params"], _pct(r["train_acc"]),
            _pct(r["val_acc"]), _pct(r["test_acc"]), _pct(r["best_test"]),
            cell(r["best_epoch"]), cell(r["epochs_done"]), cell(r["epochs"]),
            "" if r["spe"] is None else f"{r['spe']:.1f}", r["status"], r["error"] or "",
            r["folder"]])
    return buf.getvalue()


def _plot(g: GridFiles, grid: dict) -> Path:
    """Overlay of every point's test accuracy per epoch (from its metrics.csv)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or open figures
    from matplotlib.ticker import MaxNLocator

    grid_dir = g.root
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    drawn, last = 0, 1
    for (color, style), entry in zip(_line_styles(grid), grid["points"]):
        rows = _safe_metrics(g.point(entry["name"]).metrics)
        if rows:
            last = max(last, rows[-1]["epoch"])
            ax.plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], marker="o",
                    markersize=3, color=color, linestyle=style, label=entry["name"])
            drawn += 1
    ax.set(xlabel="epoch", ylabel="test accuracy (%)",
           title=f"{grid.get('name', grid_dir.name)}: test accuracy")
    # Whole epochs only; a single epoch otherwise gets an axis of 0.96..1.04.
    if last <= 10:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, last + 0.5)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(0.5, 0.5, "no finished epochs yet", ha="center", transform=ax.transAxes)
    save_figure(fig, g.test_acc, dpi=110)
    return g.test_acc


_STYLES = ("-", "--", ":", "-.")


def _line_styles(grid: dict) -> list[tuple[str, str]]:
    """(colour, line style) per point. With a short last axis (e.g. 3 schedulers) the style
    encodes that axis and the colour the rest, so 12 lines stay tellable apart."""
    n = len(grid["points"])
    axes = list((grid.get("axes") or {}).values())
    k = len(axes[-1]) if len(axes) > 1 else 0
    if 1 < k <= len(_STYLES) and n // k <= 10:
        return [(f"C{i // k}", _STYLES[i % k]) for i in range(n)]
    return [(f"C{i % 10}", _STYLES[i // 10 % len(_STYLES)]) for i in range(n)]


def _safe_metrics(path: Path) -> list[dict]:
    try:
        return read_metrics(path)
    except (OSError, ValueError, KeyError):  # a half-written row of a running point
        return []

"""``classlab table``: a grid folder's results.md, results.csv, test accuracy overlay and
weight-update overlay, rebuilt at any time from the point folders (config.yaml says what a
point is, summary.json how far it got)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from classlab import config, fmt, stats
from classlab.compare.paired import CompareError, check_same_test_set, paired_test, try_outputs
from classlab.config import ConfigError
from classlab.fmt import MISSING, csv_number, fixed, is_nan, markdown_table, missing, pct
from classlab.grid.folder import read_grid_dir
from classlab.grid.tunetable import tuning_markdown
from classlab.report.dynamics import plot_compare
from classlab.report.names import MODEL_NAMES, NORM_NAMES, SCHED_NAMES
from classlab.rundir import (
    GridFiles,
    RunDirError,
    all_or_nothing,
    atomic_write_text,
    save_figure,
)
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import load_summary, run_state, stopped_early

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
    extra += list((grid.get("tune") or {}).get("space") or {})  # the tuned values
    runs = [_gather(grid_dir, entry, extra) for entry in grid["points"]]
    groups = _groups(runs)
    comparison = compare_groups(grid_dir, groups)
    _add_ece(groups, comparison["outputs"])
    g = GridFiles(grid_dir)
    seeded = grid.get("seeds") is not None
    tuned = tuning_markdown(grid_dir, grid, _ranking(groups, comparison),
                            _untuned_ranking(grid_dir, grid)) if grid.get("tune") else ""
    with all_or_nothing():  # a full disk leaves the previous table as it was
        atomic_write_text(g.results_md, _markdown(grid.get("name", grid_dir.name), groups,
                                                  extra, comparison, seeded) + tuned)
        atomic_write_text(g.results_csv, _csv(runs, extra))
        _plot(g, grid)
        plot_compare([(e["name"], grid_dir / e["name"]) for e in grid["points"]], g.dynamics)
    return g.results_md


def _gather(grid_dir: Path, entry: dict, extra: list[str]) -> dict:
    """One run's facts from its folder: config.yaml for what it is, summary.json for how
    far it got. Missing files give blanks."""
    files = GridFiles(grid_dir).point(entry["name"])
    values = entry.get("values") or {}
    raw = _read_raw_config(files.config)
    damaged = False
    try:
        summary = load_summary(files.summary) or {}
    except RunDirError:
        summary, damaged = {}, True
    row = {"folder": entry["name"], "group": entry.get("group") or entry["name"],
           "seed": entry.get("seed"), "values": values, "status": _status(summary),
           "error": summary.get("error"), "params": summary.get("params"),
           "epochs_done": summary.get("epochs_done"), "stopped": stopped_early(summary),
           "epochs": summary.get("epochs", _lookup(raw, "train.epochs")),
           "spe": summary.get("seconds_per_epoch")}
    if damaged:
        row["status"] = "damaged summary.json"
    for key, (column, names) in NAMED_COLUMNS.items():
        value = values.get(key, _lookup(raw, key))
        row[column] = "" if value is None else names.get(value, fmt.value(value))
    for key in extra:
        row[key] = fmt.value(values.get(key, _lookup(raw, key)))  # a tuned key: config.yaml
    done = row["status"] == "finished"  # accuracies of unfinished points stay blank
    final = (summary.get("final") or {}) if done else {}
    best = (summary.get("best_by_val") or {}) if done else {}
    row.update(train_acc=final.get("train_acc"), val_acc=final.get("val_acc"),
               test_acc=final.get("test_acc"), best_test=best.get("test_acc"),
               best_epoch=best.get("epoch"))
    return row


# --------------------------------------------------------------------------- per point


def _groups(runs: list[dict]) -> list[dict]:
    """One row per point: its runs (one per seed), in grid order."""
    order: dict[str, dict] = {}
    for r in runs:
        order.setdefault(r["group"], {"group": r["group"], "runs": []})["runs"].append(r)
    return [_aggregate(g) for g in order.values()]


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if not missing(v)]


def _aggregate(g: dict) -> dict:
    """n, mean ± sd and the 95% t interval of each accuracy over the point's finished runs."""
    runs, first = g["runs"], g["runs"][0]
    done = [r for r in runs if r["status"] == "finished"]
    g.update({k: first[k] for k in (*HEAD, "values", "params", "epochs")})
    g.update({k: first[k] for k in first if k not in g and k not in ("folder", "seed")})
    g["n"], g["n_runs"] = len(done), len(runs)
    for key in ("train_acc", "val_acc", "test_acc", "best_test", "spe"):
        vals = _finite([r[key] for r in done] if key != "spe" else [r[key] for r in runs])
        g[key] = stats.mean_ci(vals) if vals else None
    g["epochs_done"] = min((r["epochs_done"] or 0) for r in runs)
    g["status"] = _group_status(runs)
    return g


def _group_status(runs: list[dict]) -> str:
    states = [r["status"] for r in runs]
    if len(runs) == 1:
        r = runs[0]
        return f"failed: {r['error']}" if r["status"] == "failed" and r["error"] else r["status"]
    if all(s == "finished" for s in states):
        return "finished"
    failed = sum(s == "failed" for s in states)
    done = sum(s == "finished" for s in states)
    return f"{done}/{len(runs)} finished" + (f", {failed} failed" if failed else "")


# --------------------------------------------------------------------------- vs the best


def _mean(stat: dict | None) -> float:
    return stat["mean"] if stat else float("nan")


def compare_groups(grid_dir: Path, groups: list[dict]) -> dict:
    """The best point (by mean validation accuracy; by training accuracy when no point has a
    validation split: the test set chooses nothing), and every other point's paired test
    against it: pooled exact McNemar over the seeds both ran, Holm-adjusted over the points
    compared. Points without stored test outputs get no p-value."""
    scored = [g for g in groups if g["n"]]
    done: dict[str, Any] = {"groups": groups, "outputs": {}}
    if not scored:
        return {**done, "best": None, "by": None, "tests": {}}
    by = "val_acc" if any(not is_nan(_mean(g["val_acc"])) for g in scored) else "train_acc"
    best = max((g for g in scored if not is_nan(_mean(g[by]))), key=lambda g: _mean(g[by]))
    outputs = {r["folder"]: try_outputs(grid_dir / r["folder"])
               for g in scored for r in g["runs"] if r["status"] == "finished"}
    done["outputs"] = outputs
    tests = {}
    for g in scored:
        if g is best:
            continue
        pairs = _seed_pairs(g, best, outputs)
        if pairs:
            tests[g["group"]] = paired_test(pairs)
    names = list(tests)
    for name, adj in zip(names, stats.holm([tests[n].p for n in names])):
        tests[name].p_holm = adj
    return {**done, "best": best["group"], "by": by, "tests": tests}


def _add_ece(groups: list[dict], outputs: dict) -> None:
    """Each point's expected calibration error on the test set (top-label, 15 bins, in %;
    mean ± sd over seeds), from the stored test outputs: how far its confidences are from
    its accuracy (classlab.diagnose.calibration)."""
    import torch

    from classlab.diagnose.calibration import ece

    for g in groups:
        vals = [100.0 * ece(torch.from_numpy(o.probs), torch.from_numpy(o.labels))
                for r in g["runs"] if (o := outputs.get(r["folder"])) is not None]
        g["ece"] = stats.mean_ci(vals) if vals else None


def _seed_pairs(g: dict, best: dict, outputs: dict) -> list:
    """(this point's run, the best point's run) with the same seed, both with outputs on the
    same test set; a run without a seed pairs with the other's one run."""
    mine = {r["seed"]: outputs.get(r["folder"]) for r in g["runs"]}
    theirs = {r["seed"]: outputs.get(r["folder"]) for r in best["runs"]}
    pairs = [(mine[k], theirs[k]) for k in mine if mine.get(k) is not None
             and theirs.get(k) is not None]
    try:
        for a, b in pairs:
            check_same_test_set([a, b])
    except CompareError:
        return []
    return pairs


def _describe(g: dict, best: dict) -> str:
    """ "LayerNorm vs BatchNorm on ResNet18 with OneCycleLR": what differs, then what not."""
    mine, theirs = g["values"], best["values"]
    differ = [k for k in mine if mine.get(k) != theirs.get(k)]
    same = [k for k in mine if k not in differ]
    text = (" + ".join(_display(k, mine[k]) for k in differ) + " vs "
            + " + ".join(_display(k, theirs.get(k)) for k in differ))
    if same:
        text += " with " + ", ".join(_display(k, mine[k]) for k in same)
    return text


def _display(key: str, value: Any) -> str:
    if key in NAMED_COLUMNS:
        return NAMED_COLUMNS[key][1].get(value, fmt.value(value))
    return f"{key}={fmt.value(value)}"


def _sentences(groups: list[dict], comparison: dict) -> list[str]:
    """The plain-language findings that open results.md, one per compared point."""
    if comparison["best"] is None:
        return ["No point has finished yet."]
    best = next(g for g in groups if g["group"] == comparison["best"])
    by = "validation" if comparison["by"] == "val_acc" else "training (no validation split)"
    lines = [f"Best point by mean {by} accuracy: **{best['group']}** (test accuracy "
             f"{pct(_mean(best['test_acc']))}, {best['n']} seed{'s' * (best['n'] != 1)})."]
    for g in groups:
        t = comparison["tests"].get(g["group"])
        if t is None or not g["n"]:
            continue
        diff = _mean(g["test_acc"]) - _mean(best["test_acc"])
        same = t.p_holm >= 0.05
        lines.append(f"- {_describe(g, best)}: {diff:+.2f}% test accuracy, {g['n']} "
                     f"seed{'s' * (g['n'] != 1)}, {stats.format_p(t.p_holm)}"
                     + (" (not distinguishable from the best at 5%)" if same else ""))
    return lines


def _ranking(groups: list[dict], comparison: dict) -> list[str] | None:
    """The points with finished runs, best first, by the measure that picks the best
    point (mean validation accuracy; training accuracy without a validation split)."""
    by = comparison.get("by")
    if by is None:
        return None
    scored = [g for g in groups if g["n"] and not is_nan(_mean(g[by]))]
    return [g["group"] for g in sorted(scored, key=lambda g: -_mean(g[by]))]


def _untuned_ranking(grid_dir: Path, grid: dict) -> tuple[Path, list[str] | None] | None:
    """A tuned grid's untuned counterpart (tune.untuned: a grid folder next to this one,
    or an absolute path) and its ranking; None when the grid names none."""
    name = (grid.get("tune") or {}).get("untuned")
    if not name:
        return None
    other = Path(name) if Path(name).is_absolute() else grid_dir.parent / name
    try:
        entries = read_grid_dir(other)["points"]
    except ConfigError:
        return other, None
    extra: list[str] = []
    groups = _groups([_gather(other, e, extra) for e in entries])
    return other, _ranking(groups, compare_groups(other, groups))


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
    state = run_state(summary)
    return "unfinished" if state == "interrupted" else state  # an interrupted point resumes


MD_TAIL = ["Params", "Train acc", "Val acc", "Test acc", "vs best", "ECE", "Best-by-val test acc",
           "Epochs", "s/epoch", "Status", "Run folder"]
CSV_TAIL = ["Params", "Train acc", "Val acc", "Test acc", "Best-by-val test acc",
            "Best-by-val epoch", "Epochs", "Epochs planned", "s/epoch", "Status", "Error",
            "Run folder", "Point", "Seed"]
HEAD = [column for column, _ in NAMED_COLUMNS.values()]
NOTE = ("Accuracies in %. Train acc is the running accuracy of the last epoch over its augmented "
        "images; Val and Test acc are of the final epoch. Best-by-val test acc is the test "
        "accuracy of the epoch with the best validation accuracy (the test set chooses "
        "nothing). vs best: the test accuracy difference to the best point (chosen by "
        "validation accuracy) and the p-value of McNemar's exact test on the same test images "
        "(seeds pooled), Holm-adjusted for the number of points compared; ≈ marks a point not "
        "distinguishable from the best at 5%. ECE: expected calibration error of the test "
        "predictions (top-label confidence, 15 equal-width bins), in % points: 0 means the "
        "confidences are as high as the accuracy. McNemar's test covers the finite test set, not "
        "the spread between seeds: that is the ± sd and the 95% interval over seeds.")


def _stat(stat: dict | None, seeded: bool) -> str:
    """"90.19%", or over seeds "90.19 ± 0.07%" (one seed stays a plain number)."""
    if not stat:
        return MISSING
    if not seeded or stat["sd"] is None:
        return pct(stat["mean"])
    return f"{pct(stat['mean'], sign=False)} ± {pct(stat['sd'])}"


def _ci(stat: dict | None) -> str:
    if not stat or stat["lo"] is None:
        return MISSING
    return f"[{pct(stat['lo'], sign=False)}, {pct(stat['hi'], sign=False)}]"


def _vs_best(g: dict, comparison: dict) -> str:
    if g["group"] == comparison["best"]:
        return "best"
    t = comparison["tests"].get(g["group"])
    best = next((b for b in comparison["groups"] if b["group"] == comparison["best"]), None)
    if t is None or best is None:
        return MISSING
    diff = _mean(g["test_acc"]) - _mean(best["test_acc"])
    return f"{diff:+.2f} ({stats.format_p(t.p_holm)})" + (" ≈" if t.p_holm >= 0.05 else "")


def _markdown(name: str, groups: list[dict], extra: list[str], comparison: dict,
              seeded: bool) -> str:
    tail = list(MD_TAIL)
    if seeded:
        tail[4:4] = ["95% CI test"]
        tail[0:0] = ["Seeds"]
    header = HEAD + extra + tail
    rows = [[g[c] for c in HEAD + extra] + _md_tail(g, comparison, seeded) for g in groups]
    return "\n".join([f"# Grid {name}", "", *_sentences(groups, comparison), "",
                      markdown_table(header, rows, "l" * len(header)), "", NOTE, ""])


def _md_tail(g: dict, comparison: dict, seeded: bool) -> list[str]:
    best = _stat(g["best_test"], seeded)
    if g["best_test"] and not seeded:
        best += f" (epoch {g['runs'][0]['best_epoch']})"
    done, planned = g["epochs_done"], g["epochs"]
    epochs = MISSING if planned is None else (str(planned) if done == planned
                                         else f"{done or 0}/{planned}")
    if any(r.get("stopped") for r in g["runs"]):
        epochs += " (stopped early)"
    spe = fixed(g["spe"]["mean"], 1) if g["spe"] else MISSING
    folders = " ".join(f"[{r['folder'] if not seeded else 'seed' + str(r['seed'])}]"
                       f"({r['folder']}/)" for r in g["runs"])
    cells = [f"{g['params']:,}" if g["params"] is not None else MISSING,
             _stat(g["train_acc"], seeded), _stat(g["val_acc"], seeded),
             _stat(g["test_acc"], seeded), _vs_best(g, comparison), _stat(g.get("ece"), seeded),
             best, epochs, spe,
             g["status"], folders]
    if seeded:
        cells[4:4] = [_ci(g["test_acc"])]
        cells[0:0] = [f"{g['n']}/{g['n_runs']}" if g["n"] != g["n_runs"] else str(g["n"])]
    return cells


def _csv(rows: list[dict], extra: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEAD + extra + CSV_TAIL)
    for r in rows:
        w.writerow([r[c] for c in HEAD + extra] + [
            "" if r["params"] is None else r["params"], *(csv_number(r[k], ".2f") for k in (
                "train_acc", "val_acc", "test_acc", "best_test")),
            fmt.value(r["best_epoch"]), fmt.value(r["epochs_done"]), fmt.value(r["epochs"]),
            "" if r["spe"] is None else f"{r['spe']:.1f}", r["status"], r["error"] or "",
            r["folder"], r["group"], fmt.value(r["seed"])])
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

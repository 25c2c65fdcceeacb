"""The tuning part of a tuned grid's results.md and its figure, tuning.png, read from each
point's ``tune/<point>/tuning.json`` (:mod:`classlab.grid.tune`; no Optuna needed here).

Per point: the tuned values, the trials finished / complete / pruned / failed, the compute
spent (trial-epochs and seconds), the best trial's and the baseline's (trial 0: the point's
own values) metric, and a warning when a tuned value sits at an edge of its range. Then
whether tuning changed the ranking: against the untuned grid named by ``tune.untuned`` (the
same points without tuning, full recipe), and at the trial budget against trial 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from classlab import fmt
from classlab.fmt import MISSING, markdown_table
from classlab.rundir import GridFiles, read_json, save_figure


def read_tunings(grid_dir: Path, grid: dict) -> dict[str, dict | None]:
    """Point -> its tuning.json (None when it has none yet, or it is unreadable)."""
    out: dict[str, dict | None] = {}
    g = GridFiles(grid_dir)
    for entry in grid.get("points") or []:
        group = entry.get("group") or entry["name"]
        if group in out:
            continue
        try:
            out[group] = read_json(g.tuning(group))
        except (OSError, ValueError):
            out[group] = None
    return out


def _values(params: dict | None) -> str:
    if not params:
        return MISSING
    return ", ".join(f"{k}={fmt.number(v) if isinstance(v, float) else fmt.value(v)}"
                     for k, v in params.items())


def _last(trial: dict | None) -> float | None:
    """A trial's metric: its value when complete, else its last reported epoch's."""
    if not trial:
        return None
    if trial.get("value") is not None:
        return trial["value"]
    curve = trial.get("curve") or {}
    return curve[max(curve, key=int)] if curve else None


def _row(group: str, r: dict | None) -> list[str]:
    if r is None:
        return [group, "not tuned yet", *[MISSING] * 5]
    best = r.get("best") or {}
    base = r.get("baseline")
    return [group, _values(best.get("params")),
            f"{fmt.number(best.get('value'))} (trial {best.get('number', MISSING)})"
            if best else MISSING,
            f"{fmt.number(_last(base))} ({_values(base.get('params'))})" if base else MISSING,
            f"{r['finished']}/{r['budget']} ({r['complete']} complete, {r['pruned']} pruned, "
            f"{r['failed']} failed)",
            str(r["trial_epochs"]), fmt.duration(r["seconds"])]


def _edge_lines(tunings: dict[str, dict | None]) -> list[str]:
    lines = []
    for group, r in tunings.items():
        for key, side in ((r or {}).get("edges") or {}).items():
            value = r["best"]["params"][key]
            lo, hi = next(iter(r["space"][key].values()))
            lines.append(f"- **{group}**: the best {key} = {fmt.number(value)} sits at the "
                         f"{side} edge of its range [{fmt.number(lo)}, {fmt.number(hi)}]: the "
                         "range was probably too narrow; widen it on that side and tune again.")
    return lines


def _order(ranking: list[str]) -> str:
    return " > ".join(f"**{g}**" for g in ranking)


def _compare(what: str, before: list[str], after: list[str]) -> str:
    common = [g for g in before if g in after]
    b, a = common, [g for g in after if g in common]
    if len(common) < 2:
        return f"{what}: too few points finished on both sides to compare rankings."
    verdict = "tuning did not change the ranking" if a == b else (
        "tuning changed the ranking" + (f" (best point: {a[0]} instead of {b[0]})"
                                        if a[0] != b[0] else " (the same best point)"))
    return f"{what}: untuned {_order(b)}; tuned {_order(a)}: {verdict}."


def ranking_sentences(tunings: dict[str, dict | None], tuned: list[str] | None,
                      untuned: tuple[Path, list[str] | None] | None) -> list[str]:
    """Whether tuning changed the ranking: the final runs against the untuned grid (when
    tune.untuned names one), and the best trial against trial 0 at the trial budget."""
    out = []
    if untuned is not None:
        where, ranking = untuned
        if ranking is None:
            out.append(f"Untuned grid {where}: not found or not tabulated yet (run the same "
                       "grid without tune: there to compare rankings).")
        elif tuned:
            out.append(_compare(f"Final runs, by mean validation accuracy, against the untuned "
                                f"grid {where.name}", ranking, tuned))
    done = {g: r for g, r in tunings.items() if r and r.get("best") and r.get("baseline")}
    if len(done) >= 2:
        sign = 1 if next(iter(done.values()))["direction"] == "maximize" else -1
        metric = next(iter(done.values()))["metric"]

        def order(f) -> list[str]:
            scored = [(g, f(r)) for g, r in done.items() if f(r) is not None]
            return [g for g, v in sorted(scored, key=lambda x: -sign * x[1])]
        out.append(_compare(f"At the trial budget, by {metric} (untuned = trial 0, the "
                            "point's own values)", order(lambda r: _last(r["baseline"])),
                            order(lambda r: r["best"]["value"])))
    return out


def tuning_markdown(grid_dir: Path, grid: dict, tuned: list[str] | None,
                    untuned: tuple[Path, list[str] | None] | None) -> str:
    """The "Tuning" section of a tuned grid's results.md (and tuning.png beside it)."""
    spec = grid["tune"]
    tunings = read_tunings(grid_dir, grid)
    budget = ", ".join(f"{k}={fmt.value(v)}" for k, v in (spec.get("trial") or {}).items())
    metric = spec["metric"]
    header = ["Point", "Tuned values", f"Best {metric} (trial)",
              f"Baseline {metric} (trial 0 values)", "Trials finished", "Trial-epochs",
              "Tuning time"]
    lines = [
        "", "## Tuning", "",
        f"Every point was tuned on the same budget: {spec['trials']} trials, each trained "
        f"with {budget or 'the full recipe'}, sampled by Optuna's {spec['sampler']} sampler "
        f"(seed {spec['seed']}) over "
        + "; ".join(f"{k} {_space(v)}" for k, v in spec["space"].items())
        + f", scored by the {metric} of the trial's last epoch, and pruned by "
        + ("nothing" if spec["pruner"] == "none" else f"the {spec['pruner']} pruner")
        + "." + (" Trial 0 is the point's own values (the baseline)." if spec["baseline"]
                 else "")
        + " The final runs in the table above use each point's best values with the full "
        "recipe (and the grid's seeds). Compute spent: trial-epochs summed over the trials "
        "(a pruned trial counts the epochs it trained).", "",
        markdown_table(header, [_row(g, r) for g, r in tunings.items()], "l" * len(header)),
        ""]
    edges = _edge_lines(tunings)
    if edges:
        lines += ["Ranges:", "", *edges, ""]
    lines += [f"- {s}" for s in ranking_sentences(tunings, tuned, untuned)]
    if plot_tuning(grid_dir, grid, tunings) is not None:
        lines += ["", f"![tuning]({GridFiles(grid_dir).tuning_png.name})"]
    return "\n".join(lines) + "\n"


def _space(d: dict) -> str:
    kind, v = next(iter(d.items()))
    if kind == "choice":
        return "in {" + ", ".join(fmt.value(x) for x in v) + "}"
    return f"{kind.replace('_', '-')} in [{fmt.number(v[0])}, {fmt.number(v[1])}]"


# --------------------------------------------------------------------------- the figure


def _best_so_far(ax: Any, color: str, group: str, r: dict) -> None:
    """Each trial's metric (dots: complete, x: pruned, at its last epoch) and the best so far."""
    sign = 1 if r["direction"] == "maximize" else -1
    best, xs, ys = None, [], []
    for t in r["trials"]:
        v = _last(t)
        if t["state"] == "COMPLETE" and v is not None and math.isfinite(v):
            best = v if best is None or sign * v > sign * best else best
        if best is not None:
            xs.append(t["number"])
            ys.append(best)
        if v is not None and math.isfinite(v):
            ax.plot(t["number"], v, "x" if t["state"] == "PRUNED" else "o", color=color,
                    alpha=0.6, markersize=5)
    ax.step(xs, ys, where="post", color=color, label=group)


def _landscape(ax: Any, key: str, tunings: dict[str, dict | None]) -> None:
    for i, (group, r) in enumerate(tunings.items()):
        if not r:
            continue
        color = f"C{i % 10}"
        for t in r["trials"]:
            v, x = _last(t), t["params"].get(key)
            if v is None or not math.isfinite(v) or not isinstance(x, (int, float)):
                continue
            ax.plot(x, v, "x" if t["state"] == "PRUNED" else "o", color=color, alpha=0.7)
        best = r.get("best")
        if best and isinstance(best["params"].get(key), (int, float)):
            ax.plot(best["params"][key], best["value"], "*", color=color, markersize=14,
                    markeredgecolor="black", label=f"{group} best")
        kind, ends = next(iter(r["space"][key].items()))
        if kind == "log_uniform":
            ax.set_xscale("log")
        if kind != "choice":
            for end in ends:
                ax.axvline(end, color="grey", linestyle="--", linewidth=0.8)


def plot_tuning(grid_dir: Path, grid: dict, tunings: dict[str, dict | None]) -> Path | None:
    """tuning.png: per point the best-so-far curve over trials (pruned trials as x), and
    one landscape panel (metric vs value) per numeric tuned key. None when nothing ran."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn = {g: r for g, r in tunings.items() if r and r.get("trials")}
    if not drawn:
        return None
    spec = grid["tune"]
    keys = [k for k, d in spec["space"].items() if next(iter(d)) != "choice"]
    fig = Figure(figsize=(5.5 * (1 + len(keys)), 4.5), layout="constrained")
    axes = fig.subplots(1, 1 + len(keys), squeeze=False)[0]
    for i, (group, r) in enumerate(tunings.items()):
        if r and r.get("trials"):
            _best_so_far(axes[0], f"C{i % 10}", group, r)
    axes[0].set(xlabel="trial", ylabel=spec["metric"],
                title="best so far (o complete, x pruned: last epoch)")
    axes[0].legend(fontsize="small")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, key in zip(axes[1:], keys):
        _landscape(ax, key, tunings)
        ax.set(xlabel=key, ylabel=spec["metric"], title=f"{key}: landscape (dashed: range)")
        ax.legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    path = GridFiles(grid_dir).tuning_png
    save_figure(fig, path, dpi=100)
    return path

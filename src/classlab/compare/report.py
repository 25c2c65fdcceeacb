"""``classlab compare RUN_A RUN_B [RUN ...]``: one self-contained report (compare.md and
compare.html) of what differs between runs and where their predictions part.

Sections: the config keys that differ (only those), the final metrics side by side with the
paired test of each run against the first, the curves overlaid, per-class accuracy
differences, the test images one run gets right and the other wrong (both directions, the
wrong run's most confident answers first) and the weight-update overlay. Every run must have
been scored on the same test images; runs without stored test outputs are refused with one
line, or scored now with ``evaluate=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classlab import config, stats
from classlab.compare.paired import (
    CompareError,
    RunOutputs,
    check_same_test_set,
    load_outputs,
    paired_test,
)
from classlab.fmt import is_nan, pct
from classlab.report.blocks import Block, H, Img, Md, P, Table
from classlab.report.dynamics import plot_compare
from classlab.report.htmlpage import to_html
from classlab.report.markdown import to_markdown
from classlab.rundir import (
    RunDirError,
    RunFiles,
    all_or_nothing,
    atomic_write_text,
    make_folder,
    read_json,
    run_folder,
    save_figure,
)
from classlab.rundir.metrics import read_metrics

GALLERY = 20  # images per direction


@dataclass
class Compared:
    """What the report needs of one run."""

    files: RunFiles
    raw: dict  # config.yaml as a mapping
    summary: dict
    metrics: list[dict]
    outputs: RunOutputs

    @property
    def name(self) -> str:
        return self.files.root.name


# --------------------------------------------------------------------------- loading


def _open(run_dir: Path, evaluate: bool, data_root: Path | None) -> Compared:
    files = RunFiles(run_dir)
    run_folder(run_dir)
    raw = config.read_yaml(files.config)
    try:
        summary = read_json(files.summary)
    except (OSError, ValueError):
        summary = {}
    try:
        outputs = load_outputs(files.root)
    except CompareError:
        if not evaluate:
            raise
        outputs = _evaluate(files.root, data_root)
    return Compared(files, raw, summary, read_metrics(files.metrics), outputs)


def _evaluate(run_dir: Path, data_root: Path | None) -> RunOutputs:
    """Score the run's checkpoint on its test set now (``--evaluate``), keeping it in memory."""
    from classlab.run.session import session_from_run

    s, _ = session_from_run(run_dir, data_root)
    ev = s.evaluate("test", keep_outputs=True)
    y = s.data["test"][1]
    return RunOutputs(Path(run_dir), y.cpu().numpy().astype(np.int64), ev.probs.float().numpy())


def _check_comparable(runs: list[Compared]) -> None:
    names = {_get(r.raw, "data.name") for r in runs}
    if len(names) > 1:
        detail = ", ".join(f"{r.name}: {_get(r.raw, 'data.name')}" for r in runs)
        raise CompareError(f"runs of different datasets cannot be compared ({detail})")
    check_same_test_set([r.outputs for r in runs])


# --------------------------------------------------------------------------- config


def _flat(raw: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get(raw: dict, key: str) -> Any:
    return _flat(raw).get(key)


def config_diff(raws: list[dict]) -> list[tuple[str, list[Any]]]:
    """(full key, value in each run) of every config key whose values differ; the run name
    (which only names the folder) is left out."""
    flats = [_flat(config.to_dict(config.from_dict(r))) for r in raws]
    keys = [k for k in flats[0] if k != "name"]
    return [(k, [f.get(k) for f in flats]) for k in keys
            if any(f.get(k) != flats[0].get(k) for f in flats[1:])]


def _show(v: Any) -> str:
    return "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))


# --------------------------------------------------------------------------- sections


def _final(r: Compared, key: str) -> Any:
    return (r.summary.get("final") or {}).get(key)


def _metrics_blocks(runs: list[Compared]) -> tuple[list[Block], list[str]]:
    """Final metrics side by side, with each run's paired test against the first; and the
    plain-language lines that open the report."""
    first, rows, lines = runs[0], [], []
    for r in runs:
        acc = r.outputs.acc
        if r is first:
            vs = "reference"
        else:
            t = paired_test([(r.outputs, first.outputs)])
            vs = (f"{acc - first.outputs.acc:+.2f}%: {t.b} images right only here, {t.c} only "
                  f"in {first.name}; {stats.format_p(t.p)}")
            lines.append(f"- **{r.name}** vs **{first.name}**: {acc - first.outputs.acc:+.2f}% "
                         f"test accuracy on the same {len(r.outputs.labels):,} images, "
                         f"{stats.format_p(t.p)} (McNemar's exact test)"
                         + (" — not distinguishable at 5%" if t.p >= 0.05 else ""))
        rows.append([r.name, pct(_final(r, "train_acc")), pct(_final(r, "val_acc")),
                     pct(acc), vs])
    table = Table(["run", "train acc", "val acc", "test acc (stored outputs)",
                   "vs the first run (paired test)"], rows, "lrrrl")
    return [H(2, "Final metrics"), table], lines


def _config_blocks(runs: list[Compared]) -> list[Block]:
    diff = config_diff([r.raw for r in runs])
    out: list[Block] = [H(2, "What differs in the configs")]
    if not diff:
        out.append(P("Nothing: the configs are identical (apart from the run name)."))
        return out
    out.append(Table(["key", *[r.name for r in runs]],
                     [[f"`{k}`", *[_show(v) for v in vals]] for k, vals in diff], "l" * (
                         len(runs) + 1)))
    return out


def _curves(runs: list[Compared], path: Path) -> bool:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not any(r.metrics for r in runs):
        return False
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, r in enumerate(runs):
        ep = [m["epoch"] for m in r.metrics]
        axes[0].plot(ep, [m["train_loss"] for m in r.metrics], marker="o", ms=3, color=f"C{i}",
                     label=r.name)
        for split, style in (("val", "--"), ("test", "-")):
            ys = [m[f"{split}_acc"] for m in r.metrics]
            if not all(is_nan(y) for y in ys):
                axes[1].plot(ep, ys, marker="o", ms=3, ls=style, color=f"C{i}",
                             label=f"{r.name} ({split})")
    axes[0].set(xlabel="epoch", ylabel="training loss (mean per image)",
                title="Training loss per epoch")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)",
                title="Validation (dashed) and test accuracy per epoch")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path, dpi=100)
    return True


def _per_class_blocks(runs: list[Compared]) -> list[Block]:
    first = runs[0]
    classes = first.summary.get("classes") or [str(k) for k in range(first.outputs.probs.shape[1])]
    y = first.outputs.labels
    accs = [[100.0 * float(r.outputs.correct[y == k].mean()) if (y == k).any() else float("nan")
             for k in range(len(classes))] for r in runs]
    header = ["class", first.name] + [f"{r.name} (Δ)" for r in runs[1:]]
    rows = [[classes[k], f"{accs[0][k]:.1f}"]
            + [f"{a[k]:.1f} ({a[k] - accs[0][k]:+.1f})" for a in accs[1:]]
            for k in range(len(classes))]
    return [H(2, "Per-class test accuracy (%)"), Table(header, rows)]


def disagreements(a: RunOutputs, b: RunOutputs, k: int = GALLERY) -> np.ndarray:
    """Test-image indices that ``a`` gets right and ``b`` wrong, ``b``'s most confident
    wrong answers first (ties: lower index first); at most ``k``."""
    idx = np.flatnonzero(a.correct & ~b.correct)
    conf = b.probs[idx, b.pred[idx]]
    return idx[np.lexsort((idx, -conf))][:k]


def _gallery_blocks(runs: list[Compared], out_dir: Path, data_root: Path | None) -> list[Block]:
    a, b = runs[0], runs[1]
    out: list[Block] = [H(2, f"Where {a.name} and {b.name} part")]
    images = _test_images(a, data_root)
    if images is None:
        out.append(P("The test images could not be loaded (data not found); pass "
                     "`--data-dir` to see them."))
        return out
    classes = a.summary.get("classes") or [str(k) for k in range(a.outputs.probs.shape[1])]
    for right, wrong in ((a, b), (b, a)):
        idx = disagreements(right.outputs, wrong.outputs)
        n = int((right.outputs.correct & ~wrong.outputs.correct).sum())
        path = out_dir / f"right_{_slug(right.name)}_wrong_{_slug(wrong.name)}.png"
        titles = [f"{classes[wrong.outputs.labels[i]]} → {classes[wrong.outputs.pred[i]]} "
                  f"({100 * wrong.outputs.probs[i, wrong.outputs.pred[i]]:.0f}%)" for i in idx]
        _gallery(images[idx], titles, path, f"{right.name} right, {wrong.name} wrong: true → "
                 f"{wrong.name}'s answer (confidence)")
        out.append(P(f"**{n:,}** test images {right.name} gets right and {wrong.name} gets "
                     f"wrong; the {len(idx)} where {wrong.name} was most confident:"))
        out.append(Img(f"{right.name} right, {wrong.name} wrong", path))
    return out


def _gallery(images: np.ndarray, titles: list[str], path: Path, title: str) -> None:
    from classlab.diagnose.figures import plot_mistakes

    plot_mistakes(images, titles, path, title=title, empty="no such test images")


def _test_images(r: Compared, data_root: Path | None) -> np.ndarray | None:
    """uint8 [N,H,W,3] test images of the run's dataset, or None when they cannot be loaded
    (or are not the images the outputs were scored on)."""
    from classlab.data import DataError, load_splits

    try:
        splits = load_splits(config.from_dict(r.raw).data, data_root)
    except (DataError, config.ConfigError):
        return None
    if len(splits.test_y) != len(r.outputs.labels) or \
            not np.array_equal(splits.test_y.numpy(), r.outputs.labels):
        return None
    return splits.test_x.permute(0, 2, 3, 1).contiguous().numpy()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)[:60]


# --------------------------------------------------------------------------- the report


def default_out(run_dirs: list[Path]) -> Path:
    names = "-vs-".join(_slug(Path(d).name) for d in run_dirs)
    return Path(run_dirs[0]).parent / f"compare-{names}"[:150]


def compare_runs(run_dirs: list[Path], *, out: Path | None = None, evaluate: bool = False,
                 data_root: Path | None = None) -> tuple[Path, Path]:
    """Write ``out/compare.md`` and ``out/compare.html``; returns both. Every check (run
    folders, stored outputs, same test set) happens before anything is written."""
    if len(run_dirs) < 2:
        raise CompareError(f"compare needs two or more runs; got {len(run_dirs)}: "
                           f"{', '.join(map(str, run_dirs)) or 'none'}")
    _check_distinct(run_dirs)
    runs = [_open(Path(d), evaluate, data_root) for d in run_dirs]
    _check_comparable(runs)
    out = Path(out) if out is not None else default_out([r.files.root for r in runs])
    # every file of the report appears, or (disk full, Ctrl-C) the previous ones stay
    with all_or_nothing():
        try:
            make_folder(out)
        except OSError as e:
            raise RunDirError(f"cannot create {out}: {e.strerror or e}; pass --out with a "
                              "writable folder") from None
        blocks = _blocks(runs, out, data_root)
        md, html = out / "compare.md", out / "compare.html"
        title = f"Compare: {' vs '.join(r.name for r in runs)}"
        atomic_write_text(md, to_markdown(blocks, out))
        atomic_write_text(html, to_html(blocks, out, title))
    return md, html


def _check_distinct(run_dirs: list[Path]) -> None:
    """The same run folder twice (by another path, too) compares nothing."""
    seen: dict[Path, Path] = {}
    for d in map(Path, run_dirs):
        key = d.resolve()
        if key in seen:
            same = f"{d}" if str(d) == str(seen[key]) else f"{seen[key]} and {d}"
            raise CompareError(f"{same}: the same run given twice; compare needs different "
                               "runs")
        seen[key] = d


def _blocks(runs: list[Compared], out: Path, data_root: Path | None) -> list[Block]:
    metrics, lines = _metrics_blocks(runs)
    blocks: list[Block] = [H(1, f"Compare: {' vs '.join(r.name for r in runs)}"),
                           P(f"{len(runs)} runs on the same {len(runs[0].outputs.labels):,} "
                             "test images; the paired tests compare each run with the first, "
                             "image by image (they cover the finite test set, not the spread "
                             "between seeds).")]
    if lines:
        blocks.append(Md("\n".join(lines)))
    blocks += _config_blocks(runs) + metrics
    if _curves(runs, out / "curves.png"):
        blocks += [H(2, "Curves"), Img("Training loss, validation and test accuracy per epoch",
                                       out / "curves.png")]
    blocks += _per_class_blocks(runs) + _gallery_blocks(runs, out, data_root)
    if plot_compare([(r.name, r.files.root) for r in runs], out / "dynamics.png"):
        blocks += [H(2, "Weight updates"),
                   Img("Median update/weight ratio and the LR of every run", out / "dynamics.png")]
    return blocks

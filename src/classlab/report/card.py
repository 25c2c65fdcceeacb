"""model_card.md: the run as a model someone else may use, written with the report.

YAML front matter in the Hugging Face model-card format (``model-index`` with the dataset and
the test metrics, read from summary.json), then plain sections: what it was trained on and
how, its test accuracy (with the 95% interval over seeds when the run is a seeded grid
point), calibration, the classes it confuses most, what the diagnosis found, limitations and
intended use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from classlab import stats
from classlab.fmt import pct
from classlab.rundir import GridFiles, RunFiles, atomic_write_text, read_json_object

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagefolder": "image folder",
                 "synthetic": "synthetic shapes"}


def front_matter(summary: dict, cfg: dict) -> dict[str, Any]:
    """The Hugging Face model-index of the run (test accuracy in %, as summary.json)."""
    data = (cfg.get("data") or {}).get("name", "unknown")
    final = summary.get("final") or {}
    metrics = [{"type": "accuracy", "name": "Test accuracy (%)",
                "value": round(float(final["test_acc"]), 4)}] \
        if isinstance(final.get("test_acc"), (int, float)) else []
    return {"library_name": "classlab", "tags": ["image-classification", "classlab"],
            "datasets": [data], "metrics": ["accuracy"],
            "model-index": [{"name": str(summary.get("name") or cfg.get("name") or "run"),
                             "results": [{"task": {"type": "image-classification",
                                                   "name": "Image Classification"},
                                          "dataset": {"name": DATASET_NAMES.get(data, data),
                                                      "type": data, "split": "test"},
                                          "metrics": metrics}]}]}


def seed_interval(run_dir: Path) -> str | None:
    """"90.21 ± 0.12% (95% interval [89.92, 90.50] over 3 seeds)" when ``run_dir`` is one
    seed of a grid point whose other seeds finished too."""
    gdir = Path(run_dir).resolve().parent
    grid_yaml = GridFiles(gdir).grid
    if not grid_yaml.is_file():
        return None
    try:
        grid = yaml.safe_load(grid_yaml.read_text())
        entries = {e["name"]: e for e in grid.get("points") or []}
        group = entries[Path(run_dir).resolve().name].get("group")
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None
    finals = [(read_json_object(RunFiles(gdir / n).summary) or {}).get("final") or {}
              for n, e in entries.items() if group and e.get("group") == group]
    accs = [f.get("test_acc") for f in finals]
    accs = [float(a) for a in accs if isinstance(a, (int, float))]
    if len(accs) < 2:
        return None
    s = stats.mean_ci(accs)
    return (f"{pct(s['mean'], sign=False)} ± {pct(s['sd'])} (95% interval "
            f"[{pct(s['lo'], sign=False)}, {pct(s['hi'], sign=False)}] over {len(accs)} seeds)")


def _sections(run_dir: Path, summary: dict, cfg: dict, diag: dict) -> list[str]:
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    train, optim, sched = cfg.get("train") or {}, cfg.get("optim") or {}, cfg.get("sched") or {}
    final = summary.get("final") or {}
    cal = diag.get("calibration") or {}
    pairs = diag.get("confused_pairs") or []
    size = data.get("image_size", 32) if data.get("name") == "imagefolder" else 32
    interval = seed_interval(run_dir)
    out = [f"# Model card: {summary.get('name') or cfg.get('name')}", "",
           "## Model", f"{model.get('name')} with {model.get('norm')} normalisation, width "
           f"{model.get('width')}, {summary.get('params', '?'):,} parameters"
           if isinstance(summary.get("params"), int) else f"{model.get('name')}", "",
           "## Training",
           f"{DATASET_NAMES.get(data.get('name'), data.get('name'))}: "
           f"{summary.get('train_images', '?')} training images ({summary.get('val_images', 0)}"
           f" held out for validation), {summary.get('epochs_done', '?')} epochs of "
           f"{optim.get('name')} (lr {optim.get('lr')}) with a {sched.get('name')} schedule, "
           f"batch {train.get('batch_size')}, seed {train.get('seed')}; the full config is "
           "the run folder's config.yaml.", "",
           "## Evaluation",
           f"Test accuracy {pct(final.get('test_acc'))} on {summary.get('test_images', '?')} "
           "test images" + (f"; over the grid point's seeds {interval}" if interval else "")
           + ".", ""]
    if cal:
        t = cal.get("temperature")
        out += ["## Calibration",
                f"Expected calibration error {pct(100 * cal['ece'])} (15 bins)"
                + (f"; {pct(100 * cal['ece_scaled'])} after temperature scaling with T = "
                   f"{t:.3f} fitted on the validation split" if t else "") + ".", ""]
    if pairs:
        out += ["## Classes it confuses most",
                ", ".join(f"{p['true']} → {p['pred']} ({p['count']})" for p in pairs[:5])
                + " (true → predicted, test images).", ""]
    out += ["## What the diagnosis found",
            "See report.md: the most confident mistakes with their class-activation maps, "
            "whether those maps can be trusted, and the suspected label errors."
            if diag else "No diagnosis yet: run `classlab diagnose` on the run folder.", "",
            "## Limitations",
            f"Input: {size}x{size} RGB pictures of one of {len(summary.get('classes') or [])} "
            f"classes ({', '.join(map(str, summary.get('classes') or []))}); anything else is "
            "still given one of these classes. Larger pictures are scaled down and lose "
            "detail. Accuracy holds for pictures like the test set's, not for other sources.",
            "", "## Intended use",
            "Teaching and experiments on small image classifiers; not for decisions about "
            "people or safety.", ""]
    return out


def write_model_card(run_dir: Path) -> Path:
    """``run_dir/model_card.md`` (atomically) from summary.json, config.yaml and the
    diagnosis; returns its path."""
    files = RunFiles(run_dir)
    summary = read_json_object(files.summary) or {}
    try:
        cfg = yaml.safe_load(files.config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    diag = read_json_object(files.diagnose_json) or {}
    head = yaml.safe_dump(front_matter(summary, cfg), sort_keys=False, allow_unicode=True)
    text = f"---\n{head}---\n\n" + "\n".join(_sections(Path(run_dir), summary, cfg, diag))
    atomic_write_text(files.model_card, text)
    return files.model_card

"""Comparisons you can trust: seeds as a grid axis, per-point mean ± sd and t intervals,
paired McNemar tests against the best point (Holm-adjusted), and ``classlab compare``."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from classlab.cli import main

BASE = {"data": {"name": "synthetic", "synthetic_size": 600, "val_split": 0.2},
        "model": {"width": 4},
        "train": {"batch_size": 64, "progress": False, "device": "cpu", "threads": 1,
                  "precision": "fp32", "channels_last": False},
        "log": {"dynamics_every": 0}, "diagnose": {"enabled": False}}


def _grid(tmp: Path, name: str, axes: dict, **extra) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": BASE, "axes": axes, **extra}))
    return path


@pytest.fixture(scope="module")
def better_grid(tmp_path_factory) -> Path:
    """2 points x 2 seeds: 1 epoch vs 6 epochs (clearly better)."""
    tmp = tmp_path_factory.mktemp("better")
    assert main(["grid", str(_grid(tmp, "better", {"train.epochs": [1, 6]}, seeds=[0, 1])),
                 "--out", str(tmp / "runs")]) == 0
    return tmp / "runs" / "better"


def _md(gdir: Path) -> list[str]:
    return (gdir / "results.md").read_text().splitlines()


def test_each_point_and_seed_is_its_own_run_folder(better_grid):
    for name in ("epochs1-seed0", "epochs1-seed1", "epochs6-seed0", "epochs6-seed1"):
        assert (better_grid / name / "summary.json").is_file(), name
        assert (better_grid / name / "test_outputs.pt").is_file(), name
    cfg = yaml.safe_load((better_grid / "epochs6-seed1" / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 1 and cfg["train"]["epochs"] == 6
    rows = list(csv.DictReader((better_grid / "results.csv").open()))
    assert [(r["Point"], r["Seed"]) for r in rows] == [
        ("epochs1", "0"), ("epochs1", "1"), ("epochs6", "0"), ("epochs6", "1")]


def test_the_clearly_better_point_is_best_and_the_other_significantly_worse(better_grid):
    md = _md(better_grid)
    assert md[2].startswith("Best point by mean validation accuracy: **epochs6**")
    finding = next(line for line in md if line.startswith("- train.epochs=1 vs train.epochs=6"))
    assert "2 seeds, p < 0.001" in finding and "not distinguishable" not in finding
    header = next(line for line in md if line.startswith("| Model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    row1 = next(line for line in md if line.startswith("| ResNet18") and "| 1 |" in line)
    cells = [c.strip() for c in row1.strip("|").split("|")]
    vs = cells[cols.index("vs best")]
    assert vs.startswith("-") and "p < 0.001" in vs and "≈" not in vs
    assert cells[cols.index("Seeds")] == "2"
    # mean ± sd over the seeds, and the 95% t interval around the mean
    test = cells[cols.index("Test acc")]
    assert "±" in test and cells[cols.index("95% CI test")].startswith("[")
    assert "±" in cells[cols.index("ECE")]


def test_the_ece_column_is_the_calibration_error_of_the_stored_outputs(better_grid):
    import numpy as np
    import torch

    from classlab.compare.paired import load_outputs
    from classlab.diagnose.calibration import ece

    md = _md(better_grid)
    cols = [c.strip() for c in next(x for x in md if x.startswith("| Model")).strip("|")
            .split("|")]
    row = next(x for x in md if x.startswith("| ResNet18") and "| 6 |" in x)
    cell = [c.strip() for c in row.strip("|").split("|")][cols.index("ECE")]
    values = [100 * ece(torch.from_numpy(o.probs), torch.from_numpy(o.labels))
              for o in (load_outputs(better_grid / f"epochs6-seed{k}") for k in (0, 1))]
    assert cell == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}%"


def test_identical_configs_are_not_distinguishable(tmp_path):
    # diagnose.count changes nothing in training: each seed pair is the same run twice
    gpath = _grid(tmp_path, "same", {"diagnose.count": [4, 5]}, seeds=[0, 1])
    assert main(["grid", str(gpath), "train.epochs=2", "--out", str(tmp_path / "r")]) == 0
    md = _md(tmp_path / "r" / "same")
    finding = next(line for line in md if line.startswith("- diagnose.count="))
    assert "p = 1.0" in finding and "not distinguishable from the best at 5%" in finding
    assert any("≈" in line for line in md if line.startswith("| ResNet18"))


def test_print_commands_lists_every_point_and_seed(tmp_path, capsys):
    gpath = _grid(tmp_path, "cmds", {"optim.lr": [0.01, 0.1]}, repeats=3)
    assert main(["grid", str(gpath), "--print-commands", "--out", str(tmp_path / "r")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("#")]
    assert len(lines) == 6 and all("run-point" in x for x in lines)
    # repeats: N runs the config's seed and the N - 1 after it (train.seed default 1)
    assert [x.rsplit("/", 1)[-1] for x in lines[:3]] == ["lr0.01-seed1", "lr0.01-seed2",
                                                         "lr0.01-seed3"]


@pytest.mark.parametrize("extra, message", [
    ({"seeds": [0, "a"]}, "seeds: expected a list of whole numbers"),
    ({"seeds": [0, 1.5]}, "seeds: expected a list of whole numbers"),
    ({"seeds": []}, "seeds: expected a list of whole numbers"),
    ({"seeds": [2, 2]}, "lists a seed twice"),
    ({"repeats": 0}, "repeats: expected a whole number ≥ 1"),
    ({"seeds": [0], "repeats": 2}, "give one of them, not both"),
])
def test_bad_seeds_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    gpath = _grid(tmp_path, "bad", {"optim.lr": [0.01]}, **extra)
    assert main(["grid", str(gpath), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_seeds_cannot_be_an_axis_too(tmp_path, capsys):
    gpath = _grid(tmp_path, "twice", {"train.seed": [0, 1]}, seeds=[0, 1])
    assert main(["grid", str(gpath), "--out", str(tmp_path / "r")]) == 2
    assert "train.seed is set by seeds/repeats" in capsys.readouterr().err


# --------------------------------------------------------------------------- classlab compare


def test_compare_writes_one_report_of_what_differs(better_grid, tmp_path, capsys):
    a, b = better_grid / "epochs1-seed0", better_grid / "epochs6-seed0"
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    # only the differing keys (epochs; name and seed are equal or left out)
    table = md.split("## What differs in the configs", 1)[1].split("##", 1)[0]
    assert "`train.epochs`" in table and "`train.seed`" not in table and "`name`" not in table
    assert "McNemar" in md and "p < 0.001" in md
    for name in ("compare.html", "curves.png", "right_epochs6-seed0_wrong_epochs1-seed0.png",
                 "right_epochs1-seed0_wrong_epochs6-seed0.png"):
        assert (out / name).is_file(), name
    html = (out / "compare.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html


def test_disagreements_are_the_wrong_runs_most_confident_answers_first():
    import numpy as np

    from classlab.compare.paired import RunOutputs
    from classlab.compare.report import disagreements

    labels = np.array([0, 0, 1, 1, 0])
    right = RunOutputs(Path("a"), labels, np.eye(2, dtype=np.float32)[labels])
    wrong_probs = np.array([[0.4, 0.6], [0.1, 0.9], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55]],
                           dtype=np.float32)
    wrong = RunOutputs(Path("b"), labels, wrong_probs)
    # b is wrong on images 0, 1, 2, 4 with confidences 0.6, 0.9, 0.7, 0.55
    assert disagreements(right, wrong).tolist() == [1, 2, 0, 4]
    assert disagreements(right, wrong, k=2).tolist() == [1, 2]


def test_compare_of_one_run_is_refused(better_grid, tmp_path, capsys):
    assert main(["compare", str(better_grid / "epochs1-seed0"), "--out",
                 str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "compare needs two or more runs; got 1" in err
    assert not (tmp_path / "c").exists()


def test_compare_of_different_datasets_is_refused(better_grid, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(better_grid / "epochs1-seed0", other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["data"]["name"] = "cifar10"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["compare", str(better_grid / "epochs1-seed0"), str(other), "--out",
                 str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "different datasets" in err
    assert not (tmp_path / "c").exists()


def test_compare_without_test_outputs_names_the_run_or_evaluates(better_grid, tmp_path,
                                                                 capsys):
    bare = tmp_path / "bare"
    shutil.copytree(better_grid / "epochs6-seed1", bare)
    (bare / "test_outputs.pt").unlink()
    a = better_grid / "epochs6-seed0"
    assert main(["compare", str(a), str(bare), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{bare}: no test outputs" in err
    assert "--evaluate" in err and not (tmp_path / "c").exists()
    assert main(["compare", str(a), str(bare), "--evaluate", "--out", str(tmp_path / "c")]) == 0
    # scoring now gives the accuracy training reported for that checkpoint
    md = (tmp_path / "c" / "compare.md").read_text()
    expected = yaml.safe_load((better_grid / "epochs6-seed1" / "summary.json").read_text())
    assert f"{expected['final']['test_acc']:.2f}%" in md

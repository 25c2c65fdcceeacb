"""The promises a comparison rests on, checked end to end (issue 29).

1. The test set never drives a decision: the grid's best point is the best by validation
   accuracy, and ReduceLROnPlateau sees the validation metric (in the direction it has), even
   where the test set would say otherwise.
2. "vs best" p-values in ``classlab table`` are Holm-adjusted: recomputed here from the
   stored test outputs with an exact binomial and a Holm step-down of our own.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest
import torch
import yaml

from classlab import config, grid, stats
from classlab.cli import main
from classlab.engine import EvalResult
from classlab.grid.table import compare_groups
from classlab.run import fit as fit_module
from classlab.run.flow import train_run
from classlab.rundir.checkpoint import save_test_outputs
from classlab.rundir.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- a fake grid

N_TEST = 400  # test images; the best point gets the first half right
# point -> (train acc, val acc, (b, c)): b = test images it gets right and the best point
# wrong, c = the other way round. Validation, training and test accuracy each rank the
# points differently, so only the validation ranking picks lr0.2.
POINTS = {
    "lr0.1": (90.0, 70.0, (20, 8)),
    "lr0.2": (80.0, 85.0, None),  # best by validation, worst on the test set
    "lr0.3": (85.0, 60.0, (21, 9)),
    "lr0.4": (99.0, 65.0, (14, 10)),  # best by training accuracy
}
BEST = "lr0.2"
TINY = {"data": {"name": "synthetic", "synthetic_size": 40}, "model": {"width": 4},
        "train": {"epochs": 1, "batch_size": 32, "progress": False, "device": "cpu",
                  "threads": 1, "precision": "fp32", "channels_last": False},
        "diagnose": {"enabled": False}, "log": {"dynamics_every": 0}}


def _correct(name: str) -> torch.Tensor:
    """Which test images the point gets right (bool [N_TEST])."""
    best = torch.arange(N_TEST) < N_TEST // 2
    if POINTS[name][2] is None:
        return best
    b, c = POINTS[name][2]
    mine = best.clone()
    mine[:c] = False  # c images the best gets right, this one wrong
    mine[N_TEST // 2: N_TEST // 2 + b] = True  # b images the other way round
    return mine


def _write_outputs(point_dir: Path, correct: torch.Tensor) -> float:
    labels = torch.arange(N_TEST) % 10
    pred = torch.where(correct, labels, (labels + 1) % 10)
    probs = torch.full((N_TEST, 10), 0.1 / 9)
    probs[torch.arange(N_TEST), pred] = 0.9
    losses = -torch.log(probs[torch.arange(N_TEST), labels])
    save_test_outputs(point_dir / "test_outputs.pt", 1, probs, losses, labels)
    return 100.0 * correct.double().mean().item()


@pytest.fixture
def fake_grid(tmp_path) -> Path:
    """A prepared grid folder (grid.yaml, config.yaml per point) whose points "finished" with
    the accuracies of POINTS and stored test outputs that match their test accuracy."""
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": TINY, "axes": {"optim.lr": [0.1, 0.2, 0.3, 0.4]}}))
    gdir = tmp_path / "gd"
    assert grid.main_grid(path, [], grid_dir=gdir, print_commands=True) == 0
    for name, (train_acc, val_acc, _) in POINTS.items():
        test_acc = _write_outputs(gdir / name, _correct(name))
        (gdir / name / "summary.json").write_text(json.dumps({
            "status": "finished", "epochs": 1, "epochs_done": 1, "params": 1000,
            "final": {"train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc},
            "best_by_val": {"epoch": 1, "test_acc": test_acc}}))
    return gdir


def _table_rows(md: str) -> dict[str, list[str]]:
    """results.md's table as {point folder: cells}, by the header's column names."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in ln.strip("|").split("|"))))
        rows[re.match(r"\[([^\]]+)\]", cells["Run folder"]).group(1)] = cells
    return rows


def test_the_best_point_is_chosen_by_validation_not_by_test_or_training(fake_grid, capsys):
    test_acc = {name: 100.0 * _correct(name).double().mean().item() for name in POINTS}
    # the premise: the three rankings disagree
    assert max(test_acc, key=test_acc.get) != BEST
    assert max(POINTS, key=lambda n: POINTS[n][0]) != BEST
    assert main(["table", str(fake_grid)]) == 0
    md = (fake_grid / "results.md").read_text()
    assert (f"Best point by mean validation accuracy: **{BEST}** (test accuracy "
            f"{test_acc[BEST]:.2f}%, 1 seed).") in md.splitlines()
    rows = _table_rows(md)
    assert [n for n, cells in rows.items() if cells["vs best"] == "best"] == [BEST]
    # every other point is compared with that one: its test accuracy difference
    for name in POINTS:
        if name != BEST:
            assert rows[name]["vs best"].startswith(f"{test_acc[name] - test_acc[BEST]:+.2f} (")


def _binomial_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n, k = b + c, min(b, c)
    tail = Fraction(sum(comb(n, i) for i in range(k + 1)), 2 ** n)
    return float(min(Fraction(1), 2 * tail))


def _holm(ps: list[float]) -> list[float]:
    """Holm's step-down: sort ascending, multiply the i-th (0-based) by m - i, cap at 1, and
    carry the running maximum so the adjusted values keep the raw values' order."""
    m = len(ps)
    out, running = [0.0] * m, 0.0
    for i, idx in enumerate(sorted(range(m), key=lambda j: ps[j])):
        running = max(running, min(1.0, (m - i) * ps[idx]))
        out[idx] = running
    return out


def test_vs_best_p_values_are_holm_adjusted_over_the_points_compared(fake_grid):
    others = [n for n in POINTS if n != BEST]
    raw = [_binomial_p(*POINTS[n][2]) for n in others]
    adjusted = _holm(raw)
    # the premise: Holm changes what the table shows, and its monotonicity step matters
    # (3 x the smallest raw p exceeds 2 x the next one)
    assert [stats.format_p(p) for p in raw] != [stats.format_p(p) for p in adjusted]
    assert adjusted[0] == adjusted[1] == pytest.approx(3 * raw[0]) and raw[0] < 0.05
    rows = _table_rows(Path(grid.write_table(fake_grid)).read_text())
    for name, p in zip(others, adjusted):
        cell = rows[name]["vs best"]
        assert f"({stats.format_p(p)})" in cell, (name, cell)
        assert cell.endswith(" ≈") == (p >= 0.05), (name, cell)
    # and the numbers themselves, not only their rounding
    groups = [{"group": n, "n": 1, "val_acc": {"mean": POINTS[n][1]},
               "runs": [{"folder": n, "seed": None, "status": "finished"}]} for n in POINTS]
    tests = compare_groups(fake_grid, groups)["tests"]
    assert sorted(tests) == sorted(others)
    for name, p, adj in zip(others, raw, adjusted):
        assert (tests[name].b, tests[name].c) == POINTS[name][2]
        assert tests[name].p == pytest.approx(p, rel=1e-12)
        assert tests[name].p_holm == pytest.approx(adj, rel=1e-12)


# --------------------------------------------------------------------------- plateau in fit


def _plateau_run(tmp_path: Path, monkeypatch, monitor: str, val: list[float],
                 test: list[float]) -> tuple[list[dict], dict]:
    """A 5-epoch run with sched.name=plateau (patience 0, factor 0.5) whose val and test
    results are scripted per epoch (``val`` / ``test``: the monitored kind of number, loss or
    accuracy; the other one stays constant); returns metrics.csv's rows and the summary."""
    cfg = config.from_dict({**TINY, "name": "plateau",
                            "train": {**TINY["train"], "epochs": len(val)},
                            "optim": {"name": "sgd", "lr": 0.1},
                            "sched": {"name": "plateau", "patience": 0, "factor": 0.5,
                                      "monitor": monitor}})
    is_acc = monitor.endswith("acc")

    def scripted(s, epoch: int) -> dict[str, EvalResult]:
        def result(x: float) -> EvalResult:
            return EvalResult(1.0, x, 10) if is_acc else EvalResult(x, 50.0, 10)
        return {"val": result(val[epoch - 1]), "test": result(test[epoch - 1])}

    monkeypatch.setattr(fit_module, "_evaluate_epoch", scripted)
    result = train_run(cfg, out=tmp_path)
    rows = read_metrics(result.run_dir / "metrics.csv")
    assert [r[f"val_{'acc' if is_acc else 'loss'}"] for r in rows] == val  # the script ran
    return rows, result.summary


def test_plateau_in_a_run_follows_the_validation_loss_not_the_test_loss(tmp_path, monkeypatch):
    # validation: better, worse (drop after epoch 3), better, better; the test loss moves
    # the other way every epoch (it would drop the LR after epochs 2 and 4)
    rows, _ = _plateau_run(tmp_path, monkeypatch, "val_loss",
                           val=[1.0, 0.9, 0.95, 0.8, 0.7], test=[1.0, 1.1, 0.7, 1.2, 0.6])
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])


def test_plateau_on_val_acc_waits_for_accuracy_to_stop_rising(tmp_path, monkeypatch):
    # accuracy is maximised: only the fall at epoch 3 drops the LR (a "min" mode would
    # drop it after every rise); the test accuracy falls where validation rises
    rows, summary = _plateau_run(tmp_path, monkeypatch, "val_acc",
                                 val=[50.0, 60.0, 55.0, 70.0, 80.0],
                                 test=[50.0, 40.0, 70.0, 60.0, 30.0])
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])
    # the best epoch is the best by validation, with its test accuracy as it was
    assert (summary["best_by_val"]["epoch"], summary["best_by_val"]["test_acc"]) == (5, 30.0)

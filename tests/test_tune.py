"""Tuned grids (issue 23): the tune: section, the embedded Optuna engine (sampler, pruner,
study in the grid folder, resumable trials), the final runs and the tuning report.

Tiny synthetic data and width-4 ResNet18s; the known-answer test takes about 20 s on an idle
2-core CPU (a minute when the cores are shared)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from classlab import grid
from classlab.cli import main
from classlab.config import ConfigError
from classlab.grid.folder import prepare_grid_file
from classlab.grid.tunespec import Param, parse_param
from classlab.grid.tunetable import tuning_markdown
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import is_finished, read_summary

pytest.importorskip("optuna")

# Plain SGD (no momentum) and Adam on 600 synthetic images, OneCycle, 3 epochs. Measured
# landscape (val acc, 200 of 800 images held out, same recipe): SGD peaks near lr 0.1 (64.5%)
# and is at chance below 3e-3; Adam peaks at 3e-3..1e-2 (71-74%) and falls to 44% at 0.1.
# So at a shared lr of 0.1 SGD ranks first, and tuned each on its own, Adam does.
BASE = {"data": {"name": "synthetic", "synthetic_size": 600, "val_split": 0.25},
        "model": {"name": "resnet18", "width": 4, "norm": "bn"},
        "optim": {"lr": 0.1, "momentum": 0.0},
        "sched": {"name": "onecycle", "cycle_momentum": False},
        "aug": {"ops": []},
        "train": {"epochs": 3, "batch_size": 32, "progress": False, "device": "cpu",
                  "threads": 1, "precision": "fp32", "channels_last": False,
                  "checkpoint_minutes": 0},
        "diagnose": {"enabled": False}, "log": {"dynamics_every": 0, "data_dynamics": False}}
SMALL = {**BASE, "data": {"name": "synthetic", "synthetic_size": 300, "val_split": 0.2}}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write(path: Path, **doc) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _tuning(gdir: Path, point: str) -> dict:
    return json.loads((gdir / "tune" / point / "tuning.json").read_text())


# --------------------------------------------------------------------------- the file


@pytest.mark.parametrize("spec, match", [
    ({"log_uniform": [0.1, 0.01]}, r"the range \[0.1, 0.01\] is empty"),
    ({"uniform": [1, 1]}, "is empty"),
    ({"log_uniform": [0, 1]}, "low 0 must be > 0"),
    ({"int": [1.5, 4]}, "whole numbers"),
    ({"choice": [1]}, "at least two"),
    ({"choice": [[1], [2]]}, "expected numbers, strings or true/false"),
    ({"normal": [0, 1]}, "expected one of"),
])
def test_bad_distributions(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_param("optim.lr", spec)


def test_edges_of_a_range():
    p = Param("optim.lr", "log_uniform", 1e-4, 1e-1)
    assert p.edge(1.2e-4) == "low" and p.edge(0.09) == "high" and p.edge(3e-3) is None
    assert Param("k", "int", 1, 8).edge(8) == "high"
    assert Param("k", "choice", choices=["a", "b"]).edge("a") is None
    assert parse_param("optim.lr", {"log_uniform": ["1e-4", "1e-1"]}).low == 1e-4  # YAML 1.1


def test_grid_with_tune_loads_and_records_its_budget(tmp_path):
    path = _write(tmp_path / "g.yaml", base=SMALL, axes={"optim.name": ["sgd", "adam"]},
                  tune={"space": {"optim.lr": {"log_uniform": [1e-4, 1]},
                                  "optim.weight_decay": {"uniform": [0, 1e-3]}},
                        "trials": 3, "trial": {"train.epochs": 2}, "metric": "val_loss"})
    g = grid.load_grid(path)
    assert g.tune.trials == 3 and g.tune.direction == "minimize"
    assert g.definition()["tune"]["trial"] == {"train.epochs": 2}
    with pytest.raises(ConfigError, match="optim.lr is tuned by this grid"):
        grid.load_grid(path, ["optim.lr=0.5"])
    with pytest.raises(ConfigError, match="tune.trial optim.name: optim.name is an axis"):
        grid.load_grid(_write(tmp_path / "h.yaml", base=SMALL, axes={"optim.name": ["sgd"]},
                              tune={"space": {"optim.lr": {"uniform": [0.1, 1]}},
                                    "trials": 2, "trial": {"optim.name": "adam"}}))


# --------------------------------------------------------------------------- known answer


def test_tuning_finds_each_points_lr_and_reverses_the_untuned_ranking(tmp_path, capsys):
    """SGD (no momentum) vs Adam at a shared lr of 0.1: the untuned grid puts SGD first.
    Tuned on 5 trials each over lr in [1e-4, 1], each finds its own range (Adam's lr an order
    of magnitude below SGD's) and Adam ranks first; results.md says the ranking changed."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    axes = {"optim.name": ["sgd", "adam"]}
    _write(tmp_path / "untuned.yaml", name="untuned", base="base.yaml", axes=axes)
    tuned = _write(tmp_path / "tuned.yaml", name="tuned", base="base.yaml", axes=axes,
                   tune={"space": {"optim.lr": {"log_uniform": [1e-4, 1]}}, "trials": 5,
                         "sampler": "qmc", "pruner": "none", "untuned": "untuned"})
    out = tmp_path / "runs"
    assert main(["grid", str(tmp_path / "untuned.yaml"), "--out", str(out)]) == 0
    val = {p: read_summary(out / "untuned" / p / "summary.json")["final"]["val_acc"]
           for p in ("sgd", "adam")}
    assert val["sgd"] > val["adam"] + 5, val  # at the shared lr, SGD first
    assert main(["grid", str(tuned), "--out", str(out)]) == 0
    gdir = out / "tuned"
    lr = {p: _tuning(gdir, p)["best"]["params"]["optim.lr"] for p in ("sgd", "adam")}
    assert 1e-3 <= lr["adam"] <= 3e-2 and 3e-2 <= lr["sgd"] <= 0.5, lr
    assert lr["sgd"] / lr["adam"] >= 5, lr
    final = {p: read_summary(gdir / p / "summary.json") for p in ("sgd", "adam")}
    assert final["adam"]["final"]["val_acc"] > final["sgd"]["final"]["val_acc"] + 5
    # the final runs carry the tuned values; the same recipe and seed as the best trial
    assert yaml.safe_load((gdir / "adam" / "config.yaml").read_text())["optim"]["lr"] == \
        lr["adam"]
    for p in ("sgd", "adam"):
        rec = _tuning(gdir, p)
        assert (rec["finished"], rec["pruned"], rec["trial_epochs"]) == (5, 0, 15)
        assert rec["baseline"]["params"] == {"optim.lr": 0.1}  # trial 0: the untuned value
    md = (gdir / "results.md").read_text()
    assert "## Tuning" in md and "5/5 (5 complete, 0 pruned, 0 failed)" in md
    assert "against the untuned grid untuned: untuned **sgd** > **adam**; tuned **adam** > " \
           "**sgd**: tuning changed the ranking" in md
    assert "| optim.lr |" in md.splitlines()[5]  # the tuned value is a column of the table
    assert (gdir / "tuning.png").is_file()
    capsys.readouterr()
    # a rerun continues the finished study: no new trial, the finals are skipped
    assert main(["grid", str(tuned), "--out", str(out)]) == 0
    assert "2 skipped (finished)" in capsys.readouterr().out
    assert len(list((gdir / "tune" / "adam").glob("trial-*"))) == 5


# --------------------------------------------------------------------------- pruning


def test_a_diverging_trial_is_pruned_at_the_first_rung(tmp_path):
    """Trial 0 (Adam at 3e-3) trains; trial 1 (Adam at lr 3: diverged, val loss far above
    trial 0's) is stopped by successive halving after its first epoch: a finished run
    folder that says so, one trial-epoch spent, recorded as pruned."""
    from classlab.grid.tune import open_tunings, tune_grid

    base = {**SMALL, "optim": {"name": "adam", "lr": 3e-3}}
    path = _write(tmp_path / "p.yaml", name="p", base=base, axes={"model.norm": ["bn"]},
                  tune={"space": {"optim.lr": {"log_uniform": [1e-4, 10]}}, "trials": 2,
                        "metric": "val_loss", "pruner": "asha"})
    g, gdir = grid.load_grid(path), tmp_path / "p"
    prepare_grid_file(g, gdir)
    [t] = open_tunings(g, gdir)
    t.study.enqueue_trial({"optim.lr": 3e-3})
    t.study.enqueue_trial({"optim.lr": 3.0})
    final = tune_grid(g, gdir)
    rec = _tuning(gdir, "bn")
    states = [x["state"] for x in rec["trials"]]
    assert states == ["COMPLETE", "PRUNED"], rec["trials"]
    pruned = rec["trials"][1]
    assert list(pruned["curve"]) == ["1"] and pruned["epochs"] == 1
    summary = read_summary(gdir / "tune" / "bn" / "trial-001" / "summary.json")
    assert is_finished(summary) and summary["epochs_done"] == 1
    assert summary["stopped_early"]["by"] == "pruner" and summary["stopped_early"]["epoch"] == 1
    assert rec["trial_epochs"] == 3 + 1 and rec["pruned"] == 1
    assert final.points[0].cfg.optim.lr == 3e-3  # the best complete trial
    md = tuning_markdown(gdir, yaml.safe_load((gdir / "grid.yaml").read_text()), None, None)
    assert "2/2 (1 complete, 1 pruned, 0 failed)" in md and "| 4 |" in md


# --------------------------------------------------------------------------- restarts


def test_a_rerun_after_killing_the_driver_finishes_the_study(tmp_path):
    """The driver is killed (SIGKILL) while a trial trains; the same command again leaves
    the finished trials alone, resumes the interrupted one (the same trial: no extra trial
    in the study) and runs the rest, then the final run."""
    path = _write(tmp_path / "k.yaml", name="k", base=SMALL, axes={"optim.name": ["adam"]},
                  tune={"space": {"optim.lr": {"log_uniform": [1e-3, 3e-2]}}, "trials": 4,
                        "pruner": "none"})
    out, gdir = tmp_path / "runs", tmp_path / "runs" / "k"
    cmd = [sys.executable, "-m", "classlab", "grid", str(path), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    record = gdir / "tune" / "adam" / "tuning.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if record.is_file() and json.loads(record.read_text())["finished"] >= 2:
                break
            time.sleep(0.05)
        time.sleep(1.0)  # into trial 2 (or later)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {d.name: (d / "metrics.csv").read_bytes() for d in (gdir / "tune" / "adam").glob(
        "trial-*") if is_finished(read_summary(d / "summary.json"))}
    assert 2 <= len(before) < 4, sorted(before)
    cut = [d for d in (gdir / "tune" / "adam").glob("trial-*")  # killed after an epoch
           if d.name not in before and (d / "last.pt").is_file()]
    assert grid.main_grid(path, [], out=out) == 0
    rec = _tuning(gdir, "adam")
    assert [x["number"] for x in rec["trials"]] == [0, 1, 2, 3]
    assert all(x["state"] == "COMPLETE" for x in rec["trials"])
    for name, data in before.items():  # finished trials were not run again
        assert (gdir / "tune" / "adam" / name / "metrics.csv").read_bytes() == data, name
    for d in (gdir / "tune" / "adam").glob("trial-*"):
        assert [r["epoch"] for r in read_metrics(d / "metrics.csv")] == [1, 2, 3], d
    for d in cut:  # the same trial, continued from its checkpoint
        assert "Resuming" in (d / "train.log").read_text(), d
    assert is_finished(read_summary(gdir / "adam" / "summary.json"))


def test_jobs_2_runs_trials_in_child_processes(tmp_path, capsys):
    path = _write(tmp_path / "j.yaml", name="j", base={**SMALL, "data": {
        "name": "synthetic", "synthetic_size": 200, "val_split": 0.2}},
        axes={"optim.name": ["sgd", "adam"]},
        tune={"space": {"optim.lr": {"log_uniform": [1e-3, 1e-1]}}, "trials": 2,
              "trial": {"train.epochs": 1}, "pruner": "median"})
    assert grid.main_grid(path, [], out=tmp_path / "runs", jobs=2) == 0
    gdir = tmp_path / "runs" / "j"
    for p in ("sgd", "adam"):
        rec = _tuning(gdir, p)
        assert rec["finished"] == 2 and rec["trial_epochs"] == 2
        assert "==== " in (gdir / "tune" / p / "trial-001" / "train.log").read_text()
        assert is_finished(read_summary(gdir / p / "summary.json"))
        assert read_summary(gdir / p / "summary.json")["epochs_done"] == 3  # full recipe

"""Grids: expansion, deterministic point folders, skip/resume/restart, failures, the results
table, --print-commands and --jobs. Tiny synthetic points (a second or two each)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from classlab import config, grid
from classlab.cli import main
from classlab.config import ConfigError
from classlab.run.fit import fit
from classlab.run.resume import resume_run
from classlab.rundir import METRIC_FIELDS
from classlab.rundir.metrics import read_metrics

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = {"data": {"name": "synthetic", "synthetic_size": 200}, "model": {"width": 4},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "precision": "fp32",
                  "channels_last": False},
        "diagnose": {"enabled": False}, "log": {"dynamics_every": 0}}
SPEC_AXES = {"model.name": ["resnet18", "resnet34"], "model.norm": ["bn", "ln"],
             "sched.name": ["onecycle", "step", "plateau"]}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One torch thread here and in child processes: these models are tiny, and on a shared
    2-core machine a second thread mostly waits for a busy core (10x slower under load)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grid_file(tmp_path: Path, axes: dict, base=None, stem: str = "g", **extra) -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump({"base": TINY if base is None else base, "axes": axes,
                                    **extra}, sort_keys=False))
    return path


def _summary(point_dir: Path) -> dict:
    return json.loads((point_dir / "summary.json").read_text())


# --------------------------------------------------------------------------- expansion


def test_expansion_count_order_names_and_overrides(tmp_path):
    g = grid.load_grid(_grid_file(tmp_path, SPEC_AXES), ["train.epochs=3", "optim.lr=0.01"])
    assert g.name == "g" and len(g.points) == 12
    names = [p.name for p in g.points]
    assert names[:4] == ["resnet18-bn-onecycle", "resnet18-bn-step", "resnet18-bn-plateau",
                         "resnet18-ln-onecycle"]
    assert names[-1] == "resnet34-ln-plateau" and len(set(names)) == 12
    p = g.points[7]  # model slowest, scheduler fastest
    assert (p.cfg.model.name, p.cfg.model.norm, p.cfg.sched.name) == ("resnet34", "bn", "step")
    assert all(q.cfg.train.epochs == 3 and q.cfg.optim.lr == 0.01 for q in g.points)
    assert all(q.cfg.data.name == "synthetic" and q.cfg.name == q.name for q in g.points)


def test_base_file_name_and_numeric_axis_names(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    path = _grid_file(tmp_path, {"optim.lr": [0.01, 0.001], "train.channels_last": [False]},
                      base="base.yaml", stem="file", name="lrs")
    g = grid.load_grid(path)
    assert g.name == "lrs"
    assert [p.name for p in g.points] == ["lr0.01-no_channels_last", "lr0.001-no_channels_last"]
    assert g.points[1].cfg.optim.lr == 0.001 and g.points[1].cfg.data.synthetic_size == 200


@pytest.mark.parametrize("override", ["model.norm=ln", "model={}"])
def test_override_of_an_axis_key_is_rejected(tmp_path, override):
    with pytest.raises(ConfigError, match=r"model\.n\w+ is an axis of this grid"):
        grid.load_grid(_grid_file(tmp_path, SPEC_AXES), [override])


def test_invalid_axis_fails_before_any_folder(tmp_path, capsys):
    path = _grid_file(tmp_path, {"model.name": ["resnet18"], "model.norm": ["bn", "xx"]})
    out = tmp_path / "runs"
    assert main(["grid", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("classlab grid: error: axes model.norm: unknown value 'xx'")
    assert "\n" not in err and not out.exists()


@pytest.mark.parametrize("text, match", [
    ("axes: {model.norm: [bn]}\nbogus: 1\n", "unknown grid key 'bogus'"),
    ("axes: {model.nrom: [bn]}\n", r"axes model\.nrom: unknown key"),
    ("axes: {model.norm: bn}\n", "non-empty list"),
    ("axes: {model.norm: [bn, bn]}\n", "listed twice"),
    ("base: missing.yaml\naxes: {model.norm: [bn]}\n", "cannot read config"),
])
def test_bad_grid_files(tmp_path, text, match):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        grid.load_grid(tmp_path / "bad.yaml")


def test_a_grid_folder_holding_another_grid_is_refused(tmp_path):
    path = _grid_file(tmp_path, {"model.norm": ["bn", "ln"]})
    gdir = tmp_path / "gd"
    assert grid.main_grid(path, [], grid_dir=gdir, print_commands=True) == 0
    assert grid.main_grid(path, [], grid_dir=gdir, print_commands=True) == 0  # same: reused
    with pytest.raises(ConfigError, match=r"gd: this grid folder holds another grid .*overrides"):
        grid.main_grid(path, ["train.epochs=2"], grid_dir=gdir, print_commands=True)


# --------------------------------------------------------------------------- running


def test_skip_finished_resume_unfinished_restart_without_checkpoint(tmp_path, capsys):
    path = _grid_file(tmp_path, {"sched.name": ["onecycle", "step", "plateau"]})
    out, args = tmp_path / "runs", ["train.epochs=2"]
    grid.main_grid(path, args, out=out, print_commands=True)  # prepares the folders only
    a, b, c = (out / "g" / n for n in ("onecycle", "step", "plateau"))
    _stop_after_first_epoch(a)  # killed: "running", checkpoint at epoch 1 of 2
    grid.run_point(b)  # finished
    # killed before its first checkpoint: "running", no last.pt, a stale metrics row
    (c / "summary.json").write_text(json.dumps({**_summary(a), "epochs_done": 0}))
    (c / "metrics.csv").write_text((a / "metrics.csv").read_text())
    first_row_a = (a / "metrics.csv").read_text().splitlines()[1]
    mtime_b = (b / "last.pt").stat().st_mtime_ns
    capsys.readouterr()

    assert grid.main_grid(path, args, out=out) == 0
    text = capsys.readouterr().out
    assert "3 runs:" in text and "[resume after epoch 1]" in text and "[finished]" in text
    assert "Resuming" in text and "2 ran, 1 skipped (finished), 0 failed" in text
    assert (b / "last.pt").stat().st_mtime_ns == mtime_b  # not retrained
    assert (a / "metrics.csv").read_text().splitlines()[1] == first_row_a
    for d in (a, b, c):
        assert [r["epoch"] for r in read_metrics(d / "metrics.csv")] == [1, 2]
        assert _summary(d)["status"] == "finished"

    mtimes = [(d / "last.pt").stat().st_mtime_ns for d in (a, b, c)]
    assert grid.main_grid(path, args, out=out) == 0  # everything finished: nothing runs
    assert "0 ran, 3 skipped" in capsys.readouterr().out
    assert [(d / "last.pt").stat().st_mtime_ns for d in (a, b, c)] == mtimes


def _stop_after_first_epoch(point_dir: Path) -> None:
    class Stop(Exception):
        pass

    def stop(row: dict) -> None:
        raise Stop

    s = resume_run(point_dir).session
    with pytest.raises(Stop):
        fit(s, point_dir, on_epoch=stop)
    assert _summary(point_dir)["status"] == "running"


def test_a_failing_point_does_not_stop_the_others(tmp_path, capsys):
    # 180 training images after the validation split: a subset of 500 fails at build time
    path = _grid_file(tmp_path, {"data.subset": [500, 0]})
    out = tmp_path / "runs"
    assert main(["grid", str(path), "--out", str(out)]) == 1
    assert "FAILED: DataError: data.subset=500" in capsys.readouterr().out
    bad, good = out / "g" / "subset500", out / "g" / "subset0"
    assert _summary(bad)["status"] == "failed"
    assert _summary(bad)["error"].startswith("DataError: data.subset=500 is more than")
    assert _summary(good)["status"] == "finished"
    rows = list(csv.DictReader((out / "g" / "results.csv").open()))
    assert [(r["data.subset"], r["Status"]) for r in rows] == [("500", "failed"),
                                                                ("0", "finished")]
    assert rows[0]["Error"].startswith("DataError:") and rows[0]["Test acc"] == ""
    md = (out / "g" / "results.md").read_text()
    assert "| data.subset |" in md and "| failed: DataError: data.subset=500" in md


# --------------------------------------------------------------------------- table


def _fake_point(point_dir: Path, *, status: str | None, params: int = 0, done: int = 0,
                final: tuple = (), best: tuple = (), spe: float = 0.0, error: str = "") -> None:
    if status is None:
        return
    keys = ("train_acc", "val_acc", "test_acc")
    (point_dir / "summary.json").write_text(json.dumps({
        "status": status, "error": error or None, "params": params, "epochs": 40,
        "epochs_done": done, "final": dict(zip(keys, final)) if final else None,
        "best_by_val": {"epoch": best[0], "test_acc": best[1]} if best else None,
        "seconds_per_epoch": spe}))
    lines = [",".join(METRIC_FIELDS)]
    lines += [f"{e},0.001,1.0,{e},1.0,{e},1.0,{30 + e},1.0" for e in range(1, done + 1)]
    (point_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_table_from_fake_run_folders(tmp_path, capsys):
    axes = {"model.name": ["resnet18", "resnet34"], "model.norm": ["bn", "ln"]}
    gdir = tmp_path / "gd"
    grid.main_grid(_grid_file(tmp_path, axes), ["train.epochs=40"], grid_dir=gdir,
                   print_commands=True)
    _fake_point(gdir / "resnet18-bn", status="finished", params=11173962, done=40,
                final=(85.123, 80.0, 81.457), best=(38, 81.9), spe=58.34)
    _fake_point(gdir / "resnet18-ln", status="failed", params=11173962, done=3, spe=57.0,
                error="TrainingError: non-finite loss at epoch 4, step 600")
    _fake_point(gdir / "resnet34-bn", status="finished", params=21282122, done=40,
                final=(99.5, 91.02, 90.0), best=(39, 90.11), spe=101.0)
    _fake_point(gdir / "resnet34-ln", status=None)  # not started
    capsys.readouterr()
    assert main(["table", str(gdir)]) == 0
    md = (gdir / "results.md").read_text().splitlines()
    # the findings first (the best point by validation accuracy; the test set chooses
    # nothing), then the table; fake folders have no test outputs, so no p-values
    assert md[2] == ("Best point by mean validation accuracy: **resnet34-bn** (test accuracy "
                     "90.00%, 1 seed).")
    assert md[4:10] == [
        "| Model | Normalization | Scheduler | Params | Train acc | Val acc | Test acc | "
        "vs best | ECE | Best-by-val test acc | Epochs | s/epoch | Status | Run folder |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| ResNet18 | Batch Normalization | OneCycleLR | 11,173,962 | 85.12% | 80.00% | "
        "81.46% | – | – | 81.90% (epoch 38) | 40 | 58.3 | finished | [resnet18-bn](resnet18-bn/) |",
        "| ResNet18 | Layer Normalization | OneCycleLR | 11,173,962 | – | – | – | – | – | – | "
        "3/40 | 57.0 | failed: TrainingError: non-finite loss at epoch 4, step 600 | "
        "[resnet18-ln](resnet18-ln/) |",
        "| ResNet34 | Batch Normalization | OneCycleLR | 21,282,122 | 99.50% | 91.02% | "
        "90.00% | best | – | 90.11% (epoch 39) | 40 | 101.0 | finished | "
        "[resnet34-bn](resnet34-bn/) |",
        "| ResNet34 | Layer Normalization | OneCycleLR | – | – | – | – | – | – | – | 0/40 | – | "
        "not started | [resnet34-ln](resnet34-ln/) |",
    ]
    assert "| ResNet34 | Batch Normalization" in capsys.readouterr().out
    rows = list(csv.reader((gdir / "results.csv").open()))
    assert rows[0][:4] == ["Model", "Normalization", "Scheduler", "Params"]
    assert rows[3] == ["ResNet34", "Batch Normalization", "OneCycleLR", "21282122", "99.50",
                       "91.02", "90.00", "90.11", "39", "40", "40", "101.0", "finished", "",
                       "resnet34-bn", "resnet34-bn", ""]
    assert (gdir / "test_acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_of_a_folder_without_grid_yaml(tmp_path, capsys):
    assert main(["table", str(tmp_path)]) == 2
    assert "not a grid folder (no grid.yaml)" in capsys.readouterr().err


# --------------------------------------------------------------------------- processes


def test_print_commands_run_as_is_then_table(tmp_path, capsys):
    gdir = tmp_path / "my grids" / "two"  # a space: the lines must be shell-quoted
    path = _grid_file(tmp_path, {"model.norm": ["bn", "ln"]})
    assert main(["grid", str(path), "--grid-dir", str(gdir), "--print-commands"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x and not x.startswith("#")]
    assert len(lines) == 2 and "run-point" in lines[0]
    for line in lines:
        done = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert main(["table", str(gdir)]) == 0
    rows = list(csv.DictReader((gdir / "results.csv").open()))
    assert [(r["Normalization"], r["Status"]) for r in rows] == [
        ("Batch Normalization", "finished"), ("Layer Normalization", "finished")]


def test_jobs_2_runs_points_in_child_processes(tmp_path, capsys):
    path = _grid_file(tmp_path, {"model.norm": ["bn", "ln"]})
    out = tmp_path / "runs"
    assert grid.main_grid(path, [], out=out, jobs=2) == 0
    text = capsys.readouterr().out
    assert text.count("start ") == 2 and "(1 thread;" in text
    dirs = [out / "g" / "bn", out / "g" / "ln"]
    for d in dirs:
        assert _summary(d)["status"] == "finished"
        assert "Epoch 1:" in (d / "train.log").read_text()
    assert _summary(dirs[0])["params"] > 0
    assert len({_summary(d)["run_dir"] for d in dirs}) == 2


# --------------------------------------------------------------------------- shipped files


def test_every_shipped_yaml_loads():
    files = sorted(EXPERIMENTS.rglob("*.yaml"))
    assert files
    for path in files:
        if "axes" in config.read_yaml(path):
            g = grid.load_grid(path)  # expands and validates every point
            assert g.points, path
        else:
            config.load(path)


def test_seed_grid_is_the_spec_table():
    g = grid.load_grid(EXPERIMENTS / "seed_grid.yaml")
    assert [(p.cfg.model.name, p.cfg.model.norm, p.cfg.sched.name) for p in g.points] == [
        (m, n, s) for m in ("resnet18", "resnet34") for n in ("bn", "ln")
        for s in ("onecycle", "step", "plateau")]
    c = g.points[0].cfg
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == ("adam", 1e-3, 1e-4)
    assert (c.train.batch_size, c.train.epochs) == (256, 40)
    assert (c.data.name, c.data.val_split) == ("cifar10", 0.1)
    assert set(c.aug.ops) == {"crop", "flip", "rotate", "cutout"}
    assert (c.aug.crop_padding, c.aug.rotate_degrees, c.aug.cutout_size) == (4, 5.0, 16)
    assert (c.sched.step_size, c.sched.gamma) == (10, 0.1)
    assert (c.sched.factor, c.sched.patience, c.sched.monitor) == (0.2, 3, "val_loss")

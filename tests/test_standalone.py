"""Runs that stand alone (issue "Runs that stand alone"): the run folder records where its data
came from, so resume / eval / diagnose need no ``--data-dir``; moved or changed data is one
line; the pace line projects the epoch time; the progress bar refreshes and shows the run's
ETA; ``classlab runs`` lists run folders.

The SIGTERM / SIGINT and periodic-checkpoint tests are in tests/test_reliability.py (section
2), next to the SIGKILL one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import fake_cifar_bin
from PIL import Image

from classlab import config
from classlab.cli import main
from classlab.data import cifar
from classlab.engine import epoch as epoch_module
from classlab.engine.epoch import StepInfo
from classlab.fmt import duration
from classlab.run import pace as pace_module
from classlab.run.fit import fit
from classlab.run.pace import Pace
from classlab.run.signals import TEST_SIGNAL_ENV
from classlab.run.start import start_run
from classlab.rundir.metrics import read_metrics

# 10 classes x (20 train + 6 test) noise pictures; val_split 0.1 leaves 180 = 6 steps of 32
PICTURES = ["name=pics", "data.name=imagefolder", "model.width=4", "train.batch_size=32",
            "train.epochs=2", "train.progress=false", "train.device=cpu", "train.threads=1",
            "diagnose.enabled=false", "log.dynamics_every=0", "train.precision=fp32",
            "train.channels_last=false"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_default_data(tmp_path, monkeypatch):
    """No $CLASSLAB_DATA, and a home whose ~/.cache/classlab is empty: data found without
    --data-dir can only have come from the run folder."""
    monkeypatch.delenv("CLASSLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _pictures(root: Path, train: int = 20, test: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(10):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[:, :, c % 3] = 25 * c  # a class colour: something to learn
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def pictures_run(tmp_path_factory):
    """(data folder, finished run trained from it with --data-dir)."""
    top = tmp_path_factory.mktemp("pictures_run")
    data = _pictures(top / "pictures")
    assert main(["train", *PICTURES, "train.epochs=1", "--data-dir", str(data), "--out",
                 str(top / "runs")]) == 0
    (run_dir,) = (top / "runs").iterdir()
    return data, run_dir


# --------------------------------------------------------------------------- the record


def test_run_trained_with_data_dir_resumes_evaluates_and_diagnoses_without_it(
        tmp_path, monkeypatch, capsys):
    data = _pictures(tmp_path / "pictures")
    monkeypatch.setenv(TEST_SIGNAL_ENV, "2:2")  # SIGTERM after step 2 of epoch 2
    rc = main(["train", *PICTURES, "--data-dir", str(data), "--out", str(tmp_path / "runs")])
    monkeypatch.delenv(TEST_SIGNAL_ENV)
    assert rc == 143
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "data.json").read_text())
    assert record["dataset"] == "imagefolder" and record["path"] == str(data)
    assert len(record["files"]) == 260
    one = data / "test" / "c7" / "0003.png"
    assert record["files"]["test/c7/0003.png"] == {
        "bytes": one.stat().st_size, "md5": hashlib.md5(one.read_bytes()).hexdigest()}

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # nothing may depend on the first cwd
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Resuming {run_dir} at epoch 2, step 2 of 6" in out
    assert f"Data: imagefolder from {data}" in out
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]

    assert main(["eval", str(run_dir)]) == 0
    assert f"/60 ({rows[-1]['test_acc']:.2f}%)  [checkpoint epoch 2]" in capsys.readouterr().out
    assert main(["diagnose", str(run_dir), "--count", "2", "--layers", "layer4"]) == 0
    assert len((run_dir / "predictions.csv").read_text().splitlines()) == 1 + 60
    assert (run_dir / "report.html").is_file()


@pytest.mark.parametrize("command", [["eval"], ["diagnose"], ["train", "--resume"]],
                         ids=["eval", "diagnose", "resume"])
def test_moved_data_is_one_line_naming_the_recorded_path(pictures_run, capsys, command):
    data, run_dir = pictures_run
    moved = data.with_name("pictures-moved")
    before = _snapshot(run_dir)
    data.rename(moved)
    try:
        capsys.readouterr()
        assert main([*command, str(run_dir)]) == 2
        err = _one_line(capsys.readouterr().err)
        assert err == (f"classlab {command[0]}: error: {data}: the imagefolder data this run "
                       f"was trained on is no longer there (recorded in {run_dir}/data.json); "
                       "moved? pass --data-dir with its new location")
        assert _snapshot(run_dir) == before, "the run folder was written to"
        assert main(["eval", str(run_dir), "--data-dir", str(moved)]) == 0  # pointed to it
        assert _snapshot(run_dir) == before, "eval wrote into the run folder"
    finally:
        moved.rename(data)


def test_resume_with_data_dir_records_the_new_place(tmp_path, capsys):
    data = _pictures(tmp_path / "pictures", train=10, test=2)
    assert main(["train", *PICTURES, "train.epochs=1", "--data-dir", str(data), "--out",
                 str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    moved = data.rename(tmp_path / "moved")
    assert main(["train", "--resume", str(run_dir), "--data-dir", str(moved)]) == 0
    assert json.loads((run_dir / "data.json").read_text())["path"] == str(moved)
    assert main(["eval", str(run_dir)]) == 0  # no --data-dir needed any more


def _flip_a_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("change, what", [
    (lambda d: _flip_a_byte(d / "train/c3/0005.png"), "train/c3/0005.png has other contents"),
    (lambda d: shutil.copy(d / "test/c1/0000.png", d / "test/c1/0099.png"),
     "test/c1/0099.png is new"),
    (lambda d: (d / "train/c0/0001.png").unlink(), "train/c0/0001.png missing"),
], ids=["pixels-changed", "picture-added", "picture-removed"])
def test_changed_data_is_one_line_naming_what_differs(pictures_run, tmp_path, capsys, change,
                                                       what):
    data, run_dir = pictures_run
    backup = shutil.copytree(data, tmp_path / "backup")
    change(data)
    try:
        capsys.readouterr()
        assert main(["eval", str(run_dir)]) == 2
        err = _one_line(capsys.readouterr().err)
        assert err.startswith(f"classlab eval: error: {data}: the imagefolder data differs "
                              f"from what this run was trained on ({what}")
        assert err.endswith(f"; recorded in {run_dir}/data.json: {data}); put the original "
                            "files back, or pass --data-dir with a copy of them")
    finally:
        shutil.rmtree(data)
        shutil.copytree(backup, data)


def test_changed_cifar_file_is_named_before_loading(tmp_path, monkeypatch, capsys):
    md5s = fake_cifar_bin(tmp_path / "data")
    monkeypatch.setattr(cifar, "CIFAR10_BIN_MD5S", md5s)
    out = tmp_path / "runs"
    assert main(["train", *PICTURES, "data.name=cifar10", "train.epochs=1", "--data-dir",
                 str(tmp_path / "data" / cifar.BIN_FOLDER), "--out", str(out)]) == 0
    (run_dir,) = out.iterdir()
    record = json.loads((run_dir / "data.json").read_text())
    assert record["path"] == str(tmp_path / "data")  # the folder above the release
    assert sorted(record["files"]) == sorted(f"{cifar.BIN_FOLDER}/{n}"
                                             for n in [*md5s, "batches.meta.txt"])
    assert record["files"][f"{cifar.BIN_FOLDER}/data_batch_2.bin"]["md5"] == \
        md5s["data_batch_2.bin"]
    _flip_a_byte(tmp_path / "data" / cifar.BIN_FOLDER / "data_batch_2.bin")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{cifar.BIN_FOLDER}/data_batch_2.bin has other contents (MD5 " in err
    assert f"recorded {md5s['data_batch_2.bin'][:8]}" in err  # not the loader's own message


# --------------------------------------------------------------------------- pace


def test_pace_line_projects_the_measured_epoch_time(tmp_path, capsys, monkeypatch):
    """On a fake clock that moves only when the model runs: a training forward costs
    TRAIN s per image (the first one of the process 5 s more: warm-up, which the pace line
    must not measure), an evaluation forward 1/EVAL_COST of that. The projected epoch is
    then exactly what each epoch after the first takes."""
    # 288 train images: 9 steps of 32 per epoch; evaluation of 32 val + 160 test images
    cfg = config.load(None, ["name=pace", "data.name=synthetic", "data.synthetic_size=320",
                             "model.width=4", "train.batch_size=32", "train.epochs=3",
                             "train.device=cpu", "train.threads=1", "log.dynamics_every=0",
                             "diagnose.enabled=false", "train.precision=fp32",
                             "train.channels_last=false"])
    train, warm_up = 0.01, 5.0
    clock = SimpleNamespace(now=1000.0, forwards=0)

    def advance(module, args) -> None:
        n = args[0].shape[0]
        if module.training:
            clock.now += n * train + (warm_up if clock.forwards == 0 else 0.0)
            clock.forwards += 1
        else:
            clock.now += n * train / pace_module.EVAL_COST

    from classlab.run import fit as fit_module

    monkeypatch.setattr(fit_module, "Pace", functools.partial(Pace, clock=lambda: clock.now))
    monkeypatch.setattr(fit_module, "time", SimpleNamespace(time=lambda: clock.now))
    s, run_dir = start_run(cfg, tmp_path)
    s.model.register_forward_pre_hook(advance)
    fit(s, run_dir)
    captured = capsys.readouterr()
    m = re.search(r"^Pace: ([\d.]+) s/step \(steps 2-9 of epoch 1 on cpu \(.+, 1 thread\)"
                  r"\): ~([\d.]+) s/epoch, ~([\d.]+) s for 3 epochs$", captured.out, re.M)
    assert m, captured.out
    epoch = 9 * 32 * train + (32 + 160) * train / pace_module.EVAL_COST  # 3.52 s
    assert float(m.group(1)) == pytest.approx(32 * train)  # the warm-up is not measured
    assert float(m.group(2)) == pytest.approx(epoch, abs=0.005)
    assert float(m.group(3)) == round(3 * epoch)
    seconds = [r["seconds"] for r in read_metrics(run_dir / "metrics.csv")]
    assert seconds == pytest.approx([epoch + warm_up, epoch, epoch], abs=1e-9)
    # the progress bar (stderr) shows the run's ETA once the step time is known
    assert re.search(r"Epoch 2: .*run ETA ~[\d.]+ s", captured.err)


def _fake_session(steps_train: int, device: str = "cpu", name: str = "cifar10") -> object:
    cfg = config.load(None, [f"data.name={name}", "train.epochs=40", "train.batch_size=256"])
    empty = torch.zeros(0)
    data = {"val": (torch.zeros(5000), empty), "test": (torch.zeros(10000), empty)}
    return SimpleNamespace(cfg=cfg, steps_per_epoch=steps_train, device=torch.device(device),
                           data=data)


def test_slow_cpu_projection_in_hours_names_the_fast_recipe(monkeypatch, capsys):
    clock = iter(range(0, 1000, 10))  # every step takes 10 s
    monkeypatch.setattr(pace_module.time, "monotonic", lambda: float(next(clock)))
    pace = Pace(_fake_session(176), "cpu (AMD EPYC, 2 threads)", fresh=True,
                data_root="/data")
    for step in (1, 2, 3):
        pace.after_step(StepInfo(1, step, 176, lambda: None))
    lines = capsys.readouterr().out.splitlines()
    # epoch: 176 steps + 15,000 evaluation images / 256 / 3 = 19.5 step-equivalents, 10 s each
    # (40 x 1,955.3 s = 1,303.5 min), measured over steps 2-3: 20 s, over MEASURE_SECONDS
    assert lines[0] == ("Pace: 10 s/step (steps 2-3 of epoch 1 on cpu (AMD EPYC, 2 threads)):"
                        " ~33 min/epoch, ~21 h 44 min for 40 epochs")
    assert lines[1] == ("That is long: experiments/fast.yaml reaches ~90% test accuracy in ~8 "
                        "min on 2 CPU cores (classlab train experiments/fast.yaml --data-dir "
                        "/data)")
    assert pace.note() == "run ETA ~21 h 43 min"  # 3 steps (30 s) done


@pytest.mark.parametrize("seconds, text", [(0.617, "~0.62 s"), (42.4, "~42 s"),
                                           (564, "~9.4 min"), (1955, "~33 min"),
                                           (22500, "~6 h 15 min"), (7200, "~2 h")])
def test_durations_read_as_a_person_plans(seconds, text):
    assert duration(seconds, approx=True) == text


class _Bar:
    """Records the (fake) time of every refresh of the bar's numbers."""

    def __init__(self, clock: list[float]) -> None:
        self.clock, self.postfix_at, self.n = clock, [], 0

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix_at.append(self.clock[0])

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        pass


@pytest.mark.parametrize("step_seconds", [0.3, 0.9, 3.0])
def test_bar_numbers_refresh_at_least_every_2_seconds(monkeypatch, step_seconds):
    now = [0.0]

    def monotonic() -> float:
        now[0] += step_seconds  # one call per step: the clock moves one step each time
        return now[0]
    bar = _Bar(now)
    monkeypatch.setattr(epoch_module.time, "monotonic", monotonic)
    monkeypatch.setattr(epoch_module, "_progress", lambda *a, **k: bar)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.zeros(60, 3, 2, 2, dtype=torch.uint8), torch.arange(60) % 10
    stepper = SimpleNamespace(after_batch=lambda: None)
    norm = epoch_module.Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    amp = SimpleNamespace(autocast=lambda: torch.autocast("cpu", enabled=False),
                          scaler=torch.amp.GradScaler("cpu", enabled=False))
    plan = epoch_module.EpochPlan(model, epoch_module.StepRecipe(opt, amp), stepper, norm,
                                  lambda xb, g: xb, batch_size=2)
    epoch_module.train_one_epoch(plan, x, y, torch.Generator().manual_seed(0),
                                 epoch_module.EpochStart(1), progress=True)
    gaps = np.diff([0.0, *bar.postfix_at, now[0]])
    assert bar.n == 30 and max(gaps) <= max(2.0, step_seconds) + 1e-9
    if step_seconds < 1:  # fast steps: the numbers (a GPU sync each) are not read every step
        assert len(bar.postfix_at) < 30


# --------------------------------------------------------------------------- classlab runs


def test_runs_lists_run_folders_newest_first(tmp_path, tiny_run, copy_run, capsys):
    runs = tmp_path / "runs"
    old = copy_run(tiny_run, runs)
    stopped = copy_run(tiny_run, tmp_path / "x")
    stopped = stopped.rename(runs / "stopped-run")
    summary = json.loads((stopped / "summary.json").read_text())
    summary.update(status="interrupted", epochs_done=0, final=None, best_by_val=None,
                   wall_seconds=3725.0,
                   interrupted={"signal": "SIGTERM", "epoch": 1, "step": 2, "steps": 4})
    (stopped / "summary.json").write_text(json.dumps(summary))
    grid_point = runs / "grid" / "point-a"
    grid_point.mkdir(parents=True)
    (runs / "grid" / "grid.yaml").write_text("points: []\n")
    shutil.copy(tiny_run / "config.yaml", grid_point / "config.yaml")
    (runs / "not-a-run").mkdir()
    for age, d in enumerate([grid_point, stopped, old]):  # newest first
        os.utime(d / "config.yaml", (1e9 - age * 100, 1e9 - age * 100))
    capsys.readouterr()
    assert main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    final = json.loads((old / "summary.json").read_text())
    best = final["best_by_val"]
    assert re.split(r"\s{2,}", lines[0]) == ["run", "status", "epochs", "final test",
                                            "best by val", "wall"]
    assert [re.split(r"\s{2,}", x) for x in lines[1:]] == [
        [str(grid_point), "not started", "0/1", "–", "–", "–"],  # classlab.fmt.MISSING
        [str(stopped), "stopped (SIGTERM)", "0/1", "–", "–", "1 h 02 min 05 s"],
        [str(old), "finished", "1/1", f"{final['final']['test_acc']:.2f}%",
         f"val {best['val_acc']:.2f}% @ 1 (test {best['test_acc']:.2f}%)",
         f"{final['wall_seconds']:.1f} s"],
    ]
    assert main(["runs", str(tmp_path / "nothing")]) == 2

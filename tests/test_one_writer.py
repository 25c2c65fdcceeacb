"""A run folder has one writer and one config (issue 22): concurrent resumes, a killed holder,
two grid drivers, edited configs, and runs extended with ``--resume --epochs``."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from classlab import config
from classlab.cli import main
from classlab.run.fit import fit
from classlab.run.start import start_run
from classlab.rundir import RunFiles
from classlab.rundir.checkpoint import load_checkpoint
from classlab.rundir.history import read_events
from classlab.rundir.lock import hold, holder, network_filesystem
from classlab.rundir.metrics import read_metrics

TINY = ["name=tiny", "data.name=synthetic", "data.synthetic_size=200", "model.width=4",
        "train.batch_size=50", "train.progress=false", "diagnose.enabled=false",
        "log.dynamics_every=0", "train.precision=fp32", "train.channels_last=false",
        "train.threads=1", "sched.name=step", "sched.step_size=1", "sched.gamma=0.5",
        "optim.name=sgd", "optim.lr=0.05"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class _Stop(Exception):
    pass


def _run(parent: Path, epochs: int, stop_after: int | None = None, *extra: str) -> Path:
    """A run folder trained ``epochs`` epochs, or stopped (as if killed) after
    ``stop_after`` of them."""
    s, run_dir = start_run(config.load(None, [*TINY, f"train.epochs={epochs}", *extra]), parent)

    def stop(row):
        if row["epoch"] == stop_after:
            raise _Stop

    try:
        fit(s, run_dir, on_epoch=stop)
    except _Stop:
        pass
    return run_dir


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in read_metrics(RunFiles(run_dir).metrics)]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = (load_checkpoint(RunFiles(d).checkpoint)["model"] for d in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _start(*argv: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "classlab", *argv], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def full4(tmp_path_factory) -> Path:
    """The uninterrupted 4-epoch run every continued run must equal."""
    return _run(tmp_path_factory.mktemp("full"), 4)


# --------------------------------------------------------------------------- one writer


def test_two_concurrent_resumes_one_refused_and_the_run_is_the_uninterrupted_one(tmp_path):
    # Long enough epochs (1,000 images) that the first process still trains when the second
    # has started Python and torch, whatever the machine's load.
    big = ("data.synthetic_size=1000",)
    full = _run(tmp_path / "full", 4, None, *big)
    part = _run(tmp_path / "part", 4, 1, *big)
    a = _start("train", "--resume", str(part), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while holder(part) is None:  # the first holds the folder before the second starts
        assert a.poll() is None and time.monotonic() < deadline, a.communicate()
        time.sleep(0.02)
    b = _start("train", "--resume", str(part), cwd=tmp_path)
    results = [(p.wait(timeout=240), *p.communicate()) for p in (a, b)]
    assert [r[0] for r in results] == [0, 2], results
    lines = results[1][2].strip().splitlines()
    assert len(lines) == 1 and "in use by pid" in lines[0] and "Traceback" not in results[1][2]
    assert str(part) in lines[0] and "classlab train --resume" in lines[0]
    assert f"pid {a.pid} " in lines[0]
    assert _rows(part) == _rows(full)  # every epoch once, the same numbers
    assert _same_weights(part, full)


def test_sigkill_of_the_holder_frees_the_lock_for_the_next_resume(tmp_path, full4):
    part = _run(tmp_path / "part", 4, stop_after=1)
    p = _start("train", "--resume", str(part), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while holder(part) is None:  # wait until it holds the folder
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    assert holder(part)["pid"] == p.pid
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert holder(part) is None  # the operating system dropped it with the process
    assert main(["train", "--resume", str(part)]) == 0
    assert _rows(part) == _rows(full4) and _same_weights(part, full4)


def test_report_and_diagnose_refuse_a_folder_held_by_a_training_process(tmp_path, full4,
                                                                        copy_run, capsys):
    run = copy_run(full4, tmp_path)
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    ready, done = threading.Event(), threading.Event()

    def other_process() -> None:  # a child holding the lock, as a training process would
        code = ("import sys, time; from classlab.rundir.lock import hold\n"
                f"with hold({str(run)!r}, command='classlab train --resume x'):\n"
                "    print('held', flush=True); sys.stdin.readline()\n")
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=ENV)
        child.stdout.readline()
        ready.set()
        done.wait(60)
        child.communicate("\n", timeout=60)

    t = threading.Thread(target=other_process)
    t.start()
    try:
        assert ready.wait(60)
        capsys.readouterr()
        for argv in (["report", str(run)], ["diagnose", str(run)],
                     ["train", "--resume", str(run)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "in use by pid" in err[0], (argv, err)
        assert main(["eval", str(run)]) == 0  # reading needs no lock
    finally:
        done.set()
        t.join()
    after = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    other = ("import sys; from classlab.rundir.lock import RunLocked, hold, holder\n"
             f"h = holder({str(run)!r})\n"
             "try:\n"
             f"    with hold({str(run)!r}):\n"
             "        sys.exit(3)\n"
             "except RunLocked as e:\n"
             f"    sys.exit(0 if h and h['pid'] == {os.getpid()} and 'in use by pid' in str(e) "
             "else 1)\n")
    with hold(run), hold(run):  # the training flow diagnoses and reports under its own lock
        assert subprocess.run([sys.executable, "-c", other], env=ENV).returncode == 0
    assert holder(run) is None  # released once the outer hold ends
    assert subprocess.run([sys.executable, "-c", other], env=ENV).returncode == 3


def test_network_filesystem_names_nfs_from_the_mount_table(tmp_path, monkeypatch):
    table = f"server:/export {tmp_path} nfs4 rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/proc/mounts":
            import io
            return io.StringIO(table)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert network_filesystem(tmp_path / "run") == "nfs4"
    assert network_filesystem("/somewhere/else") is None


# --------------------------------------------------------------------------- grids


GRID = """\
name: g
base:
  name: p
  data: {name: synthetic, synthetic_size: 200}
  model: {width: 4}
  optim: {name: sgd, lr: 0.05}
  sched: {name: step, step_size: 1}
  train: {epochs: 2, batch_size: 50, progress: false, threads: 1, precision: fp32,
          channels_last: false}
  log: {dynamics_every: 0}
  diagnose: {enabled: false}
axes:
  optim.lr: [0.05, 0.02, 0.01]
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_two_drivers_on_one_grid_never_train_a_point_twice(tmp_path, jobs):
    (tmp_path / "g.yaml").write_text(GRID)
    argv = ("grid", "g.yaml", "--out", "runs", "--jobs", jobs)
    a, b = _start(*argv, cwd=tmp_path), _start(*argv, cwd=tmp_path)
    outs = [(p.wait(timeout=400), *p.communicate()) for p in (a, b)]
    assert [o[0] for o in outs] == [0, 0], outs
    gdir = tmp_path / "runs" / "g"
    points = sorted(d for d in gdir.iterdir() if (d / "config.yaml").is_file())
    assert len(points) == 3
    for d in points:  # each point trained once: one row per epoch
        assert [r["epoch"] for r in read_metrics(RunFiles(d).metrics)] == [1, 2], d
    assert any("running elsewhere" in o[1] or "finished already" in o[1]
               or "skipped (finished)" in o[1] for o in outs)


# --------------------------------------------------------------------------- one config


# every key that may change on resume, with a new value (classlab.config.schema)
ALLOWED = [("train.progress", True), ("train.checkpoint_minutes", 5.0),
           ("train.eval_batch_size", 77), ("log.dynamics_every", 2),
           ("log.tensorboard", True), ("diagnose.count", 3), ("diagnose.method", "layercam"),
           ("name", "renamed"), ("train.threads", 2)]
# keys of the trajectory, each with a different valid value
REFUSED = [("train.batch_size", 40), ("optim.lr", 0.1), ("train.epochs", 6),
           ("model.width", 8), ("sched.gamma", 0.3), ("train.seed", 5),
           ("aug.ops", ["flip"]), ("data.synthetic_size", 300), ("train.label_smoothing", 0.1)]


def _edit_config(run: Path, key: str, value) -> None:
    raw = config.read_yaml(RunFiles(run).config)
    config.set_key(raw, key, value)
    RunFiles(run).config.write_text(config.dump(config.from_dict(raw)))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("stopped"), 4, stop_after=1)


@pytest.mark.parametrize("key,value", ALLOWED, ids=[k for k, _ in ALLOWED])
def test_a_setting_outside_the_trajectory_may_change_on_resume(stopped, copy_run, tmp_path,
                                                              full4, key, value, capsys):
    run = copy_run(stopped, tmp_path)
    _edit_config(run, key, value)
    assert main(["train", "--resume", str(run)]) == 0
    assert "resumed with changed settings" in capsys.readouterr().out
    (event,) = read_events(RunFiles(run).history)
    assert key in event["changed"]
    if key == "train.threads":  # allowed, but other threads sum in another order
        assert [r["epoch"] for r in _rows(run)] == [1, 2, 3, 4]
        return
    assert _rows(run) == _rows(full4) and _same_weights(run, full4)  # the same trajectory


@pytest.mark.parametrize("key,value", REFUSED, ids=[k for k, _ in REFUSED])
def test_a_trajectory_setting_changed_in_config_yaml_is_refused_by_name(stopped, copy_run,
                                                                       tmp_path, key, value,
                                                                       capsys):
    run = copy_run(stopped, tmp_path)
    _edit_config(run, key, value)
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{key}: " in err[0] and "in the checkpoint" in err[0], err
    if key == "train.epochs":
        assert f"--epochs {value}" in err[0]  # the way to say it
    after = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}  # nothing changed


# --------------------------------------------------------------------------- longer runs


def test_extending_a_step_scheduled_run_equals_training_that_long_from_the_start(tmp_path,
                                                                                 full4, capsys):
    short = _run(tmp_path / "short", 2)  # finished after 2 epochs
    assert main(["train", "--resume", str(short), "--epochs", "4"]) == 0
    assert _rows(short) == _rows(full4) and _same_weights(short, full4)
    assert config.load(RunFiles(short).config).train.epochs == 4
    (event,) = read_events(RunFiles(short).history)
    assert (event["event"], event["from"], event["to"], event["after_epoch"]) == \
        ("extended", 2, 4, 2)
    assert main(["train", "--resume", str(short)]) == 0  # finished: nothing more to do
    assert _rows(short) == _rows(full4)
    report = (short / "report.md")
    assert main(["report", str(short)]) == 0
    assert "extended from 2 to 4 epochs" in report.read_text().lower()


def test_extension_killed_before_its_first_checkpoint_resumes(tmp_path, full4):
    short = _run(tmp_path / "short", 2)
    from classlab.run.resume import extend

    extend(RunFiles(short), config.load(RunFiles(short).config), 4, done=2)  # then "killed"
    assert main(["train", "--resume", str(short)]) == 0
    assert _rows(short) == _rows(full4)


def test_extension_is_refused_for_onecycle_with_the_new_run_command(tmp_path, capsys):
    run = _run(tmp_path / "oc", 2, None, "sched.name=onecycle")
    before = RunFiles(run).config.read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sched.name=onecycle" in err[0]
    assert f"train.init_from={run}" in err[0] and "train.epochs=4" in err[0]
    assert RunFiles(run).config.read_bytes() == before
    assert not RunFiles(run).history.exists()
    # the offered command works: a new run starting from the old one's weights
    assert main(["train", str(RunFiles(run).config), "train.epochs=1",
                 f"train.init_from={run}", "--out", str(tmp_path / "new")]) == 0
    (new,) = (tmp_path / "new").iterdir()
    import json
    assert json.loads((new / "summary.json").read_text())["init_from"] == str(run.resolve())


def test_init_from_a_run_of_another_width_is_one_line(tmp_path, full4, capsys):
    assert main(["train", *TINY, "train.epochs=1", "model.width=8",
                 f"train.init_from={full4}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.init_from" in err[0] and "do not fit" in err[0]
    assert not (tmp_path / "o").exists()


def test_epochs_without_resume_or_fewer_than_trained_is_one_line(tmp_path, full4, copy_run,
                                                                capsys):
    assert main(["train", *TINY, "--epochs", "3"]) == 2
    assert "--epochs" in capsys.readouterr().err
    run = copy_run(full4, tmp_path)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "fewer than the 4 epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------- randomized


def test_random_kills_concurrent_resumes_and_edits_never_damage_a_run(tmp_path, full4,
                                                                    stopped, copy_run):
    """A seeded, time-bounded walk: rounds on copies of a run stopped after epoch 1, each a
    random sequence of resumes by one or two processes at once (some killed at a random
    moment), with config edits (allowed, or refused and then put back) between. No
    traceback ever reaches the user, no metrics row is lost or repeated, and every run that
    completes equals its uninterrupted twin."""
    rng = random.Random(22)
    deadline, rounds = time.monotonic() + 40, 0
    while time.monotonic() < deadline or rounds < 2:
        rounds += 1
        run = copy_run(stopped, tmp_path / f"round{rounds}")
        for _ in range(rng.randint(2, 5)):
            _random_step(rng, run, tmp_path)
        assert main(["train", "--resume", str(run)]) == 0
        assert _rows(run) == _rows(full4) and _same_weights(run, full4), rounds


def _random_step(rng: random.Random, run: Path, cwd: Path) -> None:
    action = rng.choice(["resume", "two", "kill", "kill", "edit-ok", "edit-bad"])
    if action == "edit-ok":
        # (not train.threads: allowed, but the continuation is then not bit-identical)
        _edit_config(run, *rng.choice(ALLOWED[:-1]))
        return
    before = RunFiles(run).config.read_text()
    if action == "edit-bad":
        _edit_config(run, *rng.choice(REFUSED))
    procs = [_start("train", "--resume", str(run), cwd=cwd)
             for _ in range(2 if action == "two" else 1)]
    if action == "kill":
        time.sleep(rng.uniform(0.5, 4.0))
        procs[0].kill()
    for p in procs:
        rc = p.wait(timeout=240)
        _, err = p.communicate()
        assert "Traceback" not in err, err
        assert rc in (0, 2, -signal.SIGKILL), (rc, err)
        if rc == 2:
            assert len(err.strip().splitlines()) == 1, err
    if action == "edit-bad":
        assert all(p.returncode == 2 for p in procs)  # refused, the folder untouched
        RunFiles(run).config.write_text(before)
    epochs = [r["epoch"] for r in read_metrics(RunFiles(run).metrics)]
    assert epochs == list(range(1, len(epochs) + 1)), epochs  # none lost or repeated

"""``classlab grid --engine ray`` on a real Ray cluster started here on 127.0.0.1 (a head node
and a second worker node, 1 CPU each), stopped when the module's tests end, pass or fail."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from classlab.cli import main

try:
    import ray  # noqa: F401
except ImportError:  # CI installs the extra: there a missing ray is a failure, not a skip
    if os.environ.get("CI"):
        raise
    pytest.skip("ray is not installed (pip install 'classlab[ray]')", allow_module_level=True)

RAY = Path(sys.executable).with_name("ray")
BASE = {"data": {"name": "synthetic", "synthetic_size": 300},
        "model": {"width": 4},
        "train": {"epochs": 2, "batch_size": 64, "progress": False, "device": "cpu",
                  "threads": 1, "precision": "fp32", "channels_last": False},
        "log": {"dynamics_every": 0}, "diagnose": {"enabled": False}}


def _ray(*args: str) -> str:
    """Run the ``ray`` command line; its output (AssertionError with it when it fails)."""
    done = subprocess.run([str(RAY), *args], capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{out[-3000:]}"
    return out


# Ray turns 127.0.0.1 into the machine's outward address; 127.0.0.2 (also loopback) it keeps,
# so every connection of this cluster stays on the loopback interface.
HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def cluster():
    """HOST:PORT of a two-node cluster on this machine; ``ray stop`` on the way out. The
    head's port is chosen by Ray itself (--port=0): a port picked here and released before
    Ray binds it could be taken in between."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    # No token authentication for a throwaway cluster on loopback (the driver, this process,
    # must agree); no usage statistics sent anywhere.
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    common = ["--num-cpus=1", "--disable-usage-stats", f"--node-ip-address={HOST}"]
    try:
        out = _ray("start", "--head", "--port=0", "--include-dashboard=false",
                   f"--temp-dir={temp}", *common)
        # "ray start --address='HOST:PORT'": how the head tells other nodes where it is
        found = re.search(rf"--address='({re.escape(HOST)}:\d+)'", out)
        assert found, out
        _ray("start", f"--address={found.group(1)}", *common)
        yield found.group(1)
    finally:
        subprocess.run([str(RAY), "stop", "--force"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _grid(tmp: Path, name: str, axes: dict, **base) -> Path:
    path = tmp / f"{name}.yaml"
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for section, values in base.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump({"name": name, "base": cfg, "axes": axes}))
    return path


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def _same_runs(a: Path, b: Path) -> None:
    assert _metrics(a) == _metrics(b), (a, b)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), (a, b)


def _driver(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "classlab", "grid", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MPLBACKEND": "Agg"})


# --------------------------------------------------------------------------- the engine


def test_ray_grid_equals_the_local_engine(cluster, tmp_path, capsys):
    gpath = _grid(tmp_path, "same", {"optim.lr": [0.001, 0.01]})
    assert main(["grid", str(gpath), "--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    assert main(["grid", str(gpath), "--engine", "ray", "--address", cluster,
                 "--out", str(tmp_path / "ray")]) == 0
    out = capsys.readouterr()
    assert "2 tasks submitted to Ray (2 CPUs in the cluster)" in out.out
    assert out.out.count("shared folder") == 2  # one line per finished point, with its node
    for point in ("lr0.001", "lr0.01"):
        _same_runs(tmp_path / "local" / "same" / point, tmp_path / "ray" / "same" / point)
    local_md = (tmp_path / "local" / "same" / "results.md").read_text()
    ray_md = (tmp_path / "ray" / "same" / "results.md").read_text()
    strip = [line.rsplit("|", 4)[0] for line in local_md.splitlines() if line.startswith("| R")]
    assert strip == [line.rsplit("|", 4)[0] for line in ray_md.splitlines()
                     if line.startswith("| R")]  # the same table but for the s/epoch column


def test_copy_mode_sends_finished_folders_back(cluster, tmp_path, capsys, monkeypatch):
    gpath = _grid(tmp_path, "copy", {"optim.lr": [0.01]})
    assert main(["grid", str(gpath), "--out", str(tmp_path / "local")]) == 0
    monkeypatch.setenv("CLASSLAB_RAY_FORCE_COPY", "1")
    capsys.readouterr()
    assert main(["grid", str(gpath), "--engine", "ray", "--address", cluster,
                 "--out", str(tmp_path / "ray")]) == 0
    assert "copy folder" in capsys.readouterr().out
    point = tmp_path / "ray" / "copy" / "lr0.01"
    _same_runs(tmp_path / "local" / "copy" / "lr0.01", point)
    assert (point / "train.log").is_file()
    assert not [p.name for p in point.parent.iterdir() if p.name.startswith(".lr0.01")]


def test_a_failing_point_is_recorded_once_and_not_retried(cluster, tmp_path, capsys):
    gpath = _grid(tmp_path, "nan", {"optim.lr": [1e30]}, optim={"name": "sgd"},
                  sched={"name": "none"})
    assert main(["grid", str(gpath), "--engine", "ray", "--address", cluster,
                 "--out", str(tmp_path / "r")]) == 1
    point = tmp_path / "r" / "nan" / "lr1e+30"
    summary = yaml.safe_load((point / "summary.json").read_text())
    assert summary["status"] == "failed" and "non-finite loss" in summary["error"]
    assert (point / "train.log").read_text().count("==== ") == 1  # ran once
    assert "FAILED: TrainingError: non-finite loss" in capsys.readouterr().out


def test_a_killed_worker_is_retried_and_resumes_to_the_same_result(cluster, tmp_path):
    gpath = _grid(tmp_path, "kill", {"optim.lr": [0.01]}, train={"epochs": 8},
                  data={"synthetic_size": 600})
    assert main(["grid", str(gpath), "--out", str(tmp_path / "local")]) == 0
    point = tmp_path / "ray" / "kill" / "lr0.01"
    p = _driver(str(gpath), "--engine", "ray", "--address", cluster, "--out",
                str(tmp_path / "ray"))
    try:
        pid = _wait_for_epoch(point, p)
        os.kill(pid, signal.SIGKILL)  # the worker process running the point dies
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out
    log = (point / "train.log").read_text()
    assert log.count("==== ") == 2 and "Resuming" in log, log
    _same_runs(tmp_path / "local" / "kill" / "lr0.01", point)


def _wait_for_epoch(point: Path, p: subprocess.Popen, timeout: float = 240) -> int:
    """The pid of the worker training ``point`` once its first epoch is checkpointed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert p.poll() is None, p.stdout.read()
        log = point / "train.log"
        if (point / "last.pt").is_file() and log.is_file():
            head = [x for x in log.read_text().splitlines() if x.startswith("==== ")]
            return int(head[-1].split(" pid ")[1].split()[0])
        time.sleep(0.02)
    raise AssertionError("the point never finished its first epoch")


def _worker_pids(point: Path) -> set[int]:
    """Pids of the processes that trained ``point`` (its train.log's "==== ... pid N")."""
    log = point / "train.log"
    text = log.read_text() if log.is_file() else ""
    return {int(x) for x in re.findall(r"^==== .* pid (\d+) on ", text, re.M)}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended: only its exit status is left


def _wait_until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.05)


def test_an_interrupted_driver_restarts_without_redoing_finished_points(cluster, tmp_path):
    # one short point and two long ones: the interrupt comes after the short one finished,
    # while the long ones surely still train
    gpath = _grid(tmp_path, "again", {"train.epochs": [1, 30, 31]})
    args = [str(gpath), "--engine", "ray", "--address", cluster, "--out", str(tmp_path / "r")]
    gdir = tmp_path / "r" / "again"
    p = _driver(*args)
    try:
        end = time.monotonic() + 240
        while not any(yaml.safe_load(s.read_text()).get("status") == "finished"
                      for s in gdir.glob("*/summary.json")) and time.monotonic() < end:
            assert p.poll() is None, p.stdout.read()
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, out
    finished = {s.parent.name for s in gdir.glob("*/summary.json")
                if yaml.safe_load(s.read_text()).get("status") == "finished"}
    assert finished and len(finished) < 3
    # the outstanding tasks were cancelled: nothing trains on after the driver has gone (the
    # worker processes that trained the unfinished points end; Ray's workers belong to the
    # driver's job)
    workers = set().union(*(_worker_pids(d) for d in gdir.iterdir()
                            if d.is_dir() and d.name not in finished))
    assert workers  # at least the long point that was training when the driver stopped
    _wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=60,
                what=f"the workers {sorted(workers)} to end")
    p = _driver(*args)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert f"{3 - len(finished)} ran, {len(finished)} skipped (finished), 0 failed" in out
    for name in finished:  # trained once, by the first driver
        assert (gdir / name / "train.log").read_text().count("==== ") == 1


def test_without_ray_the_engine_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now fails
    gpath = _grid(tmp_path, "noray", {"optim.lr": [0.01]})
    assert main(["grid", str(gpath), "--engine", "ray", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == ("classlab grid: error: --engine ray needs the ray package: "
                   "pip install 'classlab[ray]'\n")
    assert not (tmp_path / "r").exists()


def test_tuned_grid_on_ray_tune(cluster, tmp_path, capsys):
    """A tune: section with --engine ray: the trials run on Ray Tune (OptunaSearch, ASHA),
    in the embedded engine's layout (a run folder per trial, tuning.json); then the final
    run, with the best value, as a Ray task."""
    pytest.importorskip("optuna")
    pytest.importorskip("ray.tune")
    import json

    from classlab.rundir.summary import is_finished, read_summary

    path = tmp_path / "tuned.yaml"
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    cfg["optim"] = {"name": "adam", "lr": 3e-3}
    path.write_text(yaml.safe_dump({
        "name": "tuned", "base": cfg, "axes": {"model.norm": ["bn"]},
        "tune": {"space": {"optim.lr": {"log_uniform": [1e-4, 10]}}, "trials": 3,
                 "metric": "val_loss", "pruner": "asha"}}))
    out = tmp_path / "runs"
    assert main(["grid", str(path), "--engine", "ray", "--address", cluster,
                 "--out", str(out)]) == 0
    gdir = out / "tuned"
    rec = json.loads((gdir / "tune" / "bn" / "tuning.json").read_text())
    assert rec["finished"] == 3 and rec["complete"] >= 1
    assert rec["trials"][0]["params"] == {"optim.lr": 3e-3}  # the baseline first
    for t in rec["trials"]:
        summary = read_summary(gdir / "tune" / "bn" / t["folder"] / "summary.json")
        if t["state"] != "FAIL":
            assert is_finished(summary), t
        if t["state"] == "PRUNED":
            assert summary["stopped_early"]["by"] == "pruner", t
    final = yaml.safe_load((gdir / "bn" / "config.yaml").read_text())
    assert final["optim"]["lr"] == rec["best"]["params"]["optim.lr"]
    assert is_finished(read_summary(gdir / "bn" / "summary.json"))
    assert "## Tuning" in (gdir / "results.md").read_text()

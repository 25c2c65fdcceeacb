"""MLflow tracking (``log.mlflow: true``, issue 27): a real ``mlflow server`` on 127.0.0.1 and
the local SQLite store, read back through MLflow's own client: the flat config as params, the
per-epoch metric history (step = epoch) equal to metrics.csv, the summary's numbers, the
report and checkpoint as artifacts; a grid's points as nested runs; a server that goes away
during a run costs one warning, not the run."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from classlab import config
from classlab.cli import main
from classlab.run import tracking
from classlab.run.flow import train_run

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

# MLflow's SQLite store, on SQLAlchemy 2: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

TINY = ["name=tiny", "data.name=synthetic", "data.synthetic_size=300", "model.width=4",
        "train.epochs=2", "train.batch_size=64", "train.progress=false", "train.device=cpu",
        "train.threads=1", "train.precision=fp32", "train.channels_last=false",
        "log.dynamics_every=0", "diagnose.enabled=false"]


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # train.threads=1 sets it process-wide
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """The server and its workers (its own process group), SIGTERM then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # workers that outlived the server
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real tracking server (SQLite backend, artifacts proxied into tmp_path); stopped
    at teardown, also when the test fails."""
    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [Path(sys.executable).parent / "mlflow", "server", "--host", "127.0.0.1", "--port",
           str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120  # a loaded 2-core machine takes ~20 s to start it
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not answer in 120 s"
            time.sleep(0.5)
        yield url, proc
    finally:
        _stop(proc)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / tracking.RECORD).read_text())


def _check_run(client: MlflowClient, run_dir: Path, artifacts: set[str],
               started: tuple[str, ...] = ()) -> None:
    """The MLflow run holds the run folder's config (``started``: overrides of the config it
    started with; MLflow params cannot change), metrics, summary and files."""
    run = client.get_run(_record(run_dir)["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    cfg = config.load(run_dir / "config.yaml", started)
    assert run.data.params == tracking.flat_params(cfg)
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["model.width"] == "4"
    assert run.data.params["aug.ops"] == '["crop", "flip", "rotate", "cutout"]'
    assert run.data.params["log.mlflow"] == "true"
    rows = _csv(run_dir / "metrics.csv")
    assert len(rows) == 2
    for column in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                   "test_acc", "seconds"):
        history = client.get_metric_history(run.info.run_id, column)
        assert [m.step for m in history] == [1, 2], column
        # metrics.csv keeps 6 significant digits ("%.6g"): up to 5e-6 relative
        assert [m.value for m in history] == pytest.approx(
            [float(r[column]) for r in rows], rel=5e-6, abs=1e-12), column
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("final.test_acc", "best_by_val.test_acc", "wall_seconds", "epochs_done"):
        section, _, leaf = key.rpartition(".")
        want = summary[section][leaf] if section else summary[key]
        assert run.data.metrics[key] == pytest.approx(want), key
    assert run.data.tags["classlab.status"] == "finished"
    listed = {a.path for top in ("report", "run", "model")
              for a in client.list_artifacts(run.info.run_id, top)}
    assert listed == artifacts


def test_a_run_against_a_real_server_and_a_server_that_goes_away(
        mlflow_server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url, proc = mlflow_server
    out = tmp_path / "runs"
    assert main(["train", *TINY, "diagnose.enabled=true", "diagnose.count=4",
                 "diagnose.layers=[layer4]", "log.mlflow=true", f"log.mlflow_uri={url}",
                 "log.mlflow_experiment=issue27", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    (run_dir,) = out.iterdir()  # a server keeps the store: no mlruns/ here
    client = MlflowClient(url)
    _check_run(client, run_dir, {"report/report.md", "report/report.html",
                                 "report/model_card.md", "report/diagnose", "run/config.yaml",
                                 "run/metrics.csv", "run/summary.json", "model/last.pt"})
    run_id = _record(run_dir)["run_id"]
    assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == "issue27"
    # the checkpoint comes back byte for byte
    got = client.download_artifacts(run_id, "model/last.pt", str(tmp_path))
    assert Path(got).read_bytes() == (run_dir / "last.pt").read_bytes()

    # The server goes away after epoch 1 of a 3-epoch run: one warning, the run finishes.
    def kill_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            _stop(proc)
    cfg = config.load(None, [*TINY, "name=gone", "train.epochs=3", "log.mlflow=true",
                             f"log.mlflow_uri={url}"])
    result = train_run(cfg, out=tmp_path / "gone", on_epoch=kill_after_first)
    assert result.summary["status"] == "finished" and result.summary["epochs_done"] == 3
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: MLflow logging metrics failed (")
    assert warnings[0].endswith("MLflow logging is off for the rest of this run, training "
                                "goes on (the run folder has everything)")


def test_the_local_store_needs_no_server_and_a_resumed_run_continues_its_mlflow_run(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "runs"
    assert main(["train", *TINY, "train.epochs=1", "sched.name=step", "log.mlflow=true",
                 "--out", str(out)]) == 0
    run_dir = next(p for p in out.iterdir() if p.name != "mlruns")
    store = out / "mlruns"
    assert (store / "mlflow.db").is_file() and (store / "artifacts").is_dir()
    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    assert _record(run_dir)["uri"] == uri
    client = MlflowClient(uri)
    run_id = _record(run_dir)["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "test_acc")] == [1]
    # extended by one epoch: the same MLflow run gets epoch 2
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0
    assert _record(run_dir)["run_id"] == run_id
    _check_run(client, run_dir, {"run/config.yaml", "run/metrics.csv", "run/summary.json",
                                 "model/last.pt"}, started=("train.epochs=1",))
    assert client.get_run(run_id).data.metrics["epochs"] == 2  # the summary's: extended
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert "warning" not in capsys.readouterr().err


def test_grid_points_are_nested_runs_under_the_grids_run(tmp_path: Path) -> None:
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g2\naxes: {model.norm: [bn, ln]}\n")
    out = tmp_path / "runs"
    overrides = [o for o in TINY if not o.startswith("name=")]  # the points are named
    assert main(["grid", str(grid_file), *overrides, "train.epochs=1", "log.mlflow=true",
                 "--out", str(out)]) == 0
    gdir = out / "g2"
    client = MlflowClient(_record(gdir)["uri"])
    parent = client.get_run(_record(gdir)["run_id"])
    assert parent.info.run_name == "g2" and parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["axes"]) == {"model.norm": ["bn", "ln"]}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "results")} == \
        {"results/results.md", "results/results.csv"}
    runs = client.search_runs([parent.info.experiment_id])
    children = {r.info.run_name: r for r in runs if r.info.run_id != parent.info.run_id}
    assert set(children) == {"bn", "ln"}
    for name, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_id == _record(gdir / name)["run_id"]
        assert run.data.params["model.norm"] == name
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]

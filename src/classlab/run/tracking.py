"""MLflow tracking (``log.mlflow: true``): one MLflow run per classlab run, a grid's points
nested under one run of the grid.

What an MLflow run holds:

- params: the flat config (``optim.lr``, ``model.norm``, ... as :func:`classlab.config.walk`
  gives them; values as JSON, text as is), written when the MLflow run is created: the
  config it started with (MLflow params cannot change; an extended run's epochs show in the
  summary's numbers);
- metrics: every number of each epoch's metrics.csv row (``train_loss``, ``val_acc``,
  ``lr``, ``seconds``, ...) at step = epoch, missing values (no validation split, an
  unscored epoch) left out as in TensorBoard; at the end, the numbers of summary.json
  (``final.test_acc``, ``best_by_val.test_acc``, ``wall_seconds``, ...) at step = epochs done;
- artifacts at the end: ``report/`` (report.md, report.html, model_card.md, diagnose/, as
  far as the run wrote them), ``run/`` (config.yaml, metrics.csv, summary.json) and
  ``model/last.pt`` (the checkpoint);
- tags: the run folder, the classlab status; the MLflow status is FINISHED, FAILED or
  KILLED (interrupted).

Where: ``log.mlflow_uri`` (a tracking server, ``http://host:5000``, or any URI MLflow
takes), else a local store that needs no server in ``mlruns/`` next to the run folders (the
``--out`` folder): ``mlruns/mlflow.db`` (SQLite) with the artifacts in
``mlruns/artifacts/``. (MLflow 3 refuses its plain-folder file store unless
MLFLOW_ALLOW_FILE_STORE is set; SQLite is what it recommends instead.) View it with
``mlflow ui --backend-store-uri sqlite:///runs/mlruns/mlflow.db``.

``<run>/mlflow.json`` keeps the store and the MLflow run's id, so a resumed run continues the
same MLflow run; ``<grid>/mlflow.json`` keeps the grid's run, which its points name as their
parent (``mlflow.parentRunId``) wherever they run (in process, child processes, Ray).

A tracking call that fails (the server gone, a full disk) prints one warning and turns MLflow
logging off for the rest of that run: training goes on, and the run folder holds everything.
While classlab calls MLflow, HTTP retries are cut to 2 (MLflow's default of 7 retries with
backoff waits minutes on a server that is gone), unless the environment sets them.

The ``mlflow`` package is optional (``pip install 'classlab[mlflow]'``): :func:`check_config`
raises one line naming it, before a run folder is created (:mod:`classlab.run.checks`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from classlab import config
from classlab.config import Config, ConfigError
from classlab.rundir import GridFiles, RunFiles, write_json
from classlab.rundir.files import read_json_object

MISSING = "log.mlflow=true needs the mlflow package: pip install 'classlab[mlflow]'"
RECORD = "mlflow.json"  # in a run folder and in a grid folder
STORE = "mlruns"  # the default store's folder, next to the run folders
PARAM_CHARS = 6000  # MLflow's longest param value
# Used only while classlab calls MLflow, and only where the environment does not set them.
_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_BAD_NAME = re.compile(r"[^A-Za-z0-9_\-. /:]")  # what MLflow refuses in metric names
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def check_available() -> None:
    """Raise ConfigError(:data:`MISSING`) unless the mlflow package imports here."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING) from None


def check_config(cfg: Config) -> None:
    """:func:`check_available` when ``cfg.log.mlflow`` is on; nothing otherwise."""
    if cfg.log.mlflow:
        check_available()


def store(cfg: Config, folder: Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment) for runs kept in ``folder``:
    ``log.mlflow_uri`` as given (the server decides where artifacts go), else the SQLite
    store in ``folder/mlruns/``."""
    if cfg.log.mlflow_uri:
        return cfg.log.mlflow_uri, None
    root = (Path(folder) / STORE).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def _tracker(cfg: Config, folder: Path) -> Tracker:
    """A tracker for runs kept in ``folder`` (the default store's folder made)."""
    uri, location = store(cfg, folder)
    if location is not None:
        (Path(folder) / STORE).mkdir(parents=True, exist_ok=True)
    return Tracker(uri, cfg.log.mlflow_experiment, location)


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in _QUICK_HTTP}
    for k, v in _QUICK_HTTP.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def metric_values(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) dict, keyed ``a.b`` (booleans and text left out;
    characters MLflow refuses in a metric name become ``_``)."""
    out: dict[str, float] = {}
    for key, v in values.items():
        name = _BAD_NAME.sub("_", f"{prefix}{key}")
        if isinstance(v, dict):
            out.update(metric_values(v, f"{name}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def flat_params(cfg: Config) -> dict[str, str]:
    """The config as MLflow params: one per leaf key, lists and mappings as JSON."""
    def text(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v)
    return {key: text(value)[:PARAM_CHARS] for key, value, _ in config.walk(cfg)}


class Tracker:
    """One MLflow run, written through ``MlflowClient`` (no fluent "active run", so a
    notebook's own ``mlflow.start_run`` is left alone). Every call goes through
    :meth:`call`: the first failure prints one warning and turns the tracker off."""

    def __init__(self, uri: str, experiment: str, location: str | None = None) -> None:
        self.uri, self.experiment, self.location = uri, experiment, location
        self.on, self.client = True, None
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)``, or None once tracking is off; a failure turns it off."""
        if not self.on:
            return None
        try:
            with _quick_http():
                return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - whatever MLflow or the network raises
            self.on = False
            print(f"warning: MLflow {what} failed ({_first_line(e)}); MLflow logging is off "
                  "for the rest of this run, training goes on (the run folder has "
                  "everything)", file=sys.stderr, flush=True)
            return None

    def open(self, name: str, run_id: str | None = None, parent: dict | None = None,
             tags: dict[str, str] | None = None) -> bool:
        """Continue MLflow run ``run_id`` when the store still has it, else create one
        (nested under ``parent``: a grid's record). True when a new run was created."""
        found = self.call(f"connecting to {self.uri}", self._open, name, run_id, parent,
                          tags or {})
        return bool(found) and found == "new"

    def _open(self, name: str, run_id: str | None, parent: dict | None,
              tags: dict[str, str]) -> str:
        from mlflow import MlflowClient

        # The SQLite store says "Creating initial MLflow database tables..." on first use.
        for quiet in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(quiet).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id is not None and self._exists(run_id):
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return "continued"
        self.experiment_id = parent["experiment_id"] if parent else self._experiment_id()
        if parent:
            tags = {**tags, "mlflow.parentRunId": parent["run_id"]}
        self.run_id = self.client.create_run(self.experiment_id, run_name=name,
                                             tags=tags).info.run_id
        return "new"

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        self.experiment_id = run.info.experiment_id
        return True

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment,
                                                 artifact_location=self.location)
        except MlflowException:  # created meanwhile by another process of the same grid
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def record(self) -> dict:
        return {"uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    def params(self, values: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.call("logging params", lambda: self.client.log_batch(
            self.run_id, params=[Param(k, v) for k, v in values.items()]))

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.call("logging metrics", lambda: self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()]))

    def artifacts(self, items: list[tuple[Path, str]]) -> None:
        """Upload each existing file or folder ``path`` under ``artifact_path``."""
        def upload() -> None:
            for path, where in items:
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), f"{where}/{path.name}")
                elif path.is_file():
                    self.client.log_artifact(self.run_id, str(path), where)
        self.call("uploading artifacts", upload)

    def tags(self, values: dict[str, str]) -> None:
        self.call("setting tags", lambda: [self.client.set_tag(self.run_id, k, v)
                                           for k, v in values.items()])

    def end(self, status: str) -> None:
        self.call("ending the run", lambda: self.client.set_terminated(self.run_id, status))


# --------------------------------------------------------------------------- one run


def _grid_record(run_dir: Path) -> dict | None:
    """The grid's record when ``run_dir`` is a point of a grid folder that has one."""
    gdir = run_dir.parent
    if not GridFiles(gdir).grid.is_file():
        return None
    return read_json_object(gdir / RECORD)


def _store_folder(run_dir: Path) -> Path:
    """Where the default store goes: the folder holding the run folder (``--out``), or the
    grid folder's parent for a grid point."""
    gdir = run_dir.parent
    return gdir.parent if GridFiles(gdir).grid.is_file() else gdir


class RunTracker:
    """The run flow's MLflow logger: :meth:`epoch` after each epoch, :meth:`finish` at the
    end (after the report), then :meth:`end` (the run's MLflow status)."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg, self.dir = cfg, Path(run_dir)
        grid = _grid_record(self.dir)
        self.tracker = Tracker(grid["uri"], cfg.log.mlflow_experiment) if grid else \
            _tracker(cfg, _store_folder(self.dir))
        uri = self.tracker.uri
        mine = read_json_object(self.dir / RECORD) or {}
        old = mine.get("run_id") if mine.get("uri") == uri else None
        if self.tracker.open(cfg.name, old, grid, {"classlab.run_dir": str(self.dir.resolve())}):
            self.tracker.params(flat_params(cfg))
        if self.tracker.on:
            write_json(self.dir / RECORD, self.tracker.record())

    def epoch(self, row: dict) -> None:
        values = metric_values({k: v for k, v in row.items() if k != "epoch"})
        self.tracker.metrics(values, step=int(row["epoch"]))

    def finish(self, summary: dict) -> None:
        f = RunFiles(self.dir)
        numbers = metric_values({k: v for k, v in summary.items() if k != "versions"})
        self.tracker.metrics(numbers, step=int(summary.get("epochs_done") or 0))
        self.tracker.tags({"classlab.status": str(summary.get("status"))})
        self.tracker.artifacts([
            (f.report_md, "report"), (f.report_html, "report"), (f.model_card, "report"),
            (f.diagnose, "report"), (f.config, "run"), (f.metrics, "run"),
            (f.summary, "run"), (f.checkpoint, "model")])

    def end(self, status: str) -> None:
        self.tracker.end(status)


@contextlib.contextmanager
def run_tracker(cfg: Config, run_dir: Path) -> Iterator[RunTracker]:
    """The MLflow run of one classlab run, ended FINISHED, FAILED (an error) or KILLED
    (Ctrl-C, SIGTERM) as the block ends."""
    tracker = RunTracker(cfg, run_dir)
    status = "FINISHED"
    try:
        yield tracker
    except KeyboardInterrupt:  # RunInterrupted too
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        tracker.end(status)


# --------------------------------------------------------------------------- a grid


class GridTracker:
    """The grid's own MLflow run, the parent of its points' runs (``<grid>/mlflow.json``)."""

    def __init__(self, cfg: Config, gdir: Path, name: str, params: dict[str, Any]) -> None:
        self.dir = Path(gdir)
        self.tracker = _tracker(cfg, self.dir.parent)
        self.status = "FINISHED"
        uri = self.tracker.uri
        mine = read_json_object(self.dir / RECORD) or {}
        old = mine.get("run_id") if mine.get("uri") == uri else None
        if self.tracker.open(name, old, None, {"classlab.grid_dir": str(self.dir.resolve())}):
            self.tracker.params({k: (v if isinstance(v, str) else json.dumps(v))[:PARAM_CHARS]
                                 for k, v in params.items()})
        if self.tracker.on:
            write_json(self.dir / RECORD, self.tracker.record())
        else:  # points must not name a parent this grid could not create
            (self.dir / RECORD).unlink(missing_ok=True)

    def finish(self, table: Path | None, failed: list[str]) -> None:
        """The results table (results.md, results.csv) as artifacts; any failed point makes
        the grid's run FAILED."""
        if table is not None:
            self.tracker.artifacts([(table, "results"), (table.with_suffix(".csv"), "results")])
        self.status = "FAILED" if failed else "FINISHED"


@contextlib.contextmanager
def grid_run(cfgs: list[Config], gdir: Path, name: str,
             params: dict[str, Any]) -> Iterator[GridTracker | None]:
    """The grid's MLflow run while its points run, when they log to MLflow (the first such
    point's log.mlflow_uri and experiment), else None; ended FINISHED, FAILED (a failed
    point, an error) or KILLED (Ctrl-C, SIGTERM)."""
    cfg = next((c for c in cfgs if c.log.mlflow), None)
    if cfg is None:
        yield None
        return
    grid = GridTracker(cfg, gdir, name, params)
    try:
        yield grid
    except KeyboardInterrupt:
        grid.status = "KILLED"
        raise
    except BaseException:
        grid.status = "FAILED"
        raise
    finally:
        grid.tracker.end(grid.status)

"""``classlab grid TUNED_GRID --engine ray``: a tuned grid's trials on Ray Tune, with Optuna
as its search algorithm (``OptunaSearch``, the same sampler as the embedded engine) and Ray's
schedulers as pruners (asha: ``ASHAScheduler``; median: ``MedianStoppingRule``), the same
``tune:`` syntax and the same results layout as :mod:`classlab.grid.tune`:
``tune/<point>/trial-<ray trial id>/`` run folders and ``tune/<point>/tuning.json``
(its trials numbered in the order they started). The final runs then go to Ray as the points
of any grid (:mod:`classlab.grid.ray_engine`).

One ``Tuner`` per point, one after another; its trials run at once as far as the cluster's
CPUs allow (each asks for ``train.threads`` CPUs, 1 when 0, and a GPU on CUDA). A trial is the
one run flow on its run folder in the grid folder, which every node must see (a shared file
system: unlike a grid's points, trials are not copied back). When the scheduler stops a trial
after an epoch, its folder is marked finished, pruned, as the embedded engine marks it.

Restarts: Ray Tune keeps its experiment state in ``tune/ray/<point>/``; a rerun restores an
unfinished one (``Tuner.restore``: finished trials are kept, unfinished ones restart and their
run folders resume from their checkpoints) and skips a finished one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from classlab.config import ConfigError
from classlab.grid.folder import prepare_grid_file
from classlab.grid.ray_engine import connect, import_ray
from classlab.grid.spec import Grid, Point
from classlab.grid.tune import (
    baseline_params,
    distributions,
    final_grid,
    import_optuna,
    make_sampler,
    mark_pruned,
    trial_config,
    tuning_record,
)
from classlab.grid.tunespec import TuneSpec
from classlab.rundir import GridFiles, RunFiles, atomic_write_text, write_json
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import read_summary

TUNE_HINT = ("--engine ray with a tune: section needs Ray Tune: pip install 'ray[tune]' "
             "'classlab[tune]'")


def import_ray_tune() -> Any:
    try:
        from ray import tune
    except ImportError:
        raise ConfigError(TUNE_HINT) from None
    return tune


# --------------------------------------------------------------------------- on the worker


def ray_trial(params: dict, *, gdir: str, point: Point, spec: TuneSpec,
              data_dir: str | None) -> None:
    """One trial, in a Ray Tune worker: its run folder (named by the Ray trial id, so a
    restored trial finds it again), trained or resumed by the one run flow, its metric
    reported after every epoch (the scheduler may stop the trial there)."""
    from ray import tune

    from classlab import config
    from classlab.run.flow import train_run

    files = RunFiles(GridFiles(gdir).tune / point.group
                     / f"trial-{tune.get_context().get_trial_id()}")
    files.root.mkdir(parents=True, exist_ok=True)
    if not files.config.is_file():
        atomic_write_text(files.config, config.dump(trial_config(point, spec, params, 0)))
    metric, epochs = spec.metric, config.load(files.config).train.epochs

    def report(row: dict) -> None:
        tune.report({metric: float(row[metric]), "epoch": int(row["epoch"])})

    def on_epoch(row: dict) -> None:
        # the last epoch is reported once the run has finished: the scheduler ends the
        # trial's process at its last report, which must not cut the run's final writes
        if row["epoch"] < epochs:
            report(row)

    for row in read_metrics(files.metrics) if files.metrics.is_file() else []:
        on_epoch(row)  # epochs a killed worker trained: the scheduler sees them again
    summary = read_summary(files.summary) or {}
    if summary.get("status") != "finished":
        summary = train_run(run_dir=files.root, data_root=Path(data_dir) if data_dir else None,
                            diagnose_errors="warn", on_epoch=on_epoch).summary
    rows = read_metrics(files.metrics)
    if rows and rows[-1]["epoch"] == epochs:
        report(rows[-1])


# --------------------------------------------------------------------------- the driver


def _scheduler(spec: TuneSpec, epochs: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if spec.pruner == "asha":
        return ASHAScheduler(time_attr="training_iteration", grace_period=1,
                             reduction_factor=3, max_t=epochs)
    if spec.pruner == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=1,
                                  min_samples_required=2)
    return FIFOScheduler()


def _tuner(point: Point, spec: TuneSpec, gdir: Path, data_dir: Path | None, ray: Any) -> Any:
    """The point's Tuner: restored when a run of it was interrupted, else a new one."""
    tune = import_ray_tune()
    from ray.tune.search.optuna import OptunaSearch

    epochs = trial_config(point, spec, baseline_params(point, spec), 0).train.epochs
    trainable = tune.with_parameters(ray_trial, gdir=str(gdir.resolve()), point=point,
                                     spec=spec, data_dir=str(data_dir) if data_dir else None)
    cpus = point.cfg.train.threads or 1
    gpu = point.cfg.train.device.startswith("cuda") or (
        point.cfg.train.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    trainable = tune.with_resources(trainable, {"cpu": cpus, "gpu": 1 if gpu else 0})
    store = (GridFiles(gdir).tune / "ray").resolve()
    if tune.Tuner.can_restore(store / point.group):
        return tune.Tuner.restore(str(store / point.group), trainable,
                                  resume_unfinished=True, resume_errored=True)
    search = OptunaSearch(space=distributions(spec), metric=spec.metric,
                          mode="max" if spec.direction == "maximize" else "min",
                          sampler=make_sampler(spec, 0),
                          points_to_evaluate=[baseline_params(point, spec)]
                          if spec.baseline else None)
    return tune.Tuner(trainable, tune_config=tune.TuneConfig(
        search_alg=search, scheduler=_scheduler(spec, epochs), num_samples=spec.trials,
        metric=spec.metric, mode="max" if spec.direction == "maximize" else "min"),
        run_config=tune.RunConfig(storage_path=str(store), name=point.group, verbose=0))


def _trials(results: Any, point: Point, spec: TuneSpec, gdir: Path) -> list[dict]:
    """The tuning record's trials from Ray's results, numbered in the order they started;
    a trial the scheduler stopped before its last epoch is marked pruned."""
    epochs = trial_config(point, spec, baseline_params(point, spec), 0).train.epochs
    rows = []
    for r in results:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name.split("_")[-3]
        files = RunFiles(GridFiles(gdir).tune / point.group / f"trial-{trial_id}")
        curve = {} if r.metrics_dataframe is None else {
            str(int(e)): float(v) for e, v in zip(r.metrics_dataframe["epoch"],
                                                  r.metrics_dataframe[spec.metric])}
        done = len(curve)
        state = "FAIL" if r.error is not None else "COMPLETE" if done >= epochs else "PRUNED"
        if state == "PRUNED":
            mark_pruned(files.root, spec.pruner, spec.metric)
        summary = read_summary(files.summary) or {}
        started = files.config.stat().st_mtime if files.config.is_file() else float("inf")
        rows.append((started, {"folder": files.root.name, "state": state,
                               "params": dict(r.config), "curve": curve,
                               "value": curve.get(str(done)) if state == "COMPLETE" else None,
                               "epochs": summary.get("epochs_done") or done,
                               "seconds": summary.get("wall_seconds")}))
    return [{"number": i, **row} for i, (_, row) in enumerate(sorted(rows, key=lambda x: x[0]))]


def tune_on_ray(grid: Grid, gdir: Path, data_dir: Path | None, address: str | None) -> Grid:
    """Tune every point on Ray Tune, write each point's tuning.json, and return the grid of
    final runs (see :func:`classlab.grid.tune.final_grid`)."""
    import_optuna()
    ray = import_ray()
    import_ray_tune()
    prepare_grid_file(grid, gdir)
    connect(ray, address)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    records = {}
    firsts: dict[str, Point] = {}
    for p in grid.points:
        firsts.setdefault(p.group, p)
    try:
        for point in firsts.values():
            print(f"[{point.group}] tuning on Ray Tune: {grid.tune.trials} trials", flush=True)
            results = _tuner(point, grid.tune, gdir, data_dir, ray).fit()
            record = tuning_record(grid.tune, point.group,
                                   _trials(results, point, grid.tune, gdir))
            write_json(GridFiles(gdir).tuning(point.group), record)
            records[point.group] = record
            best = record["best"]
            print(f"[{point.group}] {record['finished']} trials ({record['pruned']} pruned, "
                  f"{record['failed']} failed); best {best and best['params']}", flush=True)
    finally:
        ray.shutdown()
    return final_grid(grid, records)

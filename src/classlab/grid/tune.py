"""Tuned grids, the embedded engine: every point of a grid is tuned on the same budget by an
Optuna study (its sampler and pruner), then retrained with the best values found, once per
seed, on the full recipe, and tabulated as any grid.

Layout (:class:`~classlab.rundir.GridFiles`)::

    <grid>/grid.yaml                   the grid, its tune: section included
    <grid>/tune/study.journal          Optuna's JournalStorage: one study per point
    <grid>/tune/<point>/trial-NNN/     one ordinary, resumable run folder per trial
    <grid>/tune/<point>/tuning.json    the point's trials, best values and compute
    <grid>/<point>[-seed<k>]/          the final runs, with the tuned values

Each trial is the point's config (its first seed) with ``tune.trial`` (the budget: epochs,
data subset) and the sampled values applied, trained by the one run flow
(:func:`classlab.run.flow.train_run`); after every epoch its validation metric is reported to
the study, and when the pruner says so the run stops there, finished, with
``stopped_early: {"by": "pruner", ...}`` in its summary.json, and the trial is recorded as
pruned. A trial whose loss turns NaN (:class:`~classlab.engine.TrainingError`) is recorded as
failed; it counts against the budget like the others and is not retried.

Trials run in this process (``--jobs 1``) or in up to N child processes
(``python -m classlab.grid run-trial TRIAL_DIR``) that share out the cores. A rerun of the
same command continues each study: finished trials are never run again; a trial that was
running when the driver died resumes from its run folder's checkpoint (same trial, same
values); a child that dies is retried (``RETRIES`` times, then recorded as failed).
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classlab import config, fmt
from classlab.config import Config, ConfigError
from classlab.engine import TrainingError
from classlab.grid.folder import error_line, prepare_grid_file, record_failure
from classlab.grid.procs import child_env, cores, gpu_ids
from classlab.grid.spec import Grid, Point
from classlab.grid.tunespec import TuneSpec
from classlab.rundir import GridFiles, RunFiles, atomic_write_text, read_json, write_json
from classlab.rundir.lock import RunLocked, hold, holder
from classlab.rundir.metrics import read_metrics
from classlab.rundir.summary import is_finished, read_summary, stopped_early

INSTALL_HINT = ("a grid with a tune: section needs the optuna package: "
                "pip install 'classlab[tune]'")
RETRIES = 2  # re-runs of a trial whose child process died without recording it
ASHA_REDUCTION = 3  # successive halving keeps the best third at each rung (epochs 1, 3, 9..)
MEDIAN_STARTUP = 2  # the median pruner prunes nothing before this many trials finished
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def import_optuna() -> Any:
    """The optuna module (quiet), or a one-line ConfigError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
    return optuna


def open_storage(path: Path) -> Any:
    """Optuna's JournalStorage in the file ``path`` (safe for several processes)."""
    optuna = import_optuna()
    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileStorage as JournalFileBackend
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def make_pruner(name: str) -> Any:
    """asha: successive halving from epoch 1, keeping the best 1/3 at each rung (a trial
    among the first ones must beat all before it); median: prune a trial whose value is
    worse than the median of the earlier trials at the same epoch; none."""
    optuna = import_optuna()
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1,
                                                      reduction_factor=ASHA_REDUCTION)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP)
    return optuna.pruners.NopPruner()


def make_sampler(spec: TuneSpec, asked: int) -> Any:
    """The sampler for the trial after ``asked`` earlier ones, seeded from (tune.seed,
    asked): a driver restarted mid-study asks what an unbroken one would have asked."""
    optuna = import_optuna()
    seed = spec.seed * 1_000_003 + asked
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "qmc":  # a low-discrepancy sequence; its position is the trial count
        return optuna.samplers.QMCSampler(seed=spec.seed, scramble=True)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, spec.trials // 3))


def distributions(spec: TuneSpec) -> dict[str, Any]:
    d = import_optuna().distributions
    out = {}
    for key, p in spec.space.items():
        if p.kind == "choice":
            out[key] = d.CategoricalDistribution(p.choices)
        elif p.kind == "int":
            out[key] = d.IntDistribution(p.low, p.high)
        else:
            out[key] = d.FloatDistribution(p.low, p.high, log=p.kind == "log_uniform")
    return out


# --------------------------------------------------------------------------- one point


def trial_config(point: Point, spec: TuneSpec, params: dict, number: int) -> Config:
    """What trial ``number`` of ``point`` trains: the point's config with the trial budget
    (tune.trial) and the sampled values, without diagnosis and MLflow (the final runs have
    them)."""
    raw = config.to_dict(point.cfg)
    raw["name"] = f"{point.group}-trial{number:03d}"
    for key, value in [*spec.trial.items(), *params.items()]:
        config.set_key(raw, key, value)
    config.set_key(raw, "diagnose.enabled", False)
    config.set_key(raw, "log.mlflow", False)  # MLflow gets the final runs, nested in the grid's
    return config.from_dict(raw)


def tuned_config(point: Point, params: dict) -> Config:
    """A final run's config: the point's own (full recipe, its seed) with the tuned values."""
    raw = config.to_dict(point.cfg)
    for key, value in params.items():
        config.set_key(raw, key, value)
    return config.from_dict(raw)


def baseline_params(point: Point, spec: TuneSpec) -> dict:
    """The point's own values of the tuned keys (trial 0 when tune.baseline)."""
    flat = config.to_dict(point.cfg)
    out = {}
    for key in spec.space:
        node: Any = flat
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


@dataclass
class PointTuning:
    """One point's study, as the driver sees it."""

    point: Point  # the point's first run: trials start from its config
    study: Any
    storage: Any
    spec: TuneSpec
    gdir: Path
    in_flight: set[int] = field(default_factory=set)  # trial numbers running in this driver
    tries: dict[int, int] = field(default_factory=dict)  # child starts per trial number

    @property
    def group(self) -> str:
        return self.point.group

    def trials(self) -> list:
        """The trials started (enqueued ones that no ask took yet are not)."""
        return [t for t in self.study.get_trials(deepcopy=False) if t.state.name != "WAITING"]

    def done(self) -> bool:
        trials = self.trials()
        return len(trials) >= self.spec.trials and all(t.state.name in FINISHED
                                                        for t in trials)

    def folder(self, number: int) -> RunFiles:
        return GridFiles(self.gdir).trial(self.group, number)

    def next_trial(self) -> int | None:
        """The trial to run next: a stale running one first (its driver died), else a new
        one while the budget lasts; None when there is none to start now."""
        for t in self.trials():
            if t.state.name == "RUNNING" and t.number not in self.in_flight \
                    and holder(self.folder(t.number).root) is None:
                self._write_folder(t.number, t.params)
                return t.number
        if len(self.trials()) >= self.spec.trials:
            return None
        asked = len(self.trials())
        if not self.study.get_trials(deepcopy=False) and self.spec.baseline:
            self.study.enqueue_trial(baseline_params(self.point, self.spec))
        self.study.sampler = make_sampler(self.spec, asked)
        trial = self.study.ask(distributions(self.spec))
        self._write_folder(trial.number, trial.params)
        return trial.number

    def _write_folder(self, number: int, params: dict) -> None:
        files = self.folder(number)
        files.root.mkdir(parents=True, exist_ok=True)
        if not files.config.is_file():
            cfg = trial_config(self.point, self.spec, params, number)
            atomic_write_text(files.config, config.dump(cfg))
        if not files.trial.is_file():
            write_json(files.trial, {"study": self.group, "number": number,
                                     "metric": self.spec.metric, "pruner": self.spec.pruner,
                                     "params": params})


def open_tunings(grid: Grid, gdir: Path) -> list[PointTuning]:
    """One study per point (its first seed's run stands for it), created or continued."""
    optuna = import_optuna()
    storage = open_storage(GridFiles(gdir).study)
    firsts: dict[str, Point] = {}
    for p in grid.points:
        firsts.setdefault(p.group, p)
    out = []
    for point in firsts.values():
        study = optuna.create_study(storage=storage, study_name=point.group,
                                    direction=grid.tune.direction, load_if_exists=True,
                                    pruner=make_pruner(grid.tune.pruner))
        out.append(PointTuning(point, study, storage, grid.tune, gdir))
    return out


# --------------------------------------------------------------------------- one trial


def run_trial(trial_dir: str | Path, data_root: Path | None = None, wait: float = 0.0) -> str:
    """Train (or resume, or only record) the prepared trial folder ``trial_dir`` and record
    its outcome in the study: "COMPLETE", "PRUNED" or "FAIL". The trial's lock is held
    throughout; another process holding it raises :class:`RunLocked`. An error other than
    a diverged loss leaves the trial running in the study (a rerun resumes it)."""
    from classlab.run.flow import train_run

    optuna = import_optuna()
    files = RunFiles(trial_dir)
    info = read_json(files.trial)
    # tune/<point>/trial-NNN -> the grid folder's study (wherever the folder has moved to)
    storage = open_storage(GridFiles(files.root.resolve().parents[2]).study)
    study = optuna.load_study(study_name=info["study"], storage=storage,
                              pruner=make_pruner(info["pruner"]))
    trial_id = _trial_id(storage, info)
    epochs = config.load(files.config).train.epochs
    with hold(files.root, wait=wait):
        frozen = storage.get_trial(trial_id)
        if frozen.state.name in FINISHED:
            return frozen.state.name
        trial = optuna.trial.Trial(study, trial_id)
        _report_rows(trial, frozen, files, info["metric"])
        summary = read_summary(files.summary)
        done = (summary or {}).get("epochs_done") or 0
        if not is_finished(summary) and 0 < done < epochs and trial.should_prune():
            # killed between the pruner's answer and the folder's last write
            mark_pruned(files.root, info["pruner"], info["metric"])
            summary = read_summary(files.summary)
        if not is_finished(summary):
            try:
                summary = train_run(run_dir=files.root, data_root=data_root,
                                    diagnose_errors="warn",
                                    on_epoch=_pruning_hook(trial, info, epochs)).summary
            except TrainingError as e:  # diverged: a result of its values, not retried
                record_failure(files.root, error_line(e))
                study.tell(info["number"], state=optuna.trial.TrialState.FAIL,
                           skip_if_finished=True)
                return "FAIL"
        return _tell(study, info, summary)


def _trial_id(storage: Any, info: dict) -> int:
    study_id = storage.get_study_id_from_name(info["study"])
    return storage.get_trial_id_from_study_id_trial_number(study_id, info["number"])


def _report_rows(trial: Any, frozen: Any, files: RunFiles, metric: str) -> None:
    """Epochs a killed process trained but never reported (resumed trials)."""
    if not files.metrics.is_file():
        return
    for row in read_metrics(files.metrics):
        if row["epoch"] not in frozen.intermediate_values and not fmt.missing(row[metric]):
            trial.report(float(row[metric]), int(row["epoch"]))


def _pruning_hook(trial: Any, info: dict, epochs: int):
    """``on_epoch`` of a trial: report the epoch's metric; a dict (stop here) when the
    pruner prunes (never after the last epoch: the trial is complete then)."""
    metric = info["metric"]

    def on_epoch(row: dict) -> dict | None:
        value = float(row[metric])
        trial.report(value, int(row["epoch"]))
        if row["epoch"] < epochs and trial.should_prune():
            return {"epoch": int(row["epoch"]), "by": "pruner", "pruner": info["pruner"],
                    "metric": metric, "value": value}
        return None

    return on_epoch


def _tell(study: Any, info: dict, summary: dict) -> str:
    """Record a trained trial: pruned, or complete with its last epoch's metric."""
    optuna = import_optuna()
    state = optuna.trial.TrialState
    early = stopped_early(summary)
    if early is not None and early.get("by") == "pruner":
        return study.tell(info["number"], state=state.PRUNED, skip_if_finished=True).state.name
    value = (summary.get("final") or {}).get(info["metric"])
    if fmt.missing(value) or not math.isfinite(float(value)):
        return study.tell(info["number"], state=state.FAIL, skip_if_finished=True).state.name
    return study.tell(info["number"], float(value), skip_if_finished=True).state.name


# --------------------------------------------------------------------------- the driver


def tune_grid(grid: Grid, gdir: Path, data_dir: Path | None = None, jobs: int = 1) -> Grid:
    """Tune every point of ``grid`` (continuing its studies in ``gdir``), write each point's
    tuning.json, and return the grid whose points carry the tuned values (the final runs;
    a point none of whose trials completed is left out, and its tuning.json says so)."""
    import_optuna()
    prepare_grid_file(grid, gdir)
    tunings = open_tunings(grid, gdir)
    spec = grid.tune
    print(f"Tuning {len(tunings)} point{'s' * (len(tunings) != 1)}: {spec.trials} trials each "
          f"({', '.join(f'{k}={fmt.value(v)}' for k, v in spec.trial.items()) or 'full recipe'}"
          f"), {spec.metric}, sampler {spec.sampler}, pruner {spec.pruner}; study "
          f"{GridFiles(gdir).study}", flush=True)
    t0 = time.time()
    if jobs == 1:
        _tune_serial(tunings, data_dir)
    else:
        _tune_parallel(tunings, data_dir, jobs)
    records = {t.group: write_tuning(t) for t in tunings}
    print(f"Tuning done in {fmt.duration(time.time() - t0)}", flush=True)
    return final_grid(grid, records)


def final_grid(grid: Grid, records: dict[str, dict]) -> Grid:
    """The grid's points with their point's best values (the final runs)."""
    points = []
    for p in grid.points:
        best = (records.get(p.group) or {}).get("best")
        if best is None:
            print(f"{p.group}: no trial completed (all pruned or failed); its final runs are "
                  "left out", flush=True)
            continue
        points.append(Point(p.name, p.values, tuned_config(p, best["params"]), p.group, p.seed))
    return Grid(grid.name, grid.source, grid.base, grid.axes, grid.overrides, points,
                grid.seeds, grid.tune)


def _say(t: PointTuning, number: int, state: str, seconds: float) -> None:
    frozen = next(x for x in t.trials() if x.number == number)
    params = " ".join(f"{k}={fmt.number(v)}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in frozen.params.items())
    last = max(frozen.intermediate_values) if frozen.intermediate_values else 0
    what = {"COMPLETE": f"{t.spec.metric} {fmt.number(frozen.value)}",
            "PRUNED": f"pruned after epoch {last}",
            "FAIL": "failed"}.get(state, state.lower())
    print(f"[{t.group}] trial {number}: {params}: {what} ({fmt.duration(seconds)})", flush=True)


def _tune_serial(tunings: list[PointTuning], data_dir: Path | None) -> None:
    """In this process, one point after another; a trial another process holds is skipped
    (that process records it) and waited for at the end."""
    for t in tunings:
        while not t.done():
            number = t.next_trial()
            if number is None:  # the rest run in another process: wait for it
                time.sleep(1.0)
                continue
            t.in_flight.add(number)
            t0 = time.time()
            try:  # its output goes to the trial's train.log, as in a child process
                with open(t.folder(number).train_log, "a") as log, \
                        contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    state = run_trial(t.folder(number).root, data_dir)
            except RunLocked:  # another driver runs it and records it
                t.in_flight.discard(number)
                time.sleep(1.0)
                continue
            t.in_flight.discard(number)
            _say(t, number, state, time.time() - t0)
            write_tuning(t)


@dataclass
class _Child:
    tuning: PointTuning
    number: int
    slot: int
    proc: subprocess.Popen
    log: Any
    t0: float


def trial_command(trial_dir: Path, data_dir: Path | None, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "classlab.grid", "run-trial", str(Path(trial_dir).resolve()),
           "--threads", str(threads)]
    if data_dir is not None:
        cmd += ["--data-dir", str(Path(data_dir).resolve())]
    return cmd


def _start_child(t: PointTuning, number: int, slot: int, data_dir: Path | None,
                 threads: int, gpus: list[str]) -> _Child:
    files = t.folder(number)
    log = open(files.train_log, "a")
    log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} trial {number} of {t.group}\n")
    log.flush()
    env = child_env(slot, threads, gpus, t.point.cfg.train.device)
    proc = subprocess.Popen(trial_command(files.root, data_dir, threads), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    t.in_flight.add(number)
    t.tries[number] = t.tries.get(number, 0) + 1
    return _Child(t, number, slot, proc, log, time.time())


def _next_any(tunings: list[PointTuning], turn: int) -> tuple[PointTuning, int] | None:
    """A trial to start, taking the points in turn (so all studies advance together)."""
    for k in range(len(tunings)):
        t = tunings[(turn + k) % len(tunings)]
        number = t.next_trial()
        if number is not None:
            return t, number
    return None


def _tune_parallel(tunings: list[PointTuning], data_dir: Path | None, jobs: int) -> None:
    """Up to ``jobs`` trials at once, each in a child process with its output in the trial's
    train.log; the cores are shared out so the children do not oversubscribe."""
    threads, gpus = max(1, cores() // jobs), gpu_ids()
    running: list[_Child] = []
    free, turn = list(range(jobs)), 0
    try:
        while True:
            while free and (pick := _next_any(tunings, turn)) is not None:
                turn += 1
                running.append(_start_child(*pick, free.pop(0), data_dir, threads, gpus))
            if not running:
                if all(t.done() for t in tunings):
                    return
                time.sleep(1.0)  # trials held by another driver
                continue
            time.sleep(0.2)
            for child in [c for c in running if c.proc.poll() is not None]:
                running.remove(child)
                free.append(child.slot)
                _child_done(child)
    except KeyboardInterrupt:
        for child in running:
            child.proc.terminate()
        for child in running:
            child.proc.wait()
            child.log.close()
        raise


def _child_done(child: _Child) -> None:
    """Record what a finished child left: its trial's state, or a retry / failure when it
    died without recording one."""
    t, number = child.tuning, child.number
    child.log.close()
    t.in_flight.discard(number)
    state = next(x for x in t.trials() if x.number == number).state.name
    if state not in FINISHED and t.tries.get(number, 0) > RETRIES:
        optuna = import_optuna()
        record_failure(t.folder(number).root, f"worker exited with status "
                       f"{child.proc.returncode} (see {t.folder(number).train_log})")
        state = t.study.tell(number, state=optuna.trial.TrialState.FAIL,
                             skip_if_finished=True).state.name
    if state in FINISHED:
        _say(t, number, state, time.time() - child.t0)
        write_tuning(t)
    else:  # next_trial() picks it up again: resumed from its checkpoint
        print(f"[{t.group}] trial {number}: worker exited with status "
              f"{child.proc.returncode}; retrying (log {t.folder(number).train_log})",
              flush=True)


# --------------------------------------------------------------------------- the record


def write_tuning(t: PointTuning) -> dict:
    """``tune/<point>/tuning.json`` of a study run by this engine (see :func:`tuning_record`)."""
    trials = []
    for x in sorted(t.trials(), key=lambda x: x.number):
        summary = read_summary(t.folder(x.number).summary) or {}
        trials.append({"number": x.number, "folder": t.folder(x.number).root.name,
                       "state": x.state.name, "params": x.params,
                       "value": x.value if x.state.name == "COMPLETE" else None,
                       "curve": {str(k): v for k, v in sorted(x.intermediate_values.items())},
                       "epochs": summary.get("epochs_done") or len(x.intermediate_values),
                       "seconds": summary.get("wall_seconds")})
    record = tuning_record(t.spec, t.group, trials)
    write_json(GridFiles(t.gdir).tuning(t.group), record)
    return record


def tuning_record(spec: TuneSpec, group: str, trials: list[dict]) -> dict:
    """A point's tuning record from its trials (each {"number", "folder", "state": COMPLETE |
    PRUNED | FAIL | RUNNING, "params", "value", "curve": {epoch: metric}, "epochs",
    "seconds"}): the counts, the compute (trial-epochs and seconds of the finished trials),
    the best trial and its values, the baseline (trial 0) and which tuned values sit at an
    edge of their range."""
    done = [x for x in trials if x["state"] in FINISHED]
    complete = [x for x in trials if x["state"] == "COMPLETE"]
    pick = max if spec.direction == "maximize" else min
    best = pick(complete, key=lambda x: x["value"]) if complete else None
    return {
        "point": group, "metric": spec.metric, "direction": spec.direction,
        "budget": spec.trials, "trial": spec.trial,
        "space": {k: p.definition() for k, p in spec.space.items()},
        "finished": len(done), "complete": len(complete),
        "pruned": sum(x["state"] == "PRUNED" for x in trials),
        "failed": sum(x["state"] == "FAIL" for x in trials),
        "trial_epochs": sum(x["epochs"] or 0 for x in done),
        "seconds": sum(x["seconds"] or 0.0 for x in done),
        "best": None if best is None else {k: best[k] for k in ("number", "params", "value")},
        "baseline": trials[0] if spec.baseline and trials else None,
        "edges": {} if best is None else {k: e for k, p in spec.space.items()
                                           if (e := p.edge(best["params"].get(k)))},
        "trials": trials,
    }


def mark_pruned(trial_dir: Path, pruner: str, metric: str) -> None:
    """A trial folder whose run a scheduler stopped from outside (Ray Tune's ASHA stops the
    trial's process after an epoch): finished, with ``stopped_early`` saying so, as a trial
    this engine pruned says it."""
    files = RunFiles(trial_dir)
    summary = read_summary(files.summary)
    if summary is None or is_finished(summary) or not summary.get("final"):
        return
    summary.update(status="finished", error=None,
                   stopped_early={"epoch": summary["epochs_done"], "by": "pruner",
                                  "pruner": pruner, "metric": metric,
                                  "value": summary["final"].get(metric)})
    write_json(files.summary, summary)

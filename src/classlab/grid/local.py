"""``classlab grid``: the local engine. Points run one after another in this process
(``--jobs 1``), or in up to N child processes that share out the cores and GPUs; a rerun of
the same command skips finished points and resumes the others.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classlab import fmt
from classlab.config import ConfigError
from classlab.engine.console import console
from classlab.grid.folder import (
    LOCKED_EXIT,
    error_line,
    point_command,
    point_state,
    prepare,
    record_failure,
    run_point,
)
from classlab.grid.procs import child_env, cores, gpu_ids
from classlab.grid.spec import Grid, Point, load_grid
from classlab.grid.table import write_table
from classlab.run.tracking import grid_run
from classlab.rundir import RunFiles
from classlab.rundir.files import is_run_folder
from classlab.rundir.lock import RunLocked, holder
from classlab.rundir.summary import is_finished, read_summary

ENGINES = ("local", "ray")


def main_grid(grid_path: str | Path, overrides: list[str], *, out: Path = Path("runs"),
              data_dir: Path | None = None, jobs: int = 1, print_commands: bool = False,
              grid_dir: Path | None = None, engine: str = "local",
              address: str | None = None) -> int:
    """``classlab grid``: 0 when every point finished, 1 when any failed. ``engine``: local
    (this machine: in process, or ``jobs`` child processes) or ray (a Ray cluster at
    ``address``; None: the one RAY_ADDRESS names, else a new one on this machine)."""
    _check_engine(engine, jobs, address)
    if grid_dir is not None and is_run_folder(grid_dir):
        raise ConfigError(f"--grid-dir {grid_dir}: is a run folder (it holds config.yaml); "
                          "a grid folder holds one run folder per point: give another one")
    grid = load_grid(grid_path, overrides)
    gdir = Path(grid_dir) if grid_dir is not None else Path(out) / grid.name
    if grid.tune is not None:  # tune each point first; the final runs get its best values
        grid = _tuned(grid, gdir, data_dir, jobs, engine, address, print_commands)
    prepare(grid, gdir)
    if print_commands:
        _print_commands(grid, gdir, data_dir)
        return 0
    states = _print_plan(grid, gdir)
    todo = [p for p, st in zip(grid.points, states) if st != "finished"]
    t0 = time.time()
    params = {k: v for k, v in grid.definition().items() if k != "points"}
    # log.mlflow: the grid's MLflow run, which its points' runs name as their parent
    with grid_run([p.cfg for p in grid.points], gdir, grid.name, params) as tracked:
        if engine == "ray":
            from classlab.grid.ray_engine import run_on_ray

            failed = run_on_ray(todo, gdir, data_dir, address) if todo else []
        elif jobs == 1:
            failed = _run_serial(todo, gdir, data_dir)
        else:
            failed = _run_parallel(todo, gdir, data_dir, jobs)
        md = write_table(gdir)
        if tracked is not None:
            tracked.finish(md, failed)
    print(f"\n{md.read_text()}", end="", flush=True)
    print(f"{len(todo) - len(failed)} ran, {len(grid.points) - len(todo)} skipped (finished), "
          f"{len(failed)} failed in {time.time() - t0:.0f} s; table: {md}", flush=True)
    return 1 if failed else 0


def _tuned(grid: Grid, gdir: Path, data_dir: Path | None, jobs: int, engine: str,
           address: str | None, print_commands: bool) -> Grid:
    """A tuned grid's final points, after tuning (classlab.grid.tune)."""
    from classlab.grid.tune import import_optuna, tune_grid

    import_optuna()  # before anything is written: one line naming the extra to install
    if print_commands:
        raise ConfigError("--print-commands: a tuned grid's trials are chosen as earlier ones "
                          "finish, so there is no fixed list of commands; run classlab grid")
    if engine == "ray":
        from classlab.grid.ray_tune import tune_on_ray

        return tune_on_ray(grid, gdir, data_dir, address)
    return tune_grid(grid, gdir, data_dir, jobs)


def _check_engine(engine: str, jobs: int, address: str | None) -> None:
    """Before anything is read or written: the engine exists (and its package is installed)."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine: unknown value {engine!r}; allowed: {', '.join(ENGINES)}")
    if jobs < 1:
        raise ConfigError(f"--jobs: {jobs} is out of range; must be ≥ 1")
    if engine == "ray":
        from classlab.grid.ray_engine import check_reachable, import_ray

        import_ray()
        check_reachable(address)
        if jobs != 1:
            raise ConfigError("--jobs applies to --engine local; Ray schedules the points by "
                              "the CPUs and GPUs each asks for")
    elif address is not None:
        raise ConfigError("--address applies to --engine ray")


def _print_commands(grid: Grid, gdir: Path, data_dir: Path | None) -> None:
    # Comment lines keep the output runnable as a script (bash, or `grep -v '^#' | parallel`).
    print(f"# {len(grid.points)} runs of grid {grid.name} in {gdir.resolve()}")
    for p in grid.points:
        print(shlex.join(point_command(gdir / p.name, data_dir)))
    print(f"# then: classlab table {shlex.quote(str(gdir.resolve()))}")


def _print_plan(grid: Grid, gdir: Path) -> list[str]:
    states = [point_state(gdir / p.name) for p in grid.points]
    values = [" ".join(f"{k}={fmt.value(v)}" for k, v in p.values.items()) for p in grid.points]
    w1, w2 = max(len(p.name) for p in grid.points), max(len(v) for v in values)
    print(f"{len(grid.points)} runs:")
    for p, v, state in zip(grid.points, values, states):
        print(f"  {p.name:<{w1}}  {v:<{w2}}  [{state}]")
    print(f"grid folder: {gdir}", flush=True)
    return states


def _run_serial(points: list[Point], gdir: Path, data_dir: Path | None) -> list[str]:
    """In-process: live progress in this terminal and no interpreter start per point. A hard
    crash (segfault, OOM kill) stops the grid, but a rerun resumes where it stopped. A point
    another process holds (another driver of this grid) is left for last, then waited for
    (it is then finished and skipped, or resumed)."""
    failed, later = [], []
    for i, p in enumerate(points, 1):
        if not _serial_point(p, f"[{i}/{len(points)}]", gdir, data_dir, failed, wait=0.0):
            later.append(p)
    for p in later:
        _serial_point(p, f"[{p.name}]", gdir, data_dir, failed, wait=float("inf"))
    return failed


def _serial_point(p: Point, tag: str, gdir: Path, data_dir: Path | None, failed: list[str],
                  wait: float) -> bool:
    """Run one point in this process; False when another process holds it (not run)."""
    console().point("start", p.name, f"{tag} start {p.name}")
    t0 = time.time()
    try:
        summary = run_point(gdir / p.name, data_dir, wait=wait)
    except RunLocked as e:
        console().point("elsewhere", p.name,
                        f"{tag} {p.name}: running elsewhere ({e}); coming back to it")
        return False
    except Exception as e:
        failed.append(p.name)
        console().point("failed", p.name, f"{tag} {p.name}: FAILED: {error_line(e)}")
        return True
    console().point("end", p.name,
                    f"{tag} {p.name}: {_outcome(summary)} ({time.time() - t0:.0f} s)", summary)
    return True


def _outcome(summary: dict | None) -> str:
    if is_finished(summary):
        return f"finished, test acc {fmt.pct(summary['final']['test_acc'])}"
    if summary and summary.get("status") == "failed":
        return f"FAILED: {summary.get('error')}"
    return "FAILED: stopped without a result"


@dataclass
class _Job:
    point: Point
    slot: int
    proc: subprocess.Popen
    log: Any
    t0: float


def _run_parallel(points: list[Point], gdir: Path, data_dir: Path | None,
                  jobs: int) -> list[str]:
    """Up to ``jobs`` child processes, each training one point with its output in
    ``<point>/train.log``; the cores are shared out so the children do not oversubscribe."""
    threads = max(1, cores() // jobs)
    gpus = gpu_ids()
    pending, running, failed, said = deque(points), [], [], set()
    free = list(range(jobs))
    try:
        while pending or running:
            for p in list(pending):
                if not free:
                    break
                if _held(gdir, p, said):  # another driver trains it now: come back later
                    continue
                pending.remove(p)
                running.append(_start_job(p, free.pop(0), gdir, data_dir, threads, gpus))
            time.sleep(0.2 if running else 1.0)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                free.append(job.slot)
                if job.proc.returncode == LOCKED_EXIT:  # taken by another driver meanwhile
                    job.log.close()
                    pending.append(job.point)  # try again after the others
                elif not _finish_job(job, gdir):
                    failed.append(job.point.name)
    except KeyboardInterrupt:
        _stop_jobs(running)
        raise
    return failed


def _held(gdir: Path, p: Point, said: set[str]) -> bool:
    """Whether another process holds the point's folder (said once per point)."""
    who = holder(gdir / p.name)
    if who is not None and p.name not in said:
        said.add(p.name)
        console().point("elsewhere", p.name,
                        f"{p.name}: running elsewhere (pid {who.get('pid')} on "
                        f"{who.get('host')}); coming back to it")
    return who is not None


def _start_job(p: Point, slot: int, gdir: Path, data_dir: Path | None, threads: int,
               gpus: list[str]) -> _Job:
    point_dir = gdir / p.name
    log = open(RunFiles(point_dir).train_log, "a")  # appended: a resumed point keeps its history
    log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {p.name}\n")
    log.flush()
    env = child_env(slot, threads, gpus, p.cfg.train.device)
    proc = subprocess.Popen(point_command(point_dir, data_dir, threads), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    where = f", GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
    console().point("start", p.name,
                    f"start {p.name} ({threads} thread{'s' if threads > 1 else ''}{where}; "
                    f"log {RunFiles(point_dir).train_log})")
    return _Job(p, slot, proc, log, time.time())


def _finish_job(job: _Job, gdir: Path) -> bool:
    job.log.close()
    point_dir = gdir / job.point.name
    summary = read_summary(RunFiles(point_dir).summary)
    ok = job.proc.returncode == 0 and is_finished(summary)
    if not ok and not (summary and summary.get("status") == "failed"):
        # The child died without recording why (killed, segfault, import error).
        record_failure(point_dir, f"worker exited with status {job.proc.returncode} "
                                  f"(see {RunFiles(point_dir).train_log})")
        summary = read_summary(RunFiles(point_dir).summary)
    console().point("end", job.point.name,
                    f"end   {job.point.name}: {_outcome(summary)} "
                    f"({time.time() - job.t0:.0f} s)", summary)
    return ok


def _stop_jobs(running: list[_Job]) -> None:
    for job in running:
        job.proc.terminate()
    for job in running:
        try:
            job.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()
        job.log.close()

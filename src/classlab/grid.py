"""Grids of runs: the Cartesian product of config axes, one deterministic run folder per point.

A grid file holds ``base:`` (a config mapping, or the path of a config file relative to the
grid file), ``axes:`` (full key -> list of values, first axis slowest) and an optional
``name:``. Every point becomes ``<grid_dir>/<point name>/``, named from its axis values, so a
rerun of the same command finds its folders again: finished points are skipped, unfinished
ones resumed from ``last.pt`` (or restarted when there is none), failed ones retried.

``classlab table <grid_dir>`` (:func:`main_table`) rebuilds ``results.md``, ``results.csv``
and ``test_acc.png`` from the folders at any time. ``python -m classlab.grid run-point
<point folder>`` trains one prepared point; it is what ``--jobs N`` runs in each child process
and what ``--print-commands`` prints.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from classlab import _io, config
from classlab.config import Config, ConfigError

GRID_KEYS = ("name", "base", "axes")
COMPARED_KEYS = ("name", "base", "axes", "overrides")  # what makes two grids "the same"

MODEL_NAMES = {"resnet18": "ResNet18", "resnet34": "ResNet34"}
NORM_NAMES = {"bn": "Batch Normalization", "ln": "Layer Normalization",
              "gn": "Group Normalization"}
SCHED_NAMES = {"onecycle": "OneCycleLR", "step": "StepLR", "plateau": "ReduceLROnPlateau",
               "cosine": "Cosine", "linear": "Linear", "none": "Constant"}
# Axis keys that get a fixed, human-named column (always shown, even when not an axis).
NAMED_COLUMNS = {"model.name": ("Model", MODEL_NAMES),
                 "model.norm": ("Normalization", NORM_NAMES),
                 "sched.name": ("Scheduler", SCHED_NAMES)}


@dataclass
class Point:
    name: str  # folder name inside the grid folder
    values: dict[str, Any]  # axis key -> this point's value
    cfg: Config


@dataclass
class Grid:
    name: str
    source: Path
    base: dict
    axes: dict[str, list]
    overrides: list[str]
    points: list[Point]

    def definition(self) -> dict:
        """What ``<grid_dir>/grid.yaml`` holds: the compared keys plus the point list."""
        return {"name": self.name, "source": str(self.source.resolve()), "base": self.base,
                "axes": self.axes, "overrides": self.overrides,
                "points": [{"name": p.name, "values": p.values} for p in self.points]}


# --------------------------------------------------------------------------- expansion


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read a grid file and expand it; every point is validated (one-line ConfigError)."""
    path = Path(path)
    raw = config.read_yaml(path)
    unknown = [k for k in raw if k not in GRID_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown grid key {unknown[0]!r}; allowed: "
                          f"{', '.join(GRID_KEYS)}")
    name = _grid_name(raw.get("name", path.stem), path)
    base = _read_base(raw.get("base"), path)
    axes = _read_axes(raw.get("axes"), path)
    overrides = list(overrides)
    _check_overrides(overrides, axes)
    points = [_make_point(base, overrides, dict(zip(axes, combo)), path)
              for combo in itertools.product(*axes.values())]
    _check_unique(points, path)
    return Grid(name, path, base, axes, overrides, points)


def _grid_name(name: Any, path: Path) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") \
            or name in (".", ".."):
        raise ConfigError(f"{path}: name: {name!r} cannot be a folder name; allowed: a "
                          "non-empty name without / or \\")
    return name


def _read_base(base: Any, path: Path) -> dict:
    if base is None:
        return {}
    if isinstance(base, str):  # a config file, relative to the grid file
        return config.read_yaml(path.parent / base)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base: expected a config mapping or a file name, got "
                          f"{base!r}")
    return base


def _read_axes(axes: Any, path: Path) -> dict[str, list]:
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{path}: axes: expected a mapping of full keys to lists of values, "
                          "e.g. model.norm: [bn, ln]")
    for key, values in axes.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"axes {key!r}: expected a full key such as model.norm")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axes {key}: expected a non-empty list of values, got {values!r}")
        dupes = [v for i, v in enumerate(values) if v in values[:i]]
        if dupes:
            raise ConfigError(f"axes {key}: value {dupes[0]!r} is listed twice")
    return axes


def _override_key(item: str) -> str:
    return item.partition("=")[0].strip()


def _check_overrides(overrides: list[str], axes: dict[str, list]) -> None:
    """An override may not touch an axis key (nor a section above it, nor a key below it):
    the grid would then silently collapse to fewer distinct runs."""
    for item in overrides:
        key = _override_key(item)
        for axis in axes:
            if key == axis or axis.startswith(key + ".") or key.startswith(axis + "."):
                raise ConfigError(f"override {item!r}: {axis} is an axis of this grid; change "
                                  "its values under axes: instead")


def _set_key(raw: dict, key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(sections):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"axes {key}: {'.'.join(sections[: depth + 1])} is not a section")
        node = child
    node[leaf] = copy.deepcopy(value)


def _make_point(base: dict, overrides: list[str], values: dict[str, Any], path: Path) -> Point:
    name = "-".join(_slug(k, v) for k, v in values.items())
    raw = copy.deepcopy(base)
    raw["name"] = name
    # Command-line overrides beat the base; axis values come last (overrides of axis keys
    # were rejected above, so nothing can beat them).
    config.apply_overrides(raw, overrides)
    for key, value in values.items():
        _set_key(raw, key, value)
    try:
        cfg = config.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(_point_error(str(e), values, name, path)) from None
    return Point(name, values, cfg)


def _point_error(msg: str, values: dict[str, Any], name: str, path: Path) -> str:
    if any(msg.startswith(f"{key}:") for key in values):
        return f"axes {msg}"
    return f"{path}: point {name}: {msg}"


def _slug(key: str, value: Any) -> str:
    """A folder-name part for one axis value: strings as they are, numbers and booleans with
    the key's last part (``lr0.001``, ``no_channels_last``) so they stay readable."""
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        text = leaf if value else f"no_{leaf}"
    elif isinstance(value, (int, float)):
        text = f"{leaf}{value:g}" if isinstance(value, float) else f"{leaf}{value}"
    elif isinstance(value, list):
        text = "+".join(str(v) for v in value) or "none"
    else:
        text = str(value)
    text = re.sub(r"[^A-Za-z0-9._+]+", "_", text)
    return text.lstrip(".") or "_"


def _check_unique(points: list[Point], path: Path) -> None:
    seen: dict[str, Point] = {}
    for p in points:
        if p.name in seen:
            raise ConfigError(f"{path}: axes: points {seen[p.name].values} and {p.values} both "
                              f"map to the folder name {p.name!r}")
        seen[p.name] = p


# --------------------------------------------------------------------------- grid folder


def prepare(grid: Grid, grid_dir: Path) -> None:
    """Check that ``grid_dir`` holds this grid (or nothing), then write grid.yaml and each
    point's config.yaml. Nothing is written when a check fails."""
    grid_dir = Path(grid_dir)
    _check_same_grid(grid, grid_dir)
    for p in grid.points:
        cfg_path = grid_dir / p.name / "config.yaml"
        if cfg_path.is_file() and config.load(cfg_path) != p.cfg:
            raise ConfigError(f"{cfg_path.parent}: its config.yaml differs from the grid's "
                              "point; remove that folder to rerun it")
    try:
        grid_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _io.RunDirError(f"cannot create grid folder {grid_dir}: {e.strerror or e}") \
            from None
    _io.atomic_write_text(grid_dir / "grid.yaml", _GRID_HEADER + yaml.safe_dump(
        grid.definition(), sort_keys=False))
    for p in grid.points:
        (grid_dir / p.name).mkdir(exist_ok=True)
        if not (grid_dir / p.name / "config.yaml").is_file():
            _io.atomic_write_text(grid_dir / p.name / "config.yaml", config.dump(p.cfg))


_GRID_HEADER = ("# Written by `classlab grid`: the resolved grid (base after loading, overrides,\n"
                "# axes) and its points in run order. `classlab table` reads it.\n")


def _check_same_grid(grid: Grid, grid_dir: Path) -> None:
    path = grid_dir / "grid.yaml"
    if not path.exists():
        return
    old = config.read_yaml(path)
    new = grid.definition()
    differ = [k for k in COMPARED_KEYS if old.get(k) != new[k]]
    if differ:
        raise ConfigError(f"{grid_dir}: this grid folder holds another grid (its grid.yaml "
                          f"differs in {', '.join(differ)}); use another --grid-dir or --out, "
                          "or remove the folder")


def read_grid_dir(grid_dir: str | Path) -> dict:
    """The grid.yaml of a grid folder (ConfigError when there is none)."""
    path = Path(grid_dir) / "grid.yaml"
    if not path.is_file():
        raise ConfigError(f"{grid_dir}: not a grid folder (no grid.yaml); run `classlab grid` "
                          "first")
    raw = config.read_yaml(path)
    if not isinstance(raw.get("points"), list):
        raise ConfigError(f"{path}: no points list; was it written by `classlab grid`?")
    return raw


def read_summary(point_dir: Path) -> dict | None:
    path = Path(point_dir) / "summary.json"
    try:
        summary = _io.read_json(path)
    except (OSError, ValueError):  # absent (not started) or unreadable
        return None
    return summary if isinstance(summary, dict) else None


def is_finished(summary: dict | None) -> bool:
    """Finished means all epochs done; a killed run still says "running", so it never is."""
    return bool(summary) and summary.get("status") == "finished" \
        and summary.get("epochs_done") == summary.get("epochs")


def point_state(point_dir: Path) -> str:
    """"finished", "resume after epoch N" or "new" (no checkpoint: starts from scratch)."""
    summary = read_summary(point_dir)
    if is_finished(summary):
        return "finished"
    if (Path(point_dir) / "last.pt").is_file():
        return f"resume after epoch {(summary or {}).get('epochs_done', '?')}"
    return "new"


# --------------------------------------------------------------------------- one point


def run_point(point_dir: str | Path, data_root: Path | None = None) -> dict:
    """Train (or resume, or skip when finished) the prepared point folder ``point_dir``.

    Any exception is recorded in summary.json (status "failed" plus a one-line error) and
    re-raised; KeyboardInterrupt is not, so an interrupted point stays "running".
    """
    from classlab import tblog, train

    point_dir = Path(point_dir)
    if not (point_dir / "config.yaml").is_file():
        raise _io.RunDirError(f"{point_dir}: not a grid point (no config.yaml)")
    summary = read_summary(point_dir)
    if is_finished(summary):
        print(f"{point_dir}: finished already; skipped", flush=True)
        return summary
    try:
        # resume_run restarts from epoch 0 when there is no last.pt, and drops metric rows
        # written after the checkpoint, so one call covers "new", "killed" and "failed".
        s, epoch, best, wall = train.resume_run(point_dir, data_root)
        print(f"{'Resuming' if epoch else 'Starting'} {point_dir}"
              + (f" after epoch {epoch}" if epoch else "") + f": {s.cfg.model.name}/"
              f"{s.cfg.model.norm}, {s.params:,} params, device {s.device}, precision "
              f"{s.amp.precision}", flush=True)
        with tblog.epoch_logger(s.cfg, point_dir, start_epoch=epoch,
                                main=s.dist.main) as on_epoch:
            summary = train.fit(s, point_dir, epoch, best, wall, on_epoch=on_epoch)
    except Exception as e:
        record_failure(point_dir, error_line(e))
        raise
    if s.cfg.diagnose.enabled:
        _diagnose(point_dir, s)
    return summary


def error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def record_failure(point_dir: Path, error: str) -> None:
    """Mark the point failed in its summary.json, keeping what an earlier epoch wrote."""
    summary = read_summary(point_dir)
    if summary is None:
        cfg = config.load(Path(point_dir) / "config.yaml")
        summary = {"name": cfg.name, "run_dir": str(point_dir), "model": cfg.model.name,
                   "norm": cfg.model.norm, "optimizer": cfg.optim.name,
                   "scheduler": cfg.sched.name, "params": None, "epochs": cfg.train.epochs,
                   "epochs_done": 0, "final": None, "best_by_val": None,
                   "seconds_per_epoch": None}
    summary.update(status="failed", error=error)
    _io.write_json(Path(point_dir) / "summary.json", summary)


def _diagnose(point_dir: Path, session: Any) -> None:
    # Diagnostics are an extra: their failure must not turn a trained point into a failed one.
    try:
        from classlab import diagnose, report

        diagnose.diagnose_run(point_dir, session=session)
        report.build_report(point_dir)
    except Exception as e:
        print(f"{point_dir}: diagnose skipped: {error_line(e)}", file=sys.stderr, flush=True)


def point_command(point_dir: Path, data_dir: Path | None = None,
                  threads: int | None = None) -> list[str]:
    """The argv that trains one point in a fresh process (absolute paths: runs from anywhere)."""
    cmd = [sys.executable, "-m", "classlab.grid", "run-point", str(Path(point_dir).resolve())]
    if data_dir is not None:
        cmd += ["--data-dir", str(Path(data_dir).resolve())]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


# --------------------------------------------------------------------------- running a grid


def main_grid(grid_path: str | Path, overrides: list[str], *, out: Path = Path("runs"),
              data_dir: Path | None = None, jobs: int = 1, print_commands: bool = False,
              grid_dir: Path | None = None) -> int:
    """``classlab grid``: 0 when every point finished, 1 when any failed."""
    if jobs < 1:
        raise ConfigError(f"--jobs: {jobs} is out of range; must be ≥ 1")
    grid = load_grid(grid_path, overrides)
    gdir = Path(grid_dir) if grid_dir is not None else Path(out) / grid.name
    prepare(grid, gdir)
    if print_commands:
        _print_commands(grid, gdir, data_dir)
        return 0
    states = _print_plan(grid, gdir)
    todo = [p for p, st in zip(grid.points, states) if st != "finished"]
    t0 = time.time()
    if jobs == 1:
        failed = _run_serial(todo, gdir, data_dir)
    else:
        failed = _run_parallel(todo, gdir, data_dir, jobs)
    md = write_table(gdir)
    print(f"\n{md.read_text()}", end="", flush=True)
    print(f"{len(todo) - len(failed)} ran, {len(grid.points) - len(todo)} skipped (finished), "
          f"{len(failed)} failed in {time.time() - t0:.0f} s; table: {md}", flush=True)
    return 1 if failed else 0


def _print_commands(grid: Grid, gdir: Path, data_dir: Path | None) -> None:
    # Comment lines keep the output runnable as a script (bash, or `grep -v '^#' | parallel`).
    print(f"# {len(grid.points)} runs of grid {grid.name} in {gdir.resolve()}")
    for p in grid.points:
        print(shlex.join(point_command(gdir / p.name, data_dir)))
    print(f"# then: classlab table {shlex.quote(str(gdir.resolve()))}")


def _print_plan(grid: Grid, gdir: Path) -> list[str]:
    states = [point_state(gdir / p.name) for p in grid.points]
    values = [" ".join(f"{k}={_cell(v)}" for k, v in p.values.items()) for p in grid.points]
    w1, w2 = max(len(p.name) for p in grid.points), max(len(v) for v in values)
    print(f"{len(grid.points)} runs:")
    for p, v, state in zip(grid.points, values, states):
        print(f"  {p.name:<{w1}}  {v:<{w2}}  [{state}]")
    print(f"grid folder: {gdir}", flush=True)
    return states


def _run_serial(points: list[Point], gdir: Path, data_dir: Path | None) -> list[str]:
    """In-process: live progress in this terminal and no interpreter start per point. A hard
    crash (segfault, OOM kill) stops the grid, but a rerun resumes where it stopped."""
    failed = []
    for i, p in enumerate(points, 1):
        tag = f"[{i}/{len(points)}]"
        print(f"{tag} start {p.name}", flush=True)
        t0 = time.time()
        try:
            summary = run_point(gdir / p.name, data_dir)
        except Exception as e:
            failed.append(p.name)
            print(f"{tag} {p.name}: FAILED: {error_line(e)}", flush=True)
            continue
        print(f"{tag} {p.name}: {_outcome(summary)} ({time.time() - t0:.0f} s)", flush=True)
    return failed


def _outcome(summary: dict | None) -> str:
    if is_finished(summary):
        return f"finished, test acc {summary['final']['test_acc']:.2f}%"
    if summary and summary.get("status") == "failed":
        return f"FAILED: {summary.get('error')}"
    return "FAILED: stopped without a result"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gpu_ids() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []


def _child_env(slot: int, threads: int, gpus: list[str], device: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MPLBACKEND="Agg")
    # One device per job slot; an explicit cuda:N or cpu in the config is left alone.
    if gpus and device in ("auto", "cuda"):
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


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
    threads = max(1, _cores() // jobs)
    gpus = _gpu_ids()
    pending, running, failed = deque(points), [], []
    free = list(range(jobs))
    try:
        while pending or running:
            while pending and free:
                running.append(_start_job(pending.popleft(), free.pop(0), gdir, data_dir,
                                          threads, gpus))
            time.sleep(0.2)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                free.append(job.slot)
                if not _finish_job(job, gdir):
                    failed.append(job.point.name)
    except KeyboardInterrupt:
        _stop_jobs(running)
        raise
    return failed


def _start_job(p: Point, slot: int, gdir: Path, data_dir: Path | None, threads: int,
               gpus: list[str]) -> _Job:
    point_dir = gdir / p.name
    log = open(point_dir / "train.log", "a")  # appended: a resumed point keeps its history
    log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {p.name}\n")
    log.flush()
    env = _child_env(slot, threads, gpus, p.cfg.train.device)
    proc = subprocess.Popen(point_command(point_dir, data_dir, threads), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    where = f", GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
    print(f"start {p.name} ({threads} thread{'s' if threads > 1 else ''}{where}; log "
          f"{point_dir / 'train.log'})",
          flush=True)
    return _Job(p, slot, proc, log, time.time())


def _finish_job(job: _Job, gdir: Path) -> bool:
    job.log.close()
    point_dir = gdir / job.point.name
    summary = read_summary(point_dir)
    ok = job.proc.returncode == 0 and is_finished(summary)
    if not ok and not (summary and summary.get("status") == "failed"):
        # The child died without recording why (killed, segfault, import error).
        record_failure(point_dir, f"worker exited with status {job.proc.returncode} "
                                  f"(see {point_dir / 'train.log'})")
        summary = read_summary(point_dir)
    print(f"end   {job.point.name}: {_outcome(summary)} ({time.time() - job.t0:.0f} s)",
          flush=True)
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


# --------------------------------------------------------------------------- table


def main_table(grid_dir: str | Path) -> int:
    """``classlab table``: rebuild results.md/.csv and test_acc.png, print the table."""
    md = write_table(grid_dir)
    print(md.read_text(), end="")
    print(f"wrote {md}, {md.with_suffix('.csv')}, {Path(grid_dir) / 'test_acc.png'} and, "
          f"where weight updates were logged, {Path(grid_dir) / 'dynamics.png'}")
    return 0


def write_table(grid_dir: str | Path) -> Path:
    """Write results.md, results.csv, test_acc.png and (when the points logged weight updates)
    dynamics.png of a grid folder; returns results.md."""
    grid_dir = Path(grid_dir)
    grid = read_grid_dir(grid_dir)
    extra = [k for k in grid.get("axes", {}) if k not in NAMED_COLUMNS]
    rows = [_gather(grid_dir, entry, extra) for entry in grid["points"]]
    md = grid_dir / "results.md"
    _io.atomic_write_text(md, _markdown(grid.get("name", grid_dir.name), rows, extra))
    _io.atomic_write_text(grid_dir / "results.csv", _csv(rows, extra))
    _plot(grid_dir, grid)
    from classlab.dynamics import plot_compare

    plot_compare([(e["name"], grid_dir / e["name"]) for e in grid["points"]],
                 grid_dir / "dynamics.png")
    return md


def _gather(grid_dir: Path, entry: dict, extra: list[str]) -> dict:
    """One point's facts from its folder: config.yaml for what it is, summary.json for how
    far it got. Missing files give blanks."""
    point_dir = grid_dir / entry["name"]
    values = entry.get("values") or {}
    raw = _read_raw_config(point_dir / "config.yaml")
    summary = read_summary(point_dir) or {}
    row = {"folder": entry["name"], "status": _status(summary), "error": summary.get("error"),
           "params": summary.get("params"), "epochs_done": summary.get("epochs_done"),
           "epochs": summary.get("epochs", _lookup(raw, "train.epochs")),
           "spe": summary.get("seconds_per_epoch")}
    for key, (column, names) in NAMED_COLUMNS.items():
        value = values.get(key, _lookup(raw, key))
        row[column] = "" if value is None else names.get(value, _cell(value))
    for key in extra:
        row[key] = _cell(values.get(key))
    done = row["status"] == "finished"  # accuracies of unfinished points stay blank
    final = (summary.get("final") or {}) if done else {}
    best = (summary.get("best_by_val") or {}) if done else {}
    row.update(train_acc=final.get("train_acc"), val_acc=final.get("val_acc"),
               test_acc=final.get("test_acc"), best_test=best.get("test_acc"),
               best_epoch=best.get("epoch"))
    return row


def _read_raw_config(path: Path) -> dict:
    try:
        return config.read_yaml(path)
    except ConfigError:
        return {}


def _lookup(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _status(summary: dict) -> str:
    if not summary:
        return "not started"
    if is_finished(summary):
        return "finished"
    if summary.get("status") == "failed":
        return "failed"
    return "unfinished"  # still running, or killed: the summary cannot tell which


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    return str(value)


def _pct(value: Any) -> str:
    # 2 decimals: with 10,000 test images one image is exactly 0.01%.
    return "" if value is None or value != value else f"{value:.2f}"


MD_TAIL = ["Params", "Train acc", "Val acc", "Test acc", "Best-by-val test acc", "Epochs",
           "s/epoch", "Status", "Run folder"]
CSV_TAIL = ["Params", "Train acc", "Val acc", "Test acc", "Best-by-val test acc",
            "Best-by-val epoch", "Epochs", "Epochs planned", "s/epoch", "Status", "Error",
            "Run folder"]
HEAD = [column for column, _ in NAMED_COLUMNS.values()]


def _markdown(name: str, rows: list[dict], extra: list[str]) -> str:
    header = HEAD + extra + MD_TAIL
    lines = [f"# Grid {name}", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    for r in rows:
        cells = [r[c] for c in HEAD + extra] + _md_tail(r)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Accuracies in %. Train acc is the running accuracy of the last epoch over "
              "its augmented images; Val and Test acc are of the final epoch. Best-by-val test "
              "acc is the test accuracy of the epoch with the best validation accuracy (the "
              "test set chooses nothing).", ""]
    return "\n".join(lines)


def _md_tail(r: dict) -> list[str]:
    pct = {k: f"{_pct(r[k])}%" if _pct(r[k]) else "" for k in ("train_acc", "val_acc",
                                                               "test_acc", "best_test")}
    best = f"{pct['best_test']} (epoch {r['best_epoch']})" if pct["best_test"] else ""
    done, planned = r["epochs_done"], r["epochs"]
    epochs = "" if planned is None else (str(planned) if done == planned
                                         else f"{done or 0}/{planned}")
    status = f"failed: {r['error']}" if r["status"] == "failed" and r["error"] else r["status"]
    return [f"{r['params']:,}" if r["params"] is not None else "", pct["train_acc"],
            pct["val_acc"], pct["test_acc"], best, epochs,
            f"{r['spe']:.1f}" if r["spe"] is not None else "", status,
            f"[{r['folder']}]({r['folder']}/)"]


def _csv(rows: list[dict], extra: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEAD + extra + CSV_TAIL)
    for r in rows:
        w.writerow([r[c] for c in HEAD + extra] + [
            "" if r["params"] is None else r["params"], _pct(r["train_acc"]),
            _pct(r["val_acc"]), _pct(r["test_acc"]), _pct(r["best_test"]),
            _cell(r["best_epoch"]), _cell(r["epochs_done"]), _cell(r["epochs"]),
            "" if r["spe"] is None else f"{r['spe']:.1f}", r["status"], r["error"] or "",
            r["folder"]])
    return buf.getvalue()


def _plot(grid_dir: Path, grid: dict) -> Path:
    """Overlay of every point's test accuracy per epoch (from its metrics.csv)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or open figures
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    drawn, last = 0, 1
    for (color, style), entry in zip(_line_styles(grid), grid["points"]):
        rows = _safe_metrics(grid_dir / entry["name"] / "metrics.csv")
        if rows:
            last = max(last, rows[-1]["epoch"])
            ax.plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], marker="o",
                    markersize=3, color=color, linestyle=style, label=entry["name"])
            drawn += 1
    ax.set(xlabel="epoch", ylabel="test accuracy (%)",
           title=f"{grid.get('name', grid_dir.name)}: test accuracy")
    # Whole epochs only; a single epoch otherwise gets an axis of 0.96..1.04.
    if last <= 10:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, last + 0.5)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(0.5, 0.5, "no finished epochs yet", ha="center", transform=ax.transAxes)
    out = grid_dir / "test_acc.png"
    fig.savefig(out, dpi=110)
    return out


_STYLES = ("-", "--", ":", "-.")


def _line_styles(grid: dict) -> list[tuple[str, str]]:
    """(colour, line style) per point. With a short last axis (e.g. 3 schedulers) the style
    encodes that axis and the colour the rest, so 12 lines stay tellable apart."""
    n = len(grid["points"])
    axes = list((grid.get("axes") or {}).values())
    k = len(axes[-1]) if len(axes) > 1 else 0
    if 1 < k <= len(_STYLES) and n // k <= 10:
        return [(f"C{i // k}", _STYLES[i % k]) for i in range(n)]
    return [(f"C{i % 10}", _STYLES[i // 10 % len(_STYLES)]) for i in range(n)]


def _safe_metrics(path: Path) -> list[dict]:
    from classlab.train import read_metrics

    try:
        return read_metrics(path) if path.is_file() else []
    except (OSError, ValueError, KeyError):  # a half-written row of a running point
        return []


# --------------------------------------------------------------------------- worker entry


def _worker_main(argv: list[str] | None = None) -> int:
    """``python -m classlab.grid run-point POINT_DIR``: 0 finished, 1 failed, 2 bad input."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    ap = argparse.ArgumentParser(prog="python -m classlab.grid")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run-point", help="train or resume one prepared grid point folder")
    p.add_argument("point_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (an explicit train.threads in the config wins)")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        run_point(a.point_dir, a.data_dir)
    except (ConfigError, _io.RunDirError) as e:
        print(f"run-point: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"run-point: interrupted; {a.point_dir} resumes on the next run", file=sys.stderr)
        return 130
    except Exception as e:  # already recorded in summary.json by run_point
        print(f"run-point: {a.point_dir} failed: {error_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())

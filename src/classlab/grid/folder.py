"""The grid folder: one run folder per point, prepared up front, each trained (or resumed,
or skipped when finished) by the one run flow.

``<grid_dir>/grid.yaml`` holds the resolved grid; ``<grid_dir>/<point>/`` is an ordinary run
folder, so ``classlab report``, ``eval`` and ``diagnose`` work on a point as on any run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from classlab import config
from classlab.config import ConfigError
from classlab.grid.spec import COMPARED_KEYS, Grid
from classlab.rundir import GridFiles, RunDirError, RunFiles, atomic_write_text, write_json
from classlab.rundir.lock import hold
from classlab.rundir.summary import is_finished, make_summary, read_summary

_GRID_HEADER = ("# Written by `classlab grid`: the resolved grid (base after loading, overrides,\n"
                "# axes) and its points in run order. `classlab table` reads it.\n")


def prepare(grid: Grid, grid_dir: Path) -> None:
    """Check that ``grid_dir`` holds this grid (or nothing), then write grid.yaml and each
    point's config.yaml. Nothing is written when a check fails."""
    g = GridFiles(grid_dir)
    _check_same_grid(grid, g)
    for p in grid.points:
        cfg_path = g.point(p.name).config
        if cfg_path.is_file() and config.load(cfg_path) != p.cfg:
            raise ConfigError(f"{cfg_path.parent}: its config.yaml differs from the grid's "
                              "point; remove that folder to rerun it")
    prepare_grid_file(grid, grid_dir)
    for p in grid.points:
        files = g.point(p.name)
        files.root.mkdir(exist_ok=True)
        if not files.config.is_file():
            atomic_write_text(files.config, config.dump(p.cfg))


def prepare_grid_file(grid: Grid, grid_dir: Path) -> None:
    """Check that ``grid_dir`` holds this grid (or nothing), then write its grid.yaml (a
    tuned grid: before its point folders, whose configs tuning decides)."""
    g = GridFiles(grid_dir)
    _check_same_grid(grid, g)
    try:
        g.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create grid folder {g.root}: {e.strerror or e}") from None
    atomic_write_text(g.grid, _GRID_HEADER + yaml.safe_dump(grid.definition(), sort_keys=False))


def _check_same_grid(grid: Grid, g: GridFiles) -> None:
    if not g.grid.exists():
        return
    old = config.read_yaml(g.grid)
    new = grid.definition()
    differ = [k for k in COMPARED_KEYS if old.get(k) != new[k]]
    if differ:
        raise ConfigError(f"{g.root}: this grid folder holds another grid (its grid.yaml "
                          f"differs in {', '.join(differ)}); use another --grid-dir or --out, "
                          "or remove the folder")


def read_grid_dir(grid_dir: str | Path) -> dict:
    """The grid.yaml of a grid folder (ConfigError when there is none)."""
    path = GridFiles(grid_dir).grid
    if not path.is_file():
        raise ConfigError(f"{grid_dir}: not a grid folder (no grid.yaml); run `classlab grid` "
                          "first")
    raw = config.read_yaml(path)
    if not isinstance(raw.get("points"), list):
        raise ConfigError(f"{path}: no points list; was it written by `classlab grid`?")
    return raw


def point_state(point_dir: Path) -> str:
    """"finished", "resume after epoch N" or "new" (no checkpoint: starts from scratch)."""
    files = RunFiles(point_dir)
    summary = read_summary(files.summary)
    if is_finished(summary):
        return "finished"
    if files.checkpoint.is_file():
        return f"resume after epoch {(summary or {}).get('epochs_done', '?')}"
    return "new"


LOCKED_EXIT = 75  # run-point's exit status (EX_TEMPFAIL) when another process holds the point


def run_point(point_dir: str | Path, data_root: Path | None = None,
              wait: float = 0.0) -> dict:
    """Train (or resume, or skip when finished) the prepared point folder ``point_dir``.

    The point's lock is taken first: held by another process (another driver of the same
    grid, a retried task whose first attempt still runs), this waits up to ``wait`` seconds
    for it, then raises :class:`~classlab.rundir.lock.RunLocked` without touching the
    folder. Any other exception is recorded in summary.json (status "failed" plus a
    one-line error) and re-raised; KeyboardInterrupt is not, so an interrupted point stays
    "running". A failed diagnosis does not fail a trained point (it is printed).
    """
    from classlab.run.flow import train_run

    files = RunFiles(point_dir)
    if not files.config.is_file():
        raise RunDirError(f"{point_dir}: not a grid point (no config.yaml)")
    with hold(files.root, wait=wait):
        summary = read_summary(files.summary)  # read under the lock: final once held
        if is_finished(summary):
            print(f"{point_dir}: finished already; skipped", flush=True)
            return summary
        try:
            # A prepared folder without last.pt starts from scratch; a killed or failed one
            # resumes from its checkpoint (rows written after it are dropped).
            return train_run(run_dir=files.root, data_root=data_root,
                             diagnose_errors="warn").summary
        except Exception as e:
            record_failure(files.root, error_line(e))
            raise


def error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def record_failure(point_dir: Path, error: str) -> None:
    """Mark the point failed in its summary.json, keeping what an earlier epoch wrote."""
    files = RunFiles(point_dir)
    summary = read_summary(files.summary)
    if summary is None:
        summary = make_summary(config.load(files.config), files.root, "failed")
    summary.update(status="failed", error=error)
    write_json(files.summary, summary)


def point_command(point_dir: Path, data_dir: Path | None = None,
                  threads: int | None = None) -> list[str]:
    """The argv that trains one point in a fresh process (absolute paths: runs from anywhere)."""
    cmd = [sys.executable, "-m", "classlab.grid", "run-point", str(Path(point_dir).resolve())]
    if data_dir is not None:
        cmd += ["--data-dir", str(Path(data_dir).resolve())]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd

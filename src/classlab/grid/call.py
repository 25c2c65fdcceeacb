"""``classlab.grid(...)`` and ``classlab.load_grid(...)``: a grid run from Python (a notebook,
a script), returned as a :class:`classlab.notebook.grids.Grid`; in a notebook it runs with the
live display (one overall bar, the points' table filling in).

    g = classlab.grid("experiments/norm_grid.yaml", out="runs", train__epochs=2,
                      overrides={"data.subset": 5000})
    g.table            # results.csv as a pandas DataFrame
    g.findings         # the sentences results.md opens with
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from classlab import fmt
from classlab.grid.folder import point_state
from classlab.grid.local import main_grid
from classlab.grid.spec import load_grid
from classlab.grid.table import write_table
from classlab.notebook.grids import Grid
from classlab.notebook.grids import run_grid as run_live
from classlab.rundir import GridFiles


def override_items(overrides: Mapping[str, Any] | None, kw: Mapping[str, Any]) -> list[str]:
    """``{"train.epochs": 2}`` and ``train__epochs=2`` as command-line overrides
    (``train.epochs=2``), written as a person types them: a rerun from the command line
    with the same overrides is the same grid."""
    items = [(str(k), v) for k, v in (overrides or {}).items()]
    items += [(k.replace("__", "."), v) for k, v in kw.items()]
    return [f"{k}={_typed(v)}" for k, v in items]


def _typed(v: Any) -> str:
    """A value as YAML reads it back: bare when that is the same value, else JSON."""
    text = fmt.value(v) if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return text if yaml.safe_load(text) == v else json.dumps(v)


def grid_file(grid: str | os.PathLike | Mapping[str, Any], held: contextlib.ExitStack) -> Any:
    """A grid file's path, or a grid given as a mapping (as in YAML) written to a
    temporary file (a ``base`` file it names is taken from the current folder)."""
    if not isinstance(grid, Mapping):
        return grid
    raw = copy.deepcopy(dict(grid))
    base = raw.get("base")
    if isinstance(base, str) and Path(base).is_file():
        raw["base"] = str(Path(base).resolve())
    path = Path(held.enter_context(tempfile.TemporaryDirectory())) / "grid.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_grid(grid: str | os.PathLike | Mapping[str, Any], *, out: str | os.PathLike = "runs",
             data_dir: str | os.PathLike | None = None, jobs: int = 1, engine: str = "local",
             address: str | None = None, grid_dir: str | os.PathLike | None = None,
             overrides: Mapping[str, Any] | None = None, **kw: Any) -> Grid:
    """Run (or continue) a grid as ``classlab grid`` does and return it. ``grid``: a grid
    file, or a mapping shaped like one (name, base, axes, seeds, ...). ``overrides`` and
    keywords (``__`` for the dot) apply to every point; ``jobs``, ``engine``, ``address``,
    ``grid_dir`` as on the command line. Failed points are rows of the table, not errors."""
    items = override_items(overrides, kw)
    with contextlib.ExitStack() as held:
        path = grid_file(grid, held)
        spec = load_grid(path, items)  # bad input: one ConfigError line, nothing written
        gdir = Path(grid_dir) if grid_dir is not None else Path(out) / spec.name
        points = [(p.name, " ".join(f"{k}={fmt.value(v)}" for k, v in p.values.items()),
                   p.cfg.train.epochs, point_state(gdir / p.name) == "finished")
                  for p in spec.points]
        root = Path(data_dir) if data_dir is not None else None
        run_live(lambda: main_grid(path, items, out=Path(out), data_dir=root, jobs=jobs,
                                   grid_dir=gdir, engine=engine, address=address), points)
    return Grid(gdir)


def open_grid(grid_dir: str | os.PathLike) -> Grid:
    """A grid folder as a :class:`Grid` (its table is written first when missing)."""
    if not GridFiles(grid_dir).results_md.is_file():
        write_table(grid_dir)  # a one-line ConfigError when it is no grid folder
    return Grid(grid_dir)

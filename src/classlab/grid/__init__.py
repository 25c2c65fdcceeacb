"""Grids of runs: the Cartesian product of config axes, one deterministic run folder per point.

- :mod:`~classlab.grid.spec`: the grid file and its points
- :mod:`~classlab.grid.folder`: the grid folder, and one point trained by the run flow
- :mod:`~classlab.grid.local`: ``classlab grid`` on this machine (in process, or N children)
- :mod:`~classlab.grid.table`: ``classlab table`` (results.md/.csv and the overlays)
- :mod:`~classlab.grid.tunespec`, :mod:`~classlab.grid.tune`, :mod:`~classlab.grid.ray_tune`,
  :mod:`~classlab.grid.tunetable`: tuned grids (a ``tune:`` section): the search space and
  budget, the Optuna engine, Ray Tune, the Tuning section of results.md and tuning.png
- ``python -m classlab.grid run-point POINT_DIR``: one point in a fresh process
  (``run-trial TRIAL_DIR``: one tuning trial)
- :mod:`~classlab.grid.call`: the package called, ``classlab.grid("grid.yaml", ...)``, runs a
  grid from Python and returns it (the notebook API)
"""

import sys
import types

from classlab.grid.folder import point_command, prepare, read_grid_dir, record_failure, run_point
from classlab.grid.local import main_grid
from classlab.grid.spec import Grid, Point, load_grid
from classlab.grid.table import main_table, write_table

__all__ = ["Grid", "Point", "load_grid", "main_grid", "main_table", "point_command",
           "prepare", "read_grid_dir", "record_failure", "run_point", "write_table"]


class CallablePackage(types.ModuleType):
    """``classlab.grid`` is this package and the notebook API's ``classlab.grid(...)``: one
    name cannot be both a subpackage and a function (importing the subpackage would replace
    the function), so the package itself is callable."""

    def __call__(self, grid, **kw):
        """Run a grid and return it: see :func:`classlab.grid.call.run_grid`."""
        from classlab.grid.call import run_grid

        return run_grid(grid, **kw)


sys.modules[__name__].__class__ = CallablePackage

"""``python -m classlab.grid run-point POINT_DIR``: train one prepared grid point in this
process. It is what ``classlab grid --jobs N`` runs in each child process and what
``--print-commands`` prints. ``run-trial TRIAL_DIR``: one trial of a tuned grid
(:mod:`classlab.grid.tune`), the same way."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from classlab.config import ConfigError
from classlab.grid.folder import LOCKED_EXIT, error_line, run_point
from classlab.rundir import RunDirError
from classlab.rundir.lock import RunLocked


def main(argv: list[str] | None = None) -> int:
    """``python -m classlab.grid run-point POINT_DIR``: 0 finished, 1 failed, 2 bad input,
    :data:`LOCKED_EXIT` when another process holds the point."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    ap = argparse.ArgumentParser(prog="python -m classlab.grid")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run-point", help="train or resume one prepared grid point folder")
    p.add_argument("point_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (an explicit train.threads in the config wins)")
    p = sub.add_parser("run-trial", help="train or resume one prepared tuning trial folder")
    p.add_argument("point_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        if a.command == "run-trial":
            from classlab.grid.tune import run_trial

            run_trial(a.point_dir, a.data_dir)
        else:
            run_point(a.point_dir, a.data_dir)
    except RunLocked as e:  # another process trains it: the driver comes back to it
        print(f"run-point: {e}", file=sys.stderr)
        return LOCKED_EXIT
    except (ConfigError, RunDirError) as e:
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
    sys.exit(main())

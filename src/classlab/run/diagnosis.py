"""Diagnose a run folder: check the arguments against the run's model, load its checkpoint
into a session when none is given, then :func:`classlab.diagnose.run.diagnose`."""

from __future__ import annotations

import time
from pathlib import Path

from classlab import config
from classlab.diagnose.run import check_args, diagnose, resolve_args, skeleton
from classlab.run.session import session_from_run
from classlab.rundir import RunFiles, run_folder
from classlab.rundir.checkpoint import load_checkpoint
from classlab.rundir.lock import hold


def diagnose_run(run_dir: Path, *, session=None, data_root: Path | None = None,
                 layers: list[str] | str | None = None, method: str | None = None,
                 count: int | None = None, target: str | None = None,
                 device: str | None = None) -> dict:
    """Write predictions.csv and ``run_dir/diagnose/*`` for the run's last checkpoint.

    ``session``: a :class:`classlab.run.session.Session` whose model already holds the
    weights (e.g. right after training); None loads ``run_dir/last.pt`` (``device`` applies
    only then). layers/method/count/target default to the run config's ``diagnose``
    section. All arguments are checked before the data is loaded or the model is run.
    """
    run_dir = run_folder(run_dir, needs="last.pt" if session is None else "config.yaml")
    with hold(run_dir):  # one writer (re-entrant: the training process already holds it)
        t = time.perf_counter()
        epoch = None
        if session is None:
            state = load_checkpoint(RunFiles(run_dir).checkpoint)
            a = resolve_args(config.from_dict(state["config"]), layers, method, count, target)
            check_args(skeleton(state), a)  # on the meta device: before any data is loaded
            session, state = session_from_run(run_dir, data_root, device)
            epoch = int(state["epoch"])
        else:
            a = resolve_args(session.cfg, layers, method, count, target)
            check_args(session.eval_model, a)
        return diagnose(session, run_dir, a, epoch, {"load": time.perf_counter() - t})

"""The run folder on disk: its file names (:mod:`~classlab.rundir.layout`), atomic writes
(:mod:`~classlab.rundir.files`), checkpoints (:mod:`~classlab.rundir.checkpoint`), the
metrics and dynamics CSVs (:mod:`~classlab.rundir.metrics`) and summary.json
(:mod:`~classlab.rundir.summary`). It knows files, not training: it imports only config.

The checkpoint functions (which need torch) are not re-exported here, so that the notebook
API can read a run folder's files without importing torch."""

from classlab.rundir.files import (
    RunDirError,
    all_or_nothing,
    atomic_write_bytes,
    atomic_write_text,
    make_folder,
    make_run_dir,
    read_json,
    read_json_object,
    run_folder,
    save_figure,
    write_json,
)
from classlab.rundir.layout import (
    DYNAMICS_FIELDS,
    METRIC_FIELDS,
    PREDICTION_FIELDS,
    GridFiles,
    RunFiles,
)

__all__ = [
    "DYNAMICS_FIELDS", "METRIC_FIELDS", "PREDICTION_FIELDS", "GridFiles", "RunDirError",
    "RunFiles", "all_or_nothing", "atomic_write_bytes", "atomic_write_text", "make_folder",
    "make_run_dir", "read_json", "read_json_object",
    "run_folder", "save_figure", "write_json",
]

"""Look inside a trained run: predictions, curves, mistakes, per-class accuracy, confusion
matrix, calibration and class activation maps (Grad-CAM, Grad-CAM++, LayerCAM, XGrad-CAM,
HiResCAM, Score-CAM, Eigen-CAM) at several layers, with checks of how far the maps can be
trusted.

- :mod:`~classlab.diagnose.run`: :func:`~classlab.diagnose.run.diagnose`, the steps of a
  diagnosis of a built session (:func:`classlab.run.diagnosis.diagnose_run` loads a run)
- :mod:`~classlab.diagnose.cams`: the CAM methods, hooks, :func:`compute_cams`,
  :func:`~classlab.diagnose.cams.compute_cams_by_method`, layer checks
- :mod:`~classlab.diagnose.calibration`: ECE / MCE, reliability bins, temperature scaling
- :mod:`~classlab.diagnose.faithfulness`: deletion / insertion curves against a random map
- :mod:`~classlab.diagnose.sanity`: the model-randomisation sanity check
- :mod:`~classlab.diagnose.trust`: the diagnosis steps that run those checks
- :mod:`~classlab.diagnose.figures`: every figure; :mod:`~classlab.diagnose.tables`: tables
"""

from classlab.diagnose.cams import (
    CAMS,
    Captured,
    DiagnoseError,
    capture,
    compute_cams,
    compute_cams_by_method,
)
from classlab.diagnose.run import diagnose

__all__ = ["CAMS", "Captured", "DiagnoseError", "capture", "compute_cams",
           "compute_cams_by_method", "diagnose"]

"""Look inside a trained run: predictions, curves, mistakes, per-class accuracy, confusion
matrix and class activation maps (Grad-CAM, Grad-CAM++, LayerCAM) at several layers.

- :mod:`~classlab.diagnose.run`: :func:`~classlab.diagnose.run.diagnose`, the steps of a
  diagnosis of a built session (:func:`classlab.run.diagnosis.diagnose_run` loads a run)
- :mod:`~classlab.diagnose.cams`: the CAM methods, hooks, :func:`compute_cams`
- :mod:`~classlab.diagnose.figures`: every figure; :mod:`~classlab.diagnose.tables`: tables
"""

from classlab.diagnose.cams import CAMS, Captured, DiagnoseError, capture, compute_cams
from classlab.diagnose.run import diagnose

__all__ = ["CAMS", "Captured", "DiagnoseError", "capture", "compute_cams", "diagnose"]

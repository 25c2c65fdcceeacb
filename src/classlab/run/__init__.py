"""A run: from a config (or an existing run folder) to a trained model in a run folder.

- :mod:`~classlab.run.flow`: the one run flow (:func:`~classlab.run.flow.train_run`), used
  by the command line, the notebook API and the grid
- :mod:`~classlab.run.session`: everything a run holds in memory, built from a Config; its
  checkpoint state
- :mod:`~classlab.run.fit`: the epoch loop with its metrics rows, checkpoints and summaries
- :mod:`~classlab.run.folder`: a new run folder, or an existing one resumed
- :mod:`~classlab.run.checks`, :mod:`~classlab.run.tensorboard`,
  :mod:`~classlab.run.tracking`: optional packages (TensorBoard, MLflow), behind one
  interface for the run flow in :mod:`~classlab.run.loggers`

(Nothing is imported here, so that the light modules, checks, tensorboard and tracking, can
be used without loading torch.)
"""

"""The one error of the engine: training stopped on purpose."""


class TrainingError(RuntimeError):
    """Training stopped on purpose (e.g. a non-finite loss); one-line message."""

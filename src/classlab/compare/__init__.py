"""Comparing runs honestly: paired tests on the same test images, intervals over seeds.

- :mod:`~classlab.compare.paired`: a run's per-image test outputs, and the paired McNemar
  test between runs (several seeds pooled); used by ``classlab table`` and ``classlab compare``
- :mod:`~classlab.compare.report`: ``classlab compare RUN_A RUN_B [RUN ...]``, one
  self-contained report of what differs and where
- :mod:`~classlab.compare.call`: the package called, ``classlab.compare(a, b)``, compares runs
  from Python (the notebook API; a notebook shows the report inline)
"""

import sys
import types


class CallablePackage(types.ModuleType):
    """``classlab.compare`` is this package and the notebook API's ``classlab.compare(...)``
    (one name cannot be both a subpackage and a function, so the package is callable)."""

    def __call__(self, *runs, **kw):
        """Compare runs: see :func:`classlab.compare.call.compare`."""
        from classlab.compare.call import compare

        return compare(*runs, **kw)


sys.modules[__name__].__class__ = CallablePackage

"""Comparing runs honestly: paired tests on the same test images, intervals over seeds.

- :mod:`~classlab.compare.paired`: a run's per-image test outputs, and the paired McNemar
  test between runs (several seeds pooled); used by ``classlab table`` and ``classlab compare``
- :mod:`~classlab.compare.report`: ``classlab compare RUN_A RUN_B [RUN ...]``, one
  self-contained report of what differs and where
"""

"""harness: an evaluation-first benchmarking harness for adversarial training.

This package's ``__init__`` imports nothing heavy: ``reports/`` uses ``harness.core.rundir`` and
``harness.core.registry`` without torch.
"""
__version__ = "0.1.0"

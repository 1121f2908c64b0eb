"""Attacks, the AutoAttack adapter, evaluation suites and the sanity checks.

This package depends on nothing of ours but the registry (``harness.core.registry``, and the
errors it raises). Attacks work on [0,1] images and treat normalisation as part of the model.
"""

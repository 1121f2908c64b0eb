"""Attacks, the AutoAttack adapter, evaluation suites and the sanity checks.

This package stands on the kernel (``harness.core``) alone. Attacks work on [0,1] images and
treat normalisation as part of the model; every attack takes a ``ThreatModel`` and is built from
plain data by ``attacks.factory.build``.
"""

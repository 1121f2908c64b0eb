"""The kernel: what the plugins (``attacks/``, ``defenses/``) and ``reports/`` stand on.

errors, the registry class, atomic file I/O, the run directory and its one-owner lock, the seed
bounds, the threat model, statistics, the typed documents, and the torch runtime helpers (device,
precision, RNG). Nothing here imports
the application (``harness.cli``, ``harness.pipeline``, ``harness.training``, ...) or a plugin
package: arrows only point down to here. Only ``runtime`` needs torch.
"""

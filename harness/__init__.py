"""harness: an evaluation-first benchmarking harness for adversarial training.

The Python API (``harness/api.py``)::

    import harness
    r = harness.evaluate(model, (x, y), eps=8/255)       # a suite and its sanity checks
    print(r.robust_accuracy, r.verdict)
    run = harness.train(defense="fast-at", dataset="fashion-mnist")   # harness run

Importing ``harness`` is light: the API (and torch) load on first use, so ``reports/`` and the
kernel (``harness.core``) can be imported without them.
"""

from typing import Any

from harness.core.version import __version__  # noqa: F401  (harness.__version__)

_API = ("evaluate", "train", "evaluate_run", "resolve_config", "Run", "Evaluation")


def __getattr__(name: str) -> Any:
    if name in _API:
        from harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_API))

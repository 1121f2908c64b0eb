"""The harness version, in the kernel so that plugins and the kernel can record it without
importing the ``harness`` package (whose ``__getattr__`` loads the API)."""

__version__ = "0.1.0"

"""Errors a user can act on.

Every error the CLI reports as one line and a non-zero exit derives from ``HarnessError``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A user-facing error: the message is one line that says what to do."""

    exit_code = 2


class UnknownNameError(HarnessError, KeyError):
    """A name that is not registered; the message carries the did-you-mean hint."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(HarnessError, ValueError):
    """A configuration value that cannot be used (wrong units, wrong type, conflicting)."""


class DataError(HarnessError):
    """A data set that is missing, corrupt, or does not look like [0,1] images."""


class CheckpointError(HarnessError):
    """A checkpoint that cannot be loaded safely or does not match its model."""


class ThreatModelViolation(HarnessError):
    """An adversarial example outside the eps ball or the [0,1] box: never counted."""

    exit_code = 3

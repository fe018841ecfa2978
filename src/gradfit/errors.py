"""Errors that gradfit reports to its users.

Library code raises a ``GradfitError`` subclass for every problem a user can act
on; the CLI turns it into a message on stderr and exit code 1. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class GradfitError(Exception):
    """A problem with the user's input, or a run that failed for a reason the user can act on."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(GradfitError):
    """The config file or a --set override is wrong."""


class DataError(GradfitError):
    """The data file or its columns are wrong."""


class TrainingError(GradfitError):
    """Training failed (divergence, device problems)."""


class CheckpointError(GradfitError):
    """A checkpoint cannot be read safely or is incompatible."""


class EquationError(GradfitError):
    """An equation or formula cannot be parsed or evaluated."""


class SolveError(GradfitError):
    """A system of equations has no solution within tolerance."""


class ExportError(GradfitError):
    """A trained model cannot be exported to the format asked for (ONNX, TorchScript)."""


class ReportError(GradfitError):
    """A run directory cannot be read for a report."""


class Interrupted(GradfitError):
    """The user interrupted a run (SIGINT/SIGTERM)."""

    exit_code = 130


class Aborted(KeyboardInterrupt):
    """A run aborted at once by an interrupt (a second Ctrl-C or SIGTERM, or one before training
    began), with what its run directory keeps. A KeyboardInterrupt, so that no ``except Exception``
    swallows it; the CLI prints the message and exits with code 130."""

    def __init__(self, message: str, signal_name: str | None = None):
        super().__init__(message)
        self.message = message
        self.signal_name = signal_name


def signal_name(exc: BaseException) -> str:
    """The signal behind a KeyboardInterrupt: its first argument when gradfit's handler raised it, else Ctrl-C."""
    name = getattr(exc, "signal_name", None) or (exc.args[0] if exc.args and not isinstance(exc, Aborted) else None)
    return name if isinstance(name, str) and name.startswith("SIG") else "Ctrl-C"

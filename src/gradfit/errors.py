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


class Interrupted(GradfitError):
    """The user interrupted a run (SIGINT/SIGTERM)."""

    exit_code = 130

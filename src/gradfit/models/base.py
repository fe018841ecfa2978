"""The model interface every kind implements (linear, polynomial, MLP, formula), capabilities included.

Training, metrics, the exact check, standard errors, checkpoints, eval and predict call
this interface and never ask which kind they hold: what differs between kinds is
either a method here or a capability property that says which algorithm applies.
"""

from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import nn


class Model(nn.Module, metaclass=abc.ABCMeta):
    """Raw float64 inputs (n, d) in, predictions in original units out.

    ``spec`` (a plain dict) holds everything needed to rebuild the module, the state dict
    the numbers; ``head`` is the trainable part, working on ``design(X)`` and ``scaled_target(y)``.
    """

    spec: dict
    head: nn.Module

    # ------------------------------------------------------------ building (models/build.py picks the class)

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg, feature_names, target, X_train, y_train, device, generator=None,
                    summarize=None) -> "Model":
        """A model for this config on ``device``, set up from the training rows (raw X (n, d), y (n,)).

        ``summarize(fn)``: statistics over rows not all in hand (see ``regression.fit_scaling``).
        """

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: dict) -> "Model":
        """The architecture a checkpoint's spec describes, before its weights load."""

    # ------------------------------------------------------------ numbers

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """The head's dtype (the design's and the scaled target's)."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the head's parameters live."""

    @abc.abstractmethod
    def design(self, X: torch.Tensor, device=None, rows: Optional[torch.Tensor] = None,
               column_major: bool = False) -> torch.Tensor:
        """Raw (n, d) -> design (n, m) in the head's dtype, on ``device`` (default: the head's).

        ``rows``: the design of ``X[rows]``; ``column_major``: stored column by column
        (``data.batches.empty_design``), the same numbers.
        """

    @abc.abstractmethod
    def scaled_target(self, y: torch.Tensor, device=None) -> torch.Tensor:
        """Raw target (n,) -> the target the head is trained on, in its dtype, on ``device``."""

    @abc.abstractmethod
    def unscale(self, pred_scaled: torch.Tensor) -> torch.Tensor:
        """Head output -> original units, float64 on the CPU."""

    @abc.abstractmethod
    def predict(self, X, batch_rows: int = 1 << 16) -> torch.Tensor:
        """Predictions in original units (float64, CPU) for raw inputs (array or tensor (n, d))."""

    @abc.abstractmethod
    def coefficients(self) -> dict:
        """The learned model in readable form (coefficients.json)."""

    @abc.abstractmethod
    def parameter_names(self) -> list[str]:
        """The names of the fitted quantities that ``coefficients()`` reports, in order."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.unscale(self.head(self.design(X)))

    # ------------------------------------------------------------ capabilities

    @property
    @abc.abstractmethod
    def linear_in_parameters(self) -> bool:
        """Predictions linear in the head's parameters (linear, polynomial): a closed-form
        least-squares check, standard errors from the Gram matrix, the lr auto rule 1.8/L."""

    @property
    @abc.abstractmethod
    def has_standard_errors(self) -> bool:
        """Standard errors and 95% intervals can be computed when fitted by MSE loss
        (linear, polynomial, formula); the caller checks the loss."""

    @property
    @abc.abstractmethod
    def one_pass_gradient(self) -> bool:
        """The head is a ``LinearHead``: the one-pass MSE gradient (``models.passes.LinearMSE``) applies."""

    @property
    @abc.abstractmethod
    def standardizes(self) -> bool:
        """The design and target are scaled from training-row statistics (formula models: never)."""

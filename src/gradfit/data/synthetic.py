"""Synthetic data, made in-process from the seed."""

from __future__ import annotations

import torch

from gradfit.config.schema import SyntheticLinear, SyntheticPolynomial
from gradfit.data.columns import synthetic_columns
from gradfit.data.split import STREAM_DATA, Dataset, generator

# ---------------------------------------------------------------- synthetic


def _synthetic(spec, seed: int) -> Dataset:
    g = generator(seed, STREAM_DATA)
    n = spec.n_samples
    if isinstance(spec, SyntheticPolynomial):
        lo, hi = spec.x_range
        x = torch.rand(n, dtype=torch.float64, generator=g) * (hi - lo) + lo
        y = torch.zeros(n, dtype=torch.float64)
        for c in reversed(spec.coefficients):  # Horner
            y = y * x + c
        if spec.noise:
            y += spec.noise * torch.randn(n, dtype=torch.float64, generator=g)
        truth = {"intercept": spec.coefficients[0], "coefficients": list(spec.coefficients[1:])}
        return Dataset(x[:, None], y, [spec.feature], "y", {"synthetic": spec.model_dump(mode="json"), "truth": truth})
    assert isinstance(spec, SyntheticLinear)
    d = spec.n_features
    if spec.coefficients is None:
        coef = torch.round(torch.randn(d, dtype=torch.float64, generator=g) * 2, decimals=2)
    else:
        coef = torch.tensor(spec.coefficients, dtype=torch.float64)
    if spec.x_range is None:
        X = torch.randn(n, d, dtype=torch.float64, generator=g)
    else:
        lo, hi = spec.x_range
        X = torch.rand(n, d, dtype=torch.float64, generator=g) * (hi - lo) + lo
    y = X @ coef + spec.bias
    if spec.noise:
        y += spec.noise * torch.randn(n, dtype=torch.float64, generator=g)
    names = synthetic_columns(spec)
    truth = {"intercept": spec.bias, "coefficients": coef.tolist()}
    return Dataset(X, y, names, "y", {"synthetic": spec.model_dump(mode="json"), "truth": truth})

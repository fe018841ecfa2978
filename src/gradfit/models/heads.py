"""The trainable heads: a linear layer, an MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}


class LinearHead(nn.Module):
    """z @ weight + bias on the design."""

    def __init__(self, n_in: int, intercept: bool, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_in, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros((), dtype=dtype)) if intercept else None

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        out = Z @ self.weight  # (n,)
        return out + self.bias if self.bias is not None else out


class MLPHead(nn.Module):
    """A multilayer perceptron: Linear -> activation, repeated, then Linear to one output."""

    def __init__(self, n_in: int, hidden: list[int], activation: str, dtype: torch.dtype, generator: torch.Generator):
        super().__init__()
        layers: list[nn.Module] = []
        sizes = [n_in, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b, dtype=dtype), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], 1, dtype=dtype))
        self.net = nn.Sequential(*layers)
        # Glorot-uniform weights, U(+-sqrt(6 / (fan_in + fan_out))), zero biases, every layer (as
        # scikit-learn's MLPRegressor for relu/tanh). Measured on Friedman #1 (100k rows, 5 epochs,
        # 3 seeds): held-out R^2 0.9477 with the former He-style U(+-gain*sqrt(3/fan_in)) against
        # MLPRegressor's 0.9551; see bench/README.md for the figures with this one.
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                    m.weight.copy_((torch.rand(m.weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
                    m.bias.zero_()

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        return self.net(Z).squeeze(-1)


DTYPES = {"float32": torch.float32, "float64": torch.float64}

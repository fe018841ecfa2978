"""gradfit: regression models and equation systems fitted by PyTorch autograd.

Importing this package is cheap: the public functions import torch when called.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_config",
    "train",
    "load_model",
    "evaluate_model",
    "predict_file",
    "solve_equations",
]


def load_config(path, overrides=()):
    """Read and validate a YAML experiment; see gradfit.config.load_config."""
    from gradfit.config.loading import load_config as _load  # (imported here for start-up time)

    return _load(path, overrides)


def train(config, **kwargs):
    """Train the experiment described by a Config; see gradfit.train.run.train."""
    from gradfit.train.run import train as _train  # (imported here for start-up time)

    return _train(config, **kwargs)


def load_model(path):
    """Load a saved model (checkpoint file or run directory); see gradfit.checkpoint."""
    from gradfit.results.checkpoint import load_model as _load  # (imported here for start-up time)

    return _load(path)


def evaluate_model(checkpoint, data=None):
    """Metrics of a saved model on a data file or its held-out rows; see gradfit.evaluate.evaluate."""
    from gradfit.results.evaluate import evaluate as _evaluate  # (imported here for start-up time)

    return _evaluate(checkpoint, data)


def predict_file(checkpoint, data, out=None, columns=None):
    """Predict every row of a data file; see gradfit.evaluate.predict_file."""
    from gradfit.results.evaluate import predict_file as _predict  # (imported here for start-up time)

    return _predict(checkpoint, data, out=out, columns=columns)


def solve_equations(equations, **kwargs):
    """Solve a system of equations by gradient descent; see gradfit.equations.solve."""
    from gradfit.equations.solver import solve as _solve  # (imported here for start-up time)

    return _solve(equations, **kwargs)

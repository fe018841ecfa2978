"""Which model class a config or a checkpoint's spec asks for: decided here, once, from one table."""

from __future__ import annotations

from gradfit.errors import CheckpointError
from gradfit.models.base import Model
from gradfit.models.formula import FormulaModel
from gradfit.models.regression import RegressionModel

# The one place that maps a model kind (config ``model.kind``, checkpoint ``spec["kind"]``) to its class.
MODEL_KINDS: dict[str, type[Model]] = {
    "linear": RegressionModel,
    "polynomial": RegressionModel,
    "mlp": RegressionModel,
    "formula": FormulaModel,  # raw units, no scaling (models/formula.py)
}


def build_model(cfg, feature_names, target, X_train, y_train, device, generator=None, summarize=None) -> Model:
    """A model for this config, its scaling fitted on the training rows, on ``device``."""
    cls = MODEL_KINDS[cfg.model.kind]
    return cls.from_config(cfg, feature_names, target, X_train, y_train, device, generator, summarize)


def model_from_spec(spec: dict) -> Model:
    """The model a checkpoint's spec describes (its architecture; the weights load after)."""
    cls = MODEL_KINDS.get(spec.get("kind"))
    if cls is None:
        raise CheckpointError(f"no model kind {spec.get('kind')!r} (known: {', '.join(sorted(MODEL_KINDS))})")
    return cls.from_spec(spec)

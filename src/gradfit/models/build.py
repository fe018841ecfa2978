"""Which model class a config or a checkpoint's spec asks for: decided here, once."""

from __future__ import annotations

from gradfit.models.regression import RegressionModel, fit_scaling, model_spec


def build_model(cfg, feature_names, target, X_train, y_train, device, generator=None, summarize=None) -> RegressionModel:
    """A model for this config, its scaling fitted on the training rows, on ``device``."""
    if cfg.model.kind == "formula":  # raw units, no scaling (gradfit.formula)
        from gradfit.models.formula import build_formula_model

        return build_formula_model(cfg, feature_names, target, X_train, y_train, device)
    model = RegressionModel(model_spec(cfg, feature_names, target), generator=generator)
    fit_scaling(model, X_train, y_train, summarize)
    model.head.to(device)
    return model

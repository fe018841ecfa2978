"""data.weights: which runs take observation weights, decided once when the config is read.

Weighted rows are read into memory in one process and trained on the whole design each step
(full batch): the loss is sum(w l) / sum(w) over the training rows. The combinations not
supported yet are refused here, with the fix, rather than silently ignoring the weights.
"""

from __future__ import annotations

# The losses the loop trains with weights (weighted means); the others are solved outside it.
WEIGHTED_LOSSES = ("mse", "mae", "huber", "log_cosh")


def check_weights(cfg) -> None:
    """Raise ValueError (pydantic's message) for a config whose data.weights cannot be honoured."""
    dc = cfg.data
    if dc.weights is None:
        if dc.weights_are != "weights":  # (the default is written out in every resolved config.yaml)
            raise ValueError("data.weights_are says what the weights column holds, but data.weights names no column; "
                             "set data.weights: COLUMN or remove data.weights_are")
        if dc.absolute_sigma:
            raise ValueError("data.absolute_sigma says the weights are 1/sigma^2 of known sigmas, but data.weights "
                             "names no column; set data.weights: COLUMN (and data.weights_are: sigma) or remove it")
        return
    w = dc.weights
    if dc.synthetic is not None:
        raise ValueError(f"data.weights ({w!r}) names a column of a data file; synthetic data has none: "
                         "remove data.weights or use data.path")
    if w == dc.target:
        raise ValueError(f"data.weights is the target column {w!r}; name the column of per-row weights")
    if dc.features is not None and w in dc.features:
        raise ValueError(f"data.weights column {w!r} is also listed in data.features; a weight is not a feature: "
                         "remove it from data.features")
    refused = [
        (dc.streaming, "data.streaming", "set data.streaming: false (the rows in memory)"),
        (cfg.train.batch_size is not None, "train.batch_size (mini-batches)", "set train.batch_size: null (full batch)"),
        (cfg.loss.kind not in WEIGHTED_LOSSES, f"loss.kind {cfg.loss.kind!r}",
         f"use loss.kind {', '.join(WEIGHTED_LOSSES)}"),
        (getattr(cfg.model, "penalty", None) is not None, "model.penalty", "remove model.penalty"),
        (cfg.optimizer.kind == "exact", "optimizer.kind: exact (asked for or chosen by auto)",
         "set optimizer.kind: lbfgs"),
    ]
    for bad, what, fix in refused:
        if bad:
            raise ValueError(f"data.weights is not supported with {what} yet; {fix}, or remove data.weights")

"""optimizer.kind: auto, decided once when the config is read (schema.Config._resolve_auto): which
optimizer reaches the optimum of the model and loss the config names."""

from __future__ import annotations


def auto_optimizer(cfg) -> str:
    """optimizer.kind: auto. The optimizer that reaches the optimum of this model and loss.

    - linear/polynomial, full batch, rows in memory, with mae, quantile, poisson, gamma, or huber
      without a loss.delta (RLM's IRLS, its scale estimated): exact (train/exact_route.py);
    - linear/polynomial with mse, log_cosh or huber at a given delta (smooth, convex), full batch, rows
      in memory: lbfgs (float64: the least-squares optimum to about 1e-12 relative, where float32 adam
      stops at 1e-2..1e-6);
    - formula models with mse: lm (Levenberg-Marquardt, docs/formula.md);
    - everything else (MLPs, mini-batches, streamed rows): adam.
    """
    full_batch = cfg.train.batch_size is None and not cfg.data.streaming
    if getattr(cfg.model, "penalty", None) is not None:
        return "exact"  # (_check_exact says what a penalty combines with)
    robust = cfg.loss.kind == "huber" and cfg.loss.delta is None  # (its scale is estimated by the IRLS)
    # (the exact solvers take no data.weights: weighted mae and huber train in the loop)
    exact_ok = full_batch and getattr(cfg.data, "weights", None) is None
    if cfg.model.kind in ("linear", "polynomial") and (cfg.loss.kind in EXACT_LOSSES or robust) and exact_ok:
        return "exact"
    if cfg.model.kind in ("linear", "polynomial") and cfg.loss.kind in AUTO_LBFGS_LOSSES and full_batch:
        return "lbfgs"
    if cfg.model.kind == "formula" and cfg.loss.kind == "mse":
        return "lm"
    return "adam"


# The losses for which optimizer.kind: auto takes exact on linear and polynomial models (a linear
# program for mae (q = 0.5) and quantile, Newton's method for poisson and gamma: train/exact_route.py);
# huber without a loss.delta too (auto_optimizer).
EXACT_LOSSES = ("mae", "quantile", "poisson", "gamma")
# ... and those optimizer.kind: exact also takes when asked (huber at any delta: IRLS, optim/huber_irls.py).
EXACT_ON_REQUEST = (*EXACT_LOSSES, "huber")
# The losses for which optimizer.kind: auto takes lbfgs on linear and polynomial models (see the README).
AUTO_LBFGS_LOSSES = ("mse", "huber", "log_cosh")

"""Whether a fit can be believed: the optimality test behind ``converged`` and the warnings of metrics.json.

Everything here reads what the run already has: the exact check's Gram matrix of the float64
design (results/exact.py ``gram``), the training design in the training dtype, the loop's result.
No pass over the rows is made here when the exact check made one.

``converged`` for linear and polynomial models with mse loss is the exact check's test:

    gap = (train MSE - exact MSE) / var(y)  <=  GAP_ULPS * eps(training dtype)

sqrt(gap) is the RMS error of the fitted values as a share of the target's SD. The training
loss is resolved to a few ulps of the dtype (the tolerance rule's floor is 8 eps); GAP_ULPS leaves
room for the rounding of evaluating it over n rows. float64: 2.2e-14 (fitted values within
1.5e-7 SD of least squares); float32: 1.2e-5 (0.35% of the SD).

Other smooth fits (mse, huber) trained full batch without early stopping: the largest gradient
component of the training loss at the end is at most sqrt(eps) of the dtype times the start's
(``gradient_rtol``; one pass at the start, one at the end). The rest (mae, mini-batches, early
stopping, rows streamed or over several processes) keep the loop's stopping rule as their test.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from gradfit.models.features import term_name
from gradfit.results.exact import gram
from gradfit.results.uncertainty import raw_map

# converged: gap <= GAP_ULPS * eps of the training dtype (see the module docstring)
GAP_ULPS = 100
# A scaled design whose condition number exceeds this loses more than half of float64's digits in
# its coefficients (their error grows with the condition number): near collinearity.
NEAR_COLLINEAR_COND = 1e7
# Eigenvalues of the unit-column Gram matrix below this share of the largest are zero up to rounding:
# the terms of their eigenvector are exactly aliased.
ALIASED_EIGEN = 1e-13
# A converged fit whose coefficients agree with exact least squares to fewer significant digits
# than this gets a warning (coefficient_digits_warning).
COEF_DIGITS = 6
# Terms whose share in a null direction is at least this (of its largest) are named in the warning.
NAME_SHARE = 0.05


def gradient_rtol(dtype: str) -> float:
    """The relative gradient test: the largest gradient component at the end at most sqrt(eps) of
    the start's (the gradient of a smooth loss resolves the minimum to about sqrt(eps) of its scale)."""
    return math.sqrt(torch.finfo(getattr(torch, dtype)).eps)


def gradient_test_applies(cfg, model) -> bool:
    """The relative gradient test is taken for smooth losses trained full batch, where the exact gap is not."""
    exact = cfg.loss.kind == "mse" and model.linear_in_parameters
    full = cfg.train.batch_size is None
    # (early stopping aims at the validation loss, not the training loss's minimum: its own rule stays)
    return not exact and full and cfg.loss.kind in ("mse", "huber", "log_cosh") and cfg.train.early_stopping is None


def gradient_max(head, Z: torch.Tensor, y: torch.Tensor, loss_fn) -> float:
    """The largest component of the training loss's gradient (scaled units) at the head's weights: one pass."""
    params = [p for p in head.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = loss_fn(head(Z), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return max((float(g.abs().max()) for g in grads if g is not None), default=0.0)


def gap_threshold(dtype: str) -> float:
    return GAP_ULPS * torch.finfo(getattr(torch, dtype)).eps


def design_names(model) -> list[str]:
    """The names of the design's columns, in the Gram matrix's order (the intercept's last)."""
    names = [term_name(tuple(e), model.spec["features"]) for e in model.features.terms.tolist()]
    return names + (["intercept"] if model.spec["intercept"] else [])


def design_warnings(names: list[str], G: torch.Tensor, n: int) -> list[str]:
    """Aliased and nearly collinear terms and more coefficients than rows, from the Gram matrix
    A^T A (k, k) of the float64 design on n training rows."""
    k = G.shape[0]
    out = []
    if k >= n:
        out.append(f"the model has {k} coefficients but only {n} training rows: it can interpolate the rows, "
                   "so R^2 and the coefficients say nothing about new data and standard errors cannot be computed; "
                   "use fewer terms (a lower model.degree, fewer data.features) or more rows")
    norms = G.diagonal().clamp(min=0).sqrt()
    zero = [names[i] for i in range(k) if not norms[i] > 0]
    if zero:
        out.append(f"term{'s' if len(zero) > 1 else ''} {', '.join(zero)} "
                   f"{'are' if len(zero) > 1 else 'is'} constant on the training rows (aliased with the intercept, "
                   "e.g. the square of a 0/1 column): coefficient 0 is reported, not an estimate; "
                   "leave the column out or lower model.degree")
    live = [i for i in range(k) if norms[i] > 0]
    if len(live) < 2 or k >= n:  # (k >= n: k - n + 1 null directions at least, said above)
        return out
    idx = torch.tensor(live)
    Gs = G[idx][:, idx] / torch.outer(norms[idx], norms[idx])  # unit columns: the condition number after scaling
    evals, evecs = torch.linalg.eigh(Gs)
    top = float(evals[-1])
    null = [j for j in range(len(live)) if float(evals[j]) <= ALIASED_EIGEN * top]
    for j in null:
        v = evecs[:, j].abs()
        terms = [names[live[i]] for i in range(len(live)) if float(v[i]) >= NAME_SHARE * float(v.max())]
        out.append(f"terms {', '.join(terms)} are aliased (collinear on the training rows, to float64's rounding): the data cannot "
                   "tell their coefficients apart; the minimum-norm fit is reported, without standard errors; "
                   "leave out all but one of them")
    if not null:
        smallest = float(evals[0])
        cond = math.sqrt(top / smallest) if smallest > 0 else math.inf
        if cond > NEAR_COLLINEAR_COND:
            v = evecs[:, 0].abs()
            terms = [names[live[i]] for i in range(len(live)) if float(v[i]) >= NAME_SHARE * float(v.max())]
            out.append(f"terms {', '.join(terms)} are nearly collinear (condition number {cond:.3g} of the design "
                       "after scaling): their coefficients and standard errors are sensitive to small changes in the "
                       "data; consider leaving one of them out")
    return out


def constant_at_dtype(names: list[str], Z: Optional[torch.Tensor], G: torch.Tensor, dtype: str) -> list[str]:
    """Design columns that vary in float64 (G's diagonal > 0 after centring) but are constant in the
    training design ``Z`` (n, m) of the training dtype: the optimizer cannot see them."""
    if not isinstance(Z, torch.Tensor) or Z.ndim != 2 or Z.shape[0] < 2:
        return []
    flat = (Z.amax(0) == Z.amin(0)).tolist()
    varies = G.diagonal().tolist()
    bad = [names[j] for j, f in enumerate(flat) if f and j < len(varies) and varies[j] > 0]
    if not bad:
        return []
    return [f"feature term{'s' if len(bad) > 1 else ''} {', '.join(bad)} "
            f"{'are' if len(bad) > 1 else 'is'} constant at {dtype}, the training dtype (the values differ by less "
            f"than its precision): the optimizer cannot fit {'them' if len(bad) > 1 else 'it'}; "
            "set data.standardize: true or dtype: float64"]


def convergence(optimizer: str, result, gap: Optional[float], dtype: str, epochs_cap: int,
                grads: Optional[tuple[float, float]] = None) -> tuple[bool, list[str]]:
    """(converged, warnings) from the loop's result and, for linear/polynomial mse, the exact gap;
    for other smooth full-batch fits, the gradient at the end relative to the start (``grads``)."""
    how = {"max_epochs": f"stopped at the epoch cap ({epochs_cap} train.epochs)",
           "tolerance": "stopped when the loss no longer moved",
           "early_stopping": f"stopped early (best validation epoch {result.best_epoch})",
           "interrupted": "was interrupted"}.get(result.stop_reason, f"stopped ({result.stop_reason})")
    if gap is not None:
        limit = gap_threshold(dtype)
        if math.isfinite(gap) and gap <= limit:
            return True, []
        return False, [f"not converged: optimizer {optimizer} {how} after {result.epochs} epochs with exact gap "
                       f"{gap:.2g} (above {limit:.2g} for {dtype}); its coefficients are not the least-squares ones "
                       "and their standard errors are withheld; use optimizer.kind: lbfgs with dtype: float64 "
                       "(the defaults: auto), or more train.epochs"]
    if result.stop_reason == "stalled":  # (lm's own test found it stuck: optim.lm; the gradient may be small there)
        why = getattr(result, "finished", None) or "stuck"
        return False, [f"not converged: optimizer {optimizer} is {why} after {result.epochs} epochs; the fit is not "
                       "at a minimum (a plateau or a parameter running away); give other model.start values or "
                       "train.starts: N"]
    if grads is not None and result.stop_reason != "early_stopping":
        g0, g1 = grads
        limit = gradient_rtol(dtype)
        rel = g1 / g0 if g0 > 0 else (0.0 if g1 == 0 else math.inf)
        if math.isfinite(rel) and rel <= limit:
            return True, []
        return False, [f"not converged: optimizer {optimizer} {how} after {result.epochs} epochs with the loss's "
                       f"gradient at {rel:.2g} of its start (above {limit:.2g} for {dtype}); the fit is not at a "
                       "minimum; raise train.epochs, lower train.tol, or try optimizer.kind: lbfgs with dtype: float64"]
    if result.converged:
        return True, []
    return False, [f"not converged: optimizer {optimizer} {how} after {result.epochs} epochs before its stopping "
                   "rule held; standard errors, if any, are marked unreliable; raise train.epochs or try another "
                   "optimizer.kind"]


def assess(cfg, model, result, source, fit: Optional[dict], gap: Optional[float], Z=None,
           grads: Optional[tuple[float, float]] = None) -> tuple[bool, list[str]]:
    """(converged, warnings) of a trained model: the design's diagnostics (linear and polynomial
    models: from the exact check's Gram matrix, or one pass for it without one), then convergence
    (``grads``: the largest gradient component at the start and at the end, for the gradient test)."""
    converged, warns = convergence(cfg.optimizer.kind, result, gap, cfg.dtype, cfg.train.epochs, grads)
    if model.linear_in_parameters:
        G, _, n = (fit["gram"], None, fit["n"]) if fit is not None else gram(model, source)
        names = design_names(model)
        design = design_warnings(names, G, n) + constant_at_dtype(names, Z, G, cfg.dtype)
        digits = coefficient_digits_warning(model, fit) if converged and fit is not None and not design else []
        warns = design + warns + digits
    elif cfg.model.kind == "formula" and cfg.loss.kind == "mse":  # (the Jacobian's rank: results.identify)
        from gradfit.results.identify import formula_warnings  # (imported here for start-up time)

        warns = formula_warnings(model, source) + warns
    return converged, warns


def coefficient_digits(model, fit: dict) -> tuple[float, str, float, float]:
    """How many significant digits the model's raw coefficients share with the exact least-squares
    ones (``fit["coef"]``, float64, mapped to raw units by ``raw_map``): (digits, the worst term,
    its value, the exact value). Coefficients that are exactly 0 in the exact fit are left out."""
    keys, M = raw_map(model)
    exact = (M @ fit["coef"].to(torch.float64)).tolist()
    poly = model.raw_polynomial()
    worst = (math.inf, "", 0.0, 0.0)
    for e, b_star in zip(keys, exact):
        b = poly.get(tuple(e), 0.0)
        if b_star == 0 or not math.isfinite(b_star):
            continue
        rel = abs(b - b_star) / abs(b_star)
        d = -math.log10(rel) if rel > 0 else math.inf
        if d < worst[0]:
            name = "intercept" if sum(e) == 0 else term_name(tuple(e), model.spec["features"])
            worst = (d, name, b, b_star)
    return worst


def coefficient_digits_warning(model, fit: dict) -> list[str]:
    """A warning when a converged fit's coefficients agree with exact least squares to fewer than
    COEF_DIGITS significant digits: the fitted values are resolved (the gap test held), the digits
    printed for an ill-conditioned coefficient are not (float32 on a polynomial, typically)."""
    digits, name, b, b_star = coefficient_digits(model, fit)
    if not digits < COEF_DIGITS:
        return []
    return [f"the coefficients agree with exact least squares to only {max(digits, 0):.1f} significant digits "
            f"({name}: {b:.6g}, exact {b_star:.6g}): the fitted values are resolved, but not every digit printed "
            f"for the coefficients is significant; the exact coefficients: dtype: float64 with optimizer.kind: auto "
            "(the defaults)"]


# Why a penalized fit (model.penalty) has no standard errors.
PENALIZED_SE_WARNING = (
    "standard errors are not reported for a penalized fit (model.penalty): the penalty shrinks the coefficients "
    "toward zero (and L1 selects terms by the same data), so they are biased and the least-squares covariance "
    "does not describe them; refit without model.penalty for standard errors and intervals")


def standard_error_warning(model, n: int, reliable: bool, found: bool) -> list[str]:
    """Why standard errors are missing or not to be trusted (empty when they are fine)."""
    if not found:
        p = len(model.parameter_names())
        why = (f"no residual degrees of freedom ({n} training rows for {p} coefficients)" if n <= p
               else "the coefficients are not all identified by the data (aliased terms or a singular Jacobian)")
        return [f"standard errors are not reported: {why}"]
    if not reliable:
        return ["standard errors and intervals are unreliable (coefficients.json: std_errors_reliable false) "
                "because the fit did not converge"]
    return []

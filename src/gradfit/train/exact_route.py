"""optimizer.kind: exact: a linear or polynomial fit solved to its optimum in float64, not by the loop.

- model.penalty (mse): the training rows are read once into the float64 Gram matrix of the
  design (results/exact.py ``gram``, over whatever row source the run has); coordinate descent
  (optim/coordinate.py) finds the minimizer of the penalized objective. The optimality test
  behind ``converged`` is the KKT conditions of that objective (metrics.json ``exact``:
  ``objective`` and ``kkt``).
- loss quantile and mae (q = 0.5): the pinball loss's linear program over the float64 design (optim/quantile_lp.py,
  scipy's HiGHS); ``converged`` is the solver's optimality status.
- loss huber: statsmodels RLM's IRLS with HuberT (optim/huber_irls.py), run to its fixed point; without
  a loss.delta the MAD scale of the residuals is estimated with it (delta = 1.345 * scale), with one it
  is held at delta / 1.345. ``converged``: the iteration settled and the Huber loss's gradient is 0 to
  rounding; standard errors: RLM's H1 covariance (metrics.json ``exact``: ``scale``, ``delta``).
- loss poisson, gamma: Newton's method on the log-likelihood (optim/glm_newton.py), to a step
  below 1e-12 relative; standard errors from the Fisher information (as statsmodels' GLM).

Either way the head's weights are set to the solution.
"""

from __future__ import annotations

import math
import time

import torch

from gradfit.errors import TrainingError
from gradfit.models.features import term_name
from gradfit.models.losses import Loss
from gradfit.optim.coordinate import KKT_RTOL, penalized_least_squares
from gradfit.optim.glm_newton import glm_newton
from gradfit.optim.huber_irls import HUBER_T, huber_irls
from gradfit.optim.quantile_lp import quantile_lp
from gradfit.results.exact import _design_rows, gram
from gradfit.results.uncertainty import raw_map
from gradfit.train.loop import EpochRecord, TrainResult


def solve_exact(prep) -> tuple[TrainResult, dict, dict]:
    """The run's exact solver (the config says which: a penalty, quantile or poisson loss):
    (result, exact check for metrics.json, uncertainty keys for coefficients.json)."""
    kind = prep.cfg.loss.kind
    if kind in ("poisson", "gamma"):
        return solve_glm(prep)
    if kind == "huber":
        return solve_huber(prep)
    return (*(solve_quantile(prep) if kind in ("quantile", "mae") else solve_penalized(prep)), {})


def _rows_in_hand(model, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, y): the float64 design (the intercept's column last) and target of every training row."""
    if rows.dist.enabled:
        raise TrainingError("this exact fit needs all training rows in one process, not spread over torchrun's "
                            "ranks", hint="run it without torchrun, or set optimizer.kind: adam")
    parts = list(_design_rows(model, rows))
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def solve_glm(prep) -> tuple[TrainResult, dict, dict]:
    """The Poisson or gamma (log link) fit of ``prep.model``'s linear head, and its standard errors."""
    t0 = time.perf_counter()
    model = prep.model
    intercept = bool(model.spec["intercept"])
    A, y = _rows_in_hand(model, prep.rows)
    start = torch.zeros(A.shape[1], dtype=torch.float64)
    if intercept:
        start[-1] = math.log(max(float(y.mean()), 1e-300))
    sol = glm_newton(A, y, start, prep.cfg.loss.kind)
    coef = sol.coef
    _set_head(model, coef[:-1], float(coef[-1])) if intercept else _set_head(model, coef, 0.0)
    seconds = time.perf_counter() - t0
    result = TrainResult(history=[EpochRecord(1, sol.nll, None, 0.0, seconds)], epochs=1,
                         stop_reason="tolerance" if sol.converged else "max_epochs",
                         converged=sol.converged, seconds=seconds)
    check = {"objective": sol.nll, "solver": "newton", "iterations": sol.iterations}
    return result, check, fisher_uncertainty(model, sol.fisher, sol.converged)


# the normal quantile of a 95% interval (GLM intervals are Wald intervals on the normal)
Z975 = 1.959963984540054


def fisher_uncertainty(model, fisher: torch.Tensor, reliable: bool) -> dict:
    """std_errors and ci95 of the raw coefficients from the Fisher information of the design's."""
    L, info = torch.linalg.cholesky_ex(fisher)
    if int(info) != 0:
        return {}
    return covariance_uncertainty(model, torch.cholesky_inverse(L), reliable)


def covariance_uncertainty(model, C: torch.Tensor, reliable: bool) -> dict:
    """std_errors and (Wald, normal) ci95 of the raw coefficients from the covariance C (k, k) of the design's."""
    keys, M = raw_map(model)
    variances = ((M @ C) * M).sum(1).tolist()
    coefs = model.coefficients()
    names = [("intercept" if sum(e) == 0 else term_name(e, model.spec["features"])) for e in keys]
    values = [coefs["intercept"] if nm == "intercept" else coefs["coefficients"].get(nm, 0.0) for nm in names]
    se = {k: math.sqrt(max(v, 0.0)) for k, v in zip(names, variances)}
    return {"std_errors": se, "ci95": {k: [x - Z975 * se[k], x + Z975 * se[k]] for k, x in zip(names, values)},
            "std_errors_reliable": reliable}


def _set_head(model, coef: torch.Tensor, intercept: float) -> None:
    """Set a linear head so that its prediction in original units is Z coef + intercept."""
    head = model.head
    y_shift, y_scale = float(model.y_shift), float(model.y_scale)
    with torch.no_grad():
        # prediction = y_scale * (Z w_head + b_head) + y_shift = Z w + b0
        head.weight.copy_((coef / y_scale).to(head.weight))
        if head.bias is not None:
            head.bias.copy_(torch.tensor((intercept - y_shift) / y_scale, dtype=torch.float64).to(head.bias))


def solve_quantile(prep) -> tuple[TrainResult, dict]:
    """The quantile (pinball-loss) fit of ``prep.model``'s linear head: its linear program, solved."""
    t0 = time.perf_counter()
    # (mae is twice the pinball loss at q = 0.5: the same minimizer)
    mae = prep.cfg.loss.kind == "mae"
    model, rows, q = prep.model, prep.rows, 0.5 if mae else float(prep.cfg.loss.q)
    A, y = _rows_in_hand(model, rows)
    sol = quantile_lp(A.numpy(), y.numpy(), q)
    objective = 2 * sol.objective if mae else sol.objective
    coef = torch.as_tensor(sol.coef, dtype=torch.float64)
    if model.spec["intercept"]:
        _set_head(model, coef[:-1], float(coef[-1]))
    else:
        _set_head(model, coef, 0.0)
    seconds = time.perf_counter() - t0
    result = TrainResult(history=[EpochRecord(1, objective, None, 0.0, seconds)], epochs=1,
                         stop_reason="tolerance" if sol.converged else "max_epochs",
                         converged=sol.converged, seconds=seconds)
    return result, {"objective": objective, "solver": "scipy linprog (highs)", "status": sol.status}


def solve_penalized(prep) -> tuple[TrainResult, dict]:
    """Fit ``prep.model``'s linear head to the penalized least-squares optimum: (result, exact check)."""
    t0 = time.perf_counter()
    cfg, model, rows = prep.cfg, prep.model, prep.rows
    pen = cfg.model.penalty
    intercept = bool(model.spec["intercept"])
    G, c, n = gram(model, rows)
    ys = rows.moments()[1]
    yss = float(ys["m2"][0]) if intercept else float(ys["rms"][0]) ** 2 * n
    sol = penalized_least_squares(G, c, n, pen.l1, pen.l2, intercept, yss)
    _set_head(model, sol.coef, sol.intercept)
    seconds = time.perf_counter() - t0
    result = TrainResult(history=[EpochRecord(1, sol.mse, None, 0.0, seconds)], epochs=1,
                         stop_reason="tolerance" if sol.converged else "max_epochs",
                         converged=sol.converged, seconds=seconds)
    check = {"objective": sol.objective, "kkt": sol.kkt, "kkt_limit": KKT_RTOL, "sweeps": sol.sweeps,
             "zeros": int((sol.coef == 0).sum())}
    return result, check


def solve_huber(prep) -> tuple[TrainResult, dict, dict]:
    """The Huber M-estimate of ``prep.model``'s linear head (RLM's IRLS); the run's loss takes the delta it used."""
    t0 = time.perf_counter()
    model, delta = prep.model, prep.cfg.loss.delta
    A, y = _rows_in_hand(model, prep.rows)
    sol = huber_irls(A.numpy(), y.numpy(), None if delta is None else delta / HUBER_T)
    coef = torch.as_tensor(sol.coef, dtype=torch.float64)
    _set_head(model, coef[:-1], float(coef[-1])) if model.spec["intercept"] else _set_head(model, coef, 0.0)
    # The metrics, the history and the checkpoint report the Huber loss at the delta of the fit; the
    # IRLS's own test (settled, gradient 0) is the optimality test, not the loop's gradient test.
    prep.loss = Loss("huber", sol.delta)
    prep.plan.start_grad = None
    objective = prep.loss.original(A @ coef, y) if sol.scale > 0 else 0.0
    seconds = time.perf_counter() - t0
    result = TrainResult(history=[EpochRecord(1, objective, None, 0.0, seconds)], epochs=1,
                         stop_reason="tolerance" if sol.converged else "max_epochs",
                         converged=sol.converged, seconds=seconds)
    estimated = delta is None
    check = {"objective": objective, "solver": "IRLS (statsmodels RLM, HuberT" + (", MAD scale)" if estimated else ")"),
             "iterations": sol.iterations, "scale": sol.scale, "delta": sol.delta, "scale_estimated": estimated,
             "gradient": sol.gradient}
    warnings = [] if sol.converged else [f"not converged: the Huber fit's IRLS stopped after {sol.iterations} "
                                         f"iterations: {sol.why}; standard errors, if any, are marked unreliable"]
    uncertainty = {}
    if sol.covariance is not None:
        uncertainty = covariance_uncertainty(model, torch.as_tensor(sol.covariance, dtype=torch.float64), sol.converged)
    else:
        warnings.append("standard errors are not reported: the design is rank deficient or has no more training rows "
                        "than coefficients (RLM's H1 covariance needs (A^T A)^-1 and n > p)")
    check["warnings"] = warnings
    return result, check, uncertainty


def uncertified_warnings(cfg) -> list[str]:
    """The warning of an mae or quantile fit trained by the loop (not the linear program): its optimum is not certified."""
    if cfg.loss.kind not in ("mae", "quantile") or cfg.optimizer.kind == "exact":
        return []
    fix = ("optimizer.kind: auto or exact solves it as a linear program" if cfg.model.kind in ("linear", "polynomial")
           else "a linear or polynomial model with optimizer.kind: auto solves it exactly (a linear program)")
    return [f"the {cfg.loss.kind} optimum is not certified: optimizer {cfg.optimizer.kind} on this non-smooth loss has "
            f"no optimality test, so the fit may end above the minimum; {fix}"]

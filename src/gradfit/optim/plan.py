"""Optimizers and learning-rate rules.

``lr: auto`` means:
- sgd on linear and polynomial models with mse or huber loss: 1.8 / L, where L is the
  largest eigenvalue of the loss's Hessian on the scaled design (the seed lecture's rule;
  any step below 2 / L converges for a quadratic);
- adam / adamw: 0.01 for linear and polynomial models, 0.001 for MLPs;
- lbfgs: 1 (the strong-Wolfe line search picks the step);
- anything else (sgd on an MLP, sgd with mae): an error asking for a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradfit.errors import ConfigError
from gradfit.optim import first_order
from gradfit.optim.lbfgs import LBFGS
from gradfit.optim.lm import LevenbergMarquardt

# One L-BFGS "epoch" is one optimizer.step(): up to this many iterations, each with its line
# search (the curvature memory carries over from one step to the next).
LBFGS_ITERS_PER_EPOCH = 20
# On a large design every iteration is at least one pass over it, and most of the time: epochs
# of a few iterations let the stopping rule (training.fit) end the run within a few passes of
# convergence instead of up to 3 x 20 iterations after it (repeated points cost no pass: see
# models.passes.LinearMSE). Small designs (NIST's) keep 20.
LBFGS_LARGE_DESIGN_VALUES = 1 << 22
LBFGS_LARGE_ITERS_PER_EPOCH = 4


@dataclass
class OptimizerPlan:
    kind: str
    lr: float
    lr_rule: str  # how lr was chosen: "given", "auto: 1.8/L (L=...)", ...
    iters_per_epoch: int = LBFGS_ITERS_PER_EPOCH  # lbfgs: iterations per optimizer.step()
    # The training loss's largest gradient component at the starting weights (scaled units), the
    # reference of the relative gradient test behind ``converged`` (results/diagnostics.py); None
    # where it is not taken (rows streamed or over several processes).
    start_grad: float | None = None


def largest_hessian_eigenvalue(Z: torch.Tensor, intercept: bool, loss_kind: str, chunk: int = 1 << 14, reduce=None) -> float:
    """Largest eigenvalue of the mean-loss Hessian for a linear head on design Z (``reduce``: sum over ranks)."""
    m = Z.shape[1] + (1 if intercept else 0)
    G = torch.zeros(m, m, dtype=torch.float64)
    for i in range(0, Z.shape[0], chunk):
        A = Z[i : i + chunk].to("cpu", torch.float64)
        if intercept:
            A = torch.cat([A, torch.ones(A.shape[0], 1, dtype=torch.float64)], dim=1)
        G += A.T @ A
    G /= Z.shape[0] if reduce is None else 1
    if reduce is not None:  # several processes: the Hessian of the mean over every rank's rows
        G = reduce(G) / reduce(Z.shape[0])
    lam = float(torch.linalg.eigvalsh(G)[-1])
    # mean(r^2) has Hessian 2 A^T A / n; huber (0.5 r^2 near zero) at most A^T A / n.
    return 2 * lam if loss_kind == "mse" else lam


def plan(cfg, Z_train: torch.Tensor | None, reduce=None) -> OptimizerPlan:
    """Resolve the learning rate of a config (``auto`` or a number), and lbfgs's iterations per epoch."""
    p = _plan(cfg, Z_train, reduce)
    if p.kind == "lbfgs" and Z_train is not None:
        values = Z_train.numel() if reduce is None else reduce(Z_train.numel())  # every rank: the same count
        if values >= LBFGS_LARGE_DESIGN_VALUES:
            p.iters_per_epoch = LBFGS_LARGE_ITERS_PER_EPOCH
    return p


def _plan(cfg, Z_train: torch.Tensor | None, reduce=None) -> OptimizerPlan:
    oc = cfg.optimizer
    kind = oc.kind
    model_kind = cfg.model.kind
    if oc.lr != "auto":
        return OptimizerPlan(kind, float(oc.lr), "given")
    if kind == "sgd":
        if model_kind not in ("linear", "polynomial") or cfg.loss.kind not in ("mse", "huber"):
            raise ConfigError(
                f"optimizer.lr: 'auto' for sgd is defined for linear and polynomial models with mse or huber "
                f"loss, not a {model_kind} model with {cfg.loss.kind} loss",
                hint="give optimizer.lr a number (e.g. 0.01), or use optimizer.kind: adam",
            )
        L = largest_hessian_eigenvalue(Z_train, cfg.model.intercept, cfg.loss.kind, reduce=reduce)
        return OptimizerPlan(kind, 1.8 / L, f"auto: 1.8/L with L = {L:.6g}")
    if kind in ("adam", "adamw"):
        lr = 0.001 if model_kind == "mlp" else 0.01
        return OptimizerPlan(kind, lr, f"auto: {lr} for {kind} on {model_kind} models")
    return OptimizerPlan(kind, 1.0, f"auto: 1 for {kind}")


def make_optimizer(cfg, params, lr: float, device: torch.device, iters_per_epoch: int = LBFGS_ITERS_PER_EPOCH):
    """An optimizer for the parameters (fused/foreach kernels where they apply).

    sgd, adam and adamw are gradfit's own (optim/first_order.py): the arithmetic of torch.optim's,
    without the 1.3 s that constructing a torch.optim optimizer spends importing torch._dynamo.
    """

    oc = cfg.optimizer
    params = list(params)
    if oc.kind == "sgd":
        return first_order.SGD(
            params,
            lr=lr,
            momentum=oc.momentum or 0.0,
            nesterov=bool(oc.nesterov),
            weight_decay=oc.weight_decay,
        )
    if oc.kind in ("adam", "adamw"):
        betas = tuple(oc.betas) if oc.betas else (0.9, 0.999)
        return first_order.Adam(params, lr=lr, betas=betas, weight_decay=oc.weight_decay, decoupled=oc.kind == "adamw")
    if oc.kind == "lbfgs":
        # gradfit's own L-BFGS: torch's strong-Wolfe search stops at about sqrt(eps) of the
        # parameters, where the loss can no longer show a decrease (see gradfit.lbfgs).

        return LBFGS(params, lr=lr, max_iter=iters_per_epoch, history_size=oc.history_size or 100)
    if oc.kind == "lm":
        # Levenberg-Marquardt on the residuals (gradfit.lm); the loop calls its iterate().

        return LevenbergMarquardt(params)
    raise ConfigError(f"optimizer.kind: {oc.kind!r} is not available for a {cfg.model.kind} model")

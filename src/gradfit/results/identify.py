"""Whether the data pin down a formula model's parameters: the Jacobian at the solution.

J (n, p) of the predictions with respect to the parameters, float64, its columns scaled to unit
norm (so the parameters' units do not matter); its singular values s_1 >= ... >= s_p. A parameter
whose doubling moves the predictions by less than NO_EFFECT of their size has no effect there
(BoxBOD's b2 on a plateau where exp(-b2 x) = 0 on every row). s_p <= RANK_RTOL * s_1: J is rank
deficient (the parameters are not identifiable; standard errors are withheld,
results.uncertainty). s_1 / s_p > ILL_COND: badly conditioned (the data determine one combination
of the parameters poorly; each lost digit of it is lost in the parameters). The combination is the
right singular vector of s_p, its terms of at least NAME_SHARE of its largest named.
"""

from __future__ import annotations

import math

import torch

# The same threshold as results.uncertainty.covariance_unscaled's, times rows and parameters.
RANK_RTOL_ULPS = 1.0
NO_EFFECT = 1e-10  # a parameter whose doubling moves the predictions by less than this share: no effect
ILL_COND = 1e10  # more than 10 of float64's 16 digits lost in the poorly determined combination
NAME_SHARE = 0.05


def combination(names: list[str], v: torch.Tensor) -> str:
    """The direction ``v`` (p,) as text, its small terms left out: '0.71*b1 - 0.71*b2'."""
    big = float(v.abs().max())
    if float(v[int(v.abs().argmax())]) < 0:
        v = -v
    parts = [(float(c), n) for c, n in zip(v.tolist(), names) if abs(c) >= NAME_SHARE * big]
    text = " ".join(f"{'-' if c < 0 else '+'} {abs(c):.2g}*{n}" for c, n in parts).lstrip("+ ")
    return text


def jacobian_warnings(names: list[str], J: torch.Tensor, theta: torch.Tensor, pred: torch.Tensor) -> list[str]:
    """Warnings about the parameters' identifiability from J (n, p) at the solution ``theta`` (p,)
    with predictions ``pred`` (n,) (empty: fine)."""
    n, p = J.shape
    if p == 0 or n == 0 or not bool(torch.isfinite(J).all()):
        return []
    norms = (J * J).sum(0).sqrt()  # (p,)
    # doubling the parameter (or moving it by 1 from 0) moves the predictions by under NO_EFFECT of their size
    reach = norms * torch.where(theta != 0, theta.abs(), torch.ones_like(theta))
    size = float(pred.norm()) or 1.0
    dead = [names[i] for i in range(p) if float(reach[i]) <= NO_EFFECT * size]
    if dead:
        return [f"parameter{'s' if len(dead) > 1 else ''} {', '.join(dead)} "
                f"{'have' if len(dead) > 1 else 'has'} no effect on any prediction at the solution (doubling "
                f"{'them' if len(dead) > 1 else 'it'} moves them by less than {NO_EFFECT:g} of their size): "
                "not identifiable (a standard error shown for it means nothing); the fit may be stuck on a plateau: "
                "give other model.start values or train.starts: N"]
    s_all = torch.linalg.svd(J / norms, full_matrices=False)
    s, Vh = s_all.S, s_all.Vh
    smax, smin = float(s[0]), float(s[-1])
    v = Vh[-1]
    what = combination(names, v)
    if smin <= RANK_RTOL_ULPS * p * max(n, 1) * torch.finfo(torch.float64).eps * smax:
        return [f"the formula's parameters are not identifiable at the solution: the Jacobian has rank "
                f"{int((s > RANK_RTOL_ULPS * p * max(n, 1) * torch.finfo(torch.float64).eps * smax).sum())} of {p}; "
                f"the data do not determine {what} (standard errors withheld); fix one of them (vary: false) or "
                "rewrite the formula"]
    cond = smax / smin
    if cond > ILL_COND:
        return [f"the formula's parameters are poorly determined: the Jacobian's condition number after scaling "
                f"is {cond:.2g}; the data barely determine {what}; expect about {max(0, int(16 - math.log10(cond))):d} "
                "correct digits at most, and wide standard errors"]
    return []


def formula_warnings(model, source) -> list[str]:
    """Identifiability warnings of a fitted formula model over the training rows (one process, in memory)."""
    from gradfit.results.uncertainty import formula_jacobian  # (imported here for start-up time)

    if getattr(source, "dist", None) is not None and source.dist.enabled:
        return []  # (J over several ranks: not reduced here)
    parts = list(source.chunks("train"))
    if not parts:
        return []
    X = torch.cat([X for X, _ in parts])
    with torch.no_grad():
        pred, J = formula_jacobian(model, X)
    theta = model.head.theta.detach().to("cpu", torch.float64)[model.head.varying_index.cpu()]  # (the varying ones, J's columns)
    return jacobian_warnings(model.varying_names(), J, theta, pred)

"""Certified accuracy of formula models and standard errors, against NIST StRD.

Two tables:

1. Nonlinear least squares: the seven lower-difficulty NIST datasets (Misra1a,
   Chwirut2, Chwirut1, Lanczos3, Gauss1, DanWood, Misra1b), each from both of NIST's
   start points. gradfit runs the plain config (the formula as NIST writes it, with
   ``[ ]`` as ``( )`` and ``^`` as ``**``; the start values; ``dtype: float64``; no
   validation split; everything else default, so the optimizer is ``lm``) through the
   library API. Beside it, ``scipy.optimize.least_squares`` with its defaults (trf,
   2-point finite-difference Jacobian) from the same start, in the same run.
   LRE = correct significant digits of the parameters, minimum over them.
2. Standard errors: LRE of gradfit's ``std_errors`` (coefficients.json) against NIST's
   certified standard deviations, on the eleven linear datasets (the plain configs
   of ``bench/accuracy.py``: float64, lbfgs) and the seven nonlinear ones (start 1),
   plus the residual SD.

    python bench/accuracy_nonlinear.py            # both tables (markdown)
    python bench/accuracy_nonlinear.py --json     # one JSON document
    python bench/accuracy_nonlinear.py --hard --no-std-errors   # MGH09 ... Roszman1 (higher difficulty)
    python bench/accuracy_nonlinear.py --hard --no-std-errors --references   # + MINPACK lm and trf columns

``--references`` adds scipy's ``least_squares`` with gradfit's exact Jacobian, tight tolerances
(1e-15) and ``x_scale="jac"``: ``method="lm"`` (MINPACK's lmder, its step bound factor 100) and
``method="trf"``, from the same start: what a tuned classical solver reaches.

Run from anywhere; the data are read from ``data/nist/`` of this repository.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
NIST_DIR = BENCH.parent / "data" / "nist"
sys.path.insert(0, str(BENCH))

import accuracy as linear  # noqa: E402 (after the sys.path entry above)

NONLINEAR = ["Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "DanWood", "Misra1b"]
# higher difficulty (and Roszman1, average): measured with ``--hard`` (or by name)
HARD = ["MGH09", "MGH10", "Thurber", "BoxBOD", "Rat42", "Rat43", "Eckerle4", "Bennett5", "Roszman1"]
lre = linear.lre


def meta(name: str) -> dict:
    return json.loads((NIST_DIR / f"{name}.json").read_text())


def nist_formula(name: str) -> str:
    """NIST's model line as a gradfit formula: drop '+ e', brackets to parentheses, ^ to **."""
    text = meta(name)["model"].strip()
    if text.endswith("+ e"):
        text = text[: -len("+ e")].rstrip()
    return text.replace("[", "(").replace("]", ")").replace("^", "**")


def parameter_names(name: str) -> list[str]:
    return list(meta(name)["certified"])


def plain_formula_config(name: str, start: str) -> dict:
    return {
        "name": f"{name}-{start}",
        "dtype": "float64",
        "data": {"path": str(NIST_DIR / f"{name}.csv"), "split": {"val": 0}},
        "model": {"kind": "formula", "formula": nist_formula(name), "start": meta(name)[start]},
    }


def run_formula(name: str, start: str) -> dict:
    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    cfg = config_from_dict(plain_formula_config(name, start))
    t0 = time.perf_counter()
    run = train(cfg, write=False)
    c = run.coefficients
    names = parameter_names(name)
    return {
        "params": [c["parameters"][k] for k in names],
        "std_errors": [c["std_errors"][k] for k in names] if "std_errors" in c else None,
        "residual_sd": c.get("residual_sd"),
        "epochs": run.metrics["epochs"],
        "stop_reason": run.metrics["stop_reason"],
        "converged": run.metrics["converged"],
        "optimizer": run.config.optimizer.kind,
        "seconds": time.perf_counter() - t0,
    }


def scipy_params(name: str, start: str) -> list[float]:
    """scipy.optimize.least_squares with its defaults, on the same formula (evaluated by gradfit's parser)."""
    import torch
    from scipy.optimize import least_squares

    from gradfit.expr.parser import parse_equation

    expr = parse_equation(nist_formula(name)).right
    data = np.loadtxt(NIST_DIR / f"{name}.csv", delimiter=",", skiprows=1, ndmin=2)
    y, x = data[:, 0], torch.from_numpy(data[:, 1].copy())
    names = parameter_names(name)

    def residuals(b):
        env = {"x": x, **{k: float(v) for k, v in zip(names, b)}}
        return expr.to_torch(env).numpy() - y

    x0 = [meta(name)[start][k] for k in names]
    return list(least_squares(residuals, x0).x)


def reference_params(name: str, start: str, method: str) -> list[float]:
    """scipy.optimize.least_squares(method=...) with the exact Jacobian (gradfit's autograd one),
    tolerances 1e-15 and x_scale="jac", on the same formula and start."""
    import warnings

    import torch
    from scipy.optimize import least_squares

    from gradfit.expr.parser import parse_equation
    from gradfit.optim.lm import jacobian

    expr = parse_equation(nist_formula(name)).right
    data = np.loadtxt(NIST_DIR / f"{name}.csv", delimiter=",", skiprows=1, ndmin=2)
    y, x = torch.from_numpy(data[:, 0].copy()), torch.from_numpy(data[:, 1].copy())
    names = parameter_names(name)

    def r(t):
        return expr.to_torch({"x": x, **{k: t[i] for i, k in enumerate(names)}}) - y

    x0 = [meta(name)[start][k] for k in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (overflow on the way, as trf has from BoxBOD's start 1)
        out = least_squares(lambda b: r(torch.tensor(b)).numpy(), x0, jac=lambda b: jacobian(r, torch.tensor(b))[1].numpy(),
                            method=method, xtol=1e-15, ftol=1e-15, gtol=1e-15, x_scale="jac", max_nfev=20000)
    return list(out.x)


def certified(name: str, what: str = "value") -> list[float]:
    cert = meta(name)["certified"]
    return [cert[k][what] for k in cert]


def measure_nonlinear(names, references: bool = False) -> list[dict]:
    rows = []
    for name in names:
        for start in ("start1", "start2"):
            g = run_formula(name, start)
            row = {
                "dataset": name,
                "start": start,
                "gradfit": lre(g["params"], certified(name)),
                "scipy_least_squares": lre(scipy_params(name, start), certified(name)),
                "epochs": g["epochs"],
                "stop_reason": g["stop_reason"],
                "converged": g["converged"],
                "optimizer": g["optimizer"],
                "seconds": g["seconds"],
                "_run": g,
            }
            if references:
                row.update({f"scipy_{m}_exact": lre(reference_params(name, start, m), certified(name)) for m in ("lm", "trf")})
            rows.append(row)
    return rows


def measure_std_errors(nonlinear_rows) -> list[dict]:
    """Std-error LRE for the linear sets (trained here) and the nonlinear ones (their start1 runs)."""
    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    rows = []
    for name in linear.DATASETS:
        run = train(config_from_dict(linear.plain_config(name)), write=False)
        c = run.coefficients
        se = c["std_errors"]
        est = linear.gradfit_params(name, {"coefficients": se, "intercept": se.get("intercept")})
        sd = [v["sd"] for v in sorted_certified(name)]
        rows.append(_se_row(name, "linear", est, sd, c["residual_sd"], meta(name)["residual_sd"]))
    for r in nonlinear_rows:
        if r["start"] != "start1":
            continue
        g = r["_run"]
        rows.append(
            _se_row(r["dataset"], "nonlinear", g["std_errors"], certified(r["dataset"], "sd"), g["residual_sd"],
                    meta(r["dataset"])["residual_sd"])
        )
    return rows


def sorted_certified(name: str) -> list[dict]:
    cert = meta(name)["certified"]
    return [cert[k] for k in sorted(cert, key=lambda k: int(k[1:]))]


def _se_row(name, kind, est, sd, residual_sd, cert_residual_sd) -> dict:
    return {
        "dataset": name,
        "kind": kind,
        "std_errors": lre(est, sd) if est is not None else 0.0,
        "residual_sd": lre([residual_sd], [cert_residual_sd]),
    }


def tables(nl_rows, se_rows) -> str:
    refs = bool(nl_rows) and "scipy_lm_exact" in nl_rows[0]
    out = [
        "Nonlinear: parameter LRE from NIST's two start points (plain config: formula, start, float64)",
        "",
        "| dataset | start | gradfit (lm) | scipy least_squares | epochs | stop_reason | converged |"
        + (" MINPACK lm (exact J) | trf (exact J) |" if refs else ""),
        "|---|---|---:|---:|---:|---|---|" + ("---:|---:|" if refs else ""),
    ]
    for r in nl_rows:
        out.append(
            f"| {r['dataset']} | {r['start'][-1]} | {r['gradfit']:.1f} | {r['scipy_least_squares']:.1f} "
            f"| {r['epochs']} | {r['stop_reason']} | {r['converged']} |"
            + (f" {r['scipy_lm_exact']:.1f} | {r['scipy_trf_exact']:.1f} |" if refs else "")
        )
    out += [
        "",
        "Standard errors: LRE against NIST's certified standard deviations (minimum over the parameters)",
        "",
        "| dataset | kind | std_errors | residual_sd |",
        "|---|---|---:|---:|",
    ]
    for r in se_rows:
        out.append(f"| {r['dataset']} | {r['kind']} | {r['std_errors']:.1f} | {r['residual_sd']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", default=NONLINEAR, help="nonlinear datasets (default: all seven)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--hard", action="store_true", help="the higher-difficulty datasets (and Roszman1) instead")
    ap.add_argument("--no-std-errors", action="store_true", help="only the nonlinear parameter table")
    ap.add_argument("--references", action="store_true", help="add scipy's lm (MINPACK) and trf with the exact Jacobian")
    args = ap.parse_args(argv)
    if args.hard and args.datasets == NONLINEAR:
        args.datasets = HARD
    unknown = [n for n in args.datasets if n not in NONLINEAR + HARD]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {NONLINEAR + HARD}")
    nl = measure_nonlinear(args.datasets, args.references)
    se = [] if args.no_std_errors else measure_std_errors(nl)
    if args.json:
        print(json.dumps({"nonlinear": [{k: v for k, v in r.items() if k != "_run"} for r in nl], "std_errors": se}, indent=1))
    else:
        print(tables(nl, se))
    return 0 if all(math.isfinite(r["gradfit"]) for r in nl) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Certified accuracy: gradfit on the eleven NIST StRD linear least-squares datasets.

For each dataset, trains gradfit twice through the library API: with the defaults (a config
naming only the data, with no validation split, and the dataset's model: ``dtype`` and
``optimizer.kind`` are ``auto``, and what auto chose is printed) and with a tuned config (the
same plus ``--dtype`` and ``--optimizer``, float64 and lbfgs unless given), and prints the LRE
(correct significant digits against NIST's certified values, the minimum over the parameters)
of each beside numpy ``lstsq`` and scikit-learn ``LinearRegression`` computed in the same run on
the raw powers of x, plus the defaults' metrics.json ``exact.gap`` and ``converged``.

    python bench/accuracy.py                       # the table (markdown)
    python bench/accuracy.py --dtype float32 --optimizer adam   # beside a float32 adam fit
    python bench/accuracy.py --defaults-only       # the defaults alone
    python bench/accuracy.py --json                # one JSON document
    python bench/accuracy.py --robust              # huber and mae defaults against statsmodels and scipy

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

NIST_DIR = Path(__file__).resolve().parent.parent / "data" / "nist"

# name -> (model kind, polynomial degree, intercept)
DATASETS = {
    "Norris": ("linear", 1, True),
    "Pontius": ("polynomial", 2, True),
    "NoInt1": ("linear", 1, False),
    "NoInt2": ("linear", 1, False),
    "Filip": ("polynomial", 10, True),
    "Longley": ("linear", 1, True),
    "Wampler1": ("polynomial", 5, True),
    "Wampler2": ("polynomial", 5, True),
    "Wampler3": ("polynomial", 5, True),
    "Wampler4": ("polynomial", 5, True),
    "Wampler5": ("polynomial", 5, True),
}

# NIST certifies 15 significant digits; an exact match scores that.
MAX_LRE = 15.0


def certified(name: str) -> list[float]:
    """Certified parameters B0..Bk (B1..Bk without intercept), in NIST's order."""
    meta = json.loads((NIST_DIR / f"{name}.json").read_text())
    cert = meta["certified"]
    return [cert[k]["value"] for k in sorted(cert, key=lambda k: int(k[1:]))]


def lre(estimates, values) -> float:
    """Minimum over parameters of -log10(relative error) (absolute where certified is 0), capped at 15."""
    worst = MAX_LRE
    for est, ref in zip(estimates, values):
        if not math.isfinite(est):
            return 0.0
        err = abs(est - ref) / abs(ref) if ref != 0 else abs(est - ref)
        worst = min(worst, MAX_LRE if err == 0 else -math.log10(err))
    return max(worst, 0.0) if worst > -math.inf else 0.0


def plain_config(name: str, dtype: str | None = "float64", optimizer: str | None = "lbfgs") -> dict:
    """The plain config of a NIST dataset: its model, no validation split, and the dtype and
    optimizer given (None: left out, the default, auto)."""
    kind, degree, intercept = DATASETS[name]
    model = {"kind": kind}
    if kind == "polynomial":
        model["degree"] = degree
    if not intercept:
        model["intercept"] = False
    cfg = {"name": name, "data": {"path": str(NIST_DIR / f"{name}.csv"), "split": {"val": 0}}, "model": model}
    if dtype is not None:
        cfg["dtype"] = dtype
    if optimizer is not None:
        cfg["optimizer"] = {"kind": optimizer}
    return cfg


def gradfit_params(name: str, coefficients: dict) -> list[float]:
    """coefficients.json -> [B0, B1, ...] in NIST's order."""
    kind, degree, intercept = DATASETS[name]
    coefs = coefficients["coefficients"]
    if name == "Longley":
        slopes = [coefs[f"x{i}"] for i in range(1, 7)]
    else:
        slopes = [coefs["x" if k == 1 else f"x^{k}"] for k in range(1, degree + 1)]
    return ([coefficients["intercept"]] if intercept else []) + slopes


def raw_design(name: str):
    """(X, y) with X the raw regressors (powers of x, or Longley's six columns), float64."""
    data = np.loadtxt(NIST_DIR / f"{name}.csv", delimiter=",", skiprows=1, ndmin=2)
    y, X = data[:, 0], data[:, 1:]
    degree = DATASETS[name][1]
    if degree > 1:
        X = np.column_stack([X[:, 0] ** k for k in range(1, degree + 1)])
    return X, y


def numpy_params(name: str) -> list[float]:
    X, y = raw_design(name)
    if DATASETS[name][2]:
        X = np.column_stack([np.ones(len(y)), X])
    return list(np.linalg.lstsq(X, y, rcond=None)[0])


def sklearn_params(name: str) -> list[float]:
    from sklearn.linear_model import LinearRegression

    X, y = raw_design(name)
    intercept = DATASETS[name][2]
    reg = LinearRegression(fit_intercept=intercept).fit(X, y)
    return ([float(reg.intercept_)] if intercept else []) + list(reg.coef_)


def run_gradfit(name: str, dtype: str | None, optimizer: str | None, overrides=()) -> dict:
    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    cfg = config_from_dict(plain_config(name, dtype, optimizer), overrides)
    t0 = time.perf_counter()
    run = train(cfg, write=False)
    m = run.metrics
    return {
        "params": gradfit_params(name, run.coefficients),
        "gap": m["exact"]["gap"],
        "epochs": m["epochs"],
        "stop_reason": m["stop_reason"],
        "converged": m["converged"],
        "auto_chose": cfg.auto_chosen(),
        "seconds": time.perf_counter() - t0,
    }


def measure(names, dtype="float64", optimizer="lbfgs", overrides=(), tuned=True) -> list[dict]:
    """One row per dataset: the defaults' fit and (``tuned``) the fit with ``dtype`` and ``optimizer``."""
    rows = []
    for name in names:
        ref = certified(name)
        d = run_gradfit(name, None, None, overrides)
        row = {
            "dataset": name,
            "defaults": lre(d["params"], ref),
            "defaults_auto_chose": d["auto_chose"],
            "defaults_exact_gap": d["gap"],
            "defaults_converged": d["converged"],
            "defaults_epochs": d["epochs"],
            "defaults_stop_reason": d["stop_reason"],
            "defaults_seconds": d["seconds"],
            "numpy_lstsq": lre(numpy_params(name), ref),
            "sklearn_LinearRegression": lre(sklearn_params(name), ref),
        }
        if tuned:
            g = run_gradfit(name, dtype, optimizer, overrides)
            row.update({"tuned": lre(g["params"], ref), "tuned_exact_gap": g["gap"], "tuned_converged": g["converged"],
                        "tuned_epochs": g["epochs"], "tuned_seconds": g["seconds"]})
        rows.append(row)
    return rows


def _chose(auto: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(auto.items())) or "nothing auto"


def table(rows, tuned_label: str | None) -> str:
    tuned = tuned_label is not None
    head = "| dataset | defaults | " + (f"{tuned_label} | " if tuned else "") + \
        "numpy lstsq | sklearn LinearRegression | defaults: exact.gap | converged | epochs |" + \
        (f" {tuned_label}: converged | epochs |" if tuned else "")
    lines = [head, "|---|" + "---:|" * (6 + 3 * tuned)]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['defaults']:.1f} | " + (f"{r['tuned']:.1f} | " if tuned else "")
            + f"{r['numpy_lstsq']:.1f} | {r['sklearn_LinearRegression']:.1f} "
            f"| {r['defaults_exact_gap']:.1e} | {str(r['defaults_converged']).lower()} | {r['defaults_epochs']} |"
            + (f" {str(r['tuned_converged']).lower()} | {r['tuned_epochs']} |" if tuned else "")
        )
    chose = sorted({_chose(r["defaults_auto_chose"]) for r in rows})
    return "\n".join(lines) + "\n\ndefaults: auto chose " + "; ".join(chose)


# Datasets that ship with statsmodels, for the robust losses' defaults (--robust).
ROBUST_DATASETS = ("stackloss", "engel", "statecrime", "longley", "copper")


def robust_data(name: str):
    """(frame with the target column y, X, y) of a statsmodels dataset."""
    import statsmodels.api as sm

    if name == "engel":
        frame = sm.datasets.engel.load_pandas().data.rename(columns={"foodexp": "y"})
    else:
        d = getattr(sm.datasets, name).load_pandas()
        frame = d.exog.assign(y=d.endog).reset_index(drop=True)
    X = frame.drop(columns=["y"]).to_numpy(dtype=np.float64)
    return frame, X, frame["y"].to_numpy(dtype=np.float64)


def digits(got, ref) -> float:
    """Correct significant digits of ``got`` against ``ref`` (the minimum over the entries, capped at 15)."""
    return lre(list(got), list(ref))


def robust_rows(names, tmp: Path) -> list[dict]:
    """Per dataset: the default Huber fit (a config naming data, split.val 0, model linear, loss huber)
    against statsmodels RLM(HuberT) with its defaults and iterated to its fixed point; the default mae
    fit's mean absolute residual against scipy's linprog (HiGHS) optimum."""
    import statsmodels.api as sm
    from scipy.optimize import linprog

    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    rows = []
    for name in names:
        frame, X, y = robust_data(name)
        path = tmp / f"{name}.csv"
        frame.to_csv(path, index=False)
        A = sm.add_constant(X)
        base = {"data": {"path": str(path), "split": {"val": 0}}, "model": {"kind": "linear"}}
        hub = train(config_from_dict({**base, "loss": {"kind": "huber"}}), write=False)
        mae = train(config_from_dict({**base, "loss": {"kind": "mae"}}), write=False)
        c = hub.coefficients
        got = [c["intercept"], *c["coefficients"].values()]
        se = [c["std_errors"][k] for k in ("intercept", *c["coefficients"])]
        loose = sm.RLM(y, A, M=sm.robust.norms.HuberT()).fit()
        tight = sm.RLM(y, A, M=sm.robust.norms.HuberT()).fit(tol=1e-15, maxiter=5000)
        n, k = A.shape
        lp = linprog(np.r_[np.zeros(k), np.ones(2 * n)], A_eq=np.hstack([A, np.eye(n), -np.eye(n)]), b_eq=y,
                     bounds=[(None, None)] * k + [(0, None)] * (2 * n), method="highs")
        best = lp.fun / n
        rows.append({
            "dataset": name, "rows": n,
            "huber_vs_rlm_default": digits(got, loose.params), "huber_vs_rlm_fixed_point": digits(got, tight.params),
            "std_errors_vs_rlm_fixed_point": digits(se, tight.bse), "scale": hub.metrics["exact"]["scale"],
            "delta": hub.metrics["exact"]["delta"], "huber_converged": hub.metrics["converged"],
            "rlm_default_iterations": int(loose.fit_history["iteration"]),
            "mae_relative_excess": (mae.metrics["train"]["mae"] - best) / best, "mae_converged": mae.metrics["converged"],
        })
    return rows


def robust_table(rows) -> str:
    lines = ["| dataset | rows | huber vs RLM default | vs RLM fixed point | std errors | scale | delta | converged "
             "| mae - LP optimum (relative) | converged |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['rows']} | {r['huber_vs_rlm_default']:.1f} | {r['huber_vs_rlm_fixed_point']:.1f} "
                     f"| {r['std_errors_vs_rlm_fixed_point']:.1f} | {r['scale']:.6g} | {r['delta']:.6g} "
                     f"| {str(r['huber_converged']).lower()} | {r['mae_relative_excess']:.1e} | {str(r['mae_converged']).lower()} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", default=list(DATASETS), help="default: all eleven")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="the tuned config's dtype")
    ap.add_argument("--optimizer", default="lbfgs", help="the tuned config's optimizer.kind (default lbfgs)")
    ap.add_argument("--defaults-only", action="store_true", help="the defaults' fits alone, no tuned config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra KEY=VALUE config override")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--robust", action="store_true", help="the huber and mae defaults on statsmodels' datasets instead")
    args = ap.parse_args(argv)
    if args.robust:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            rows = robust_rows(ROBUST_DATASETS, Path(tmp))
        print(json.dumps(rows, indent=1) if args.json else
              "gradfit defaults (data with split.val 0, model linear, loss huber or mae); digits = correct "
              "significant digits, minimum over the coefficients\n\n" + robust_table(rows))
        return 0
    unknown = [n for n in args.datasets if n not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    tuned = not args.defaults_only
    rows = measure(args.datasets, args.dtype, args.optimizer, args.overrides, tuned)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        label = f"{args.dtype} {args.optimizer}" if tuned else None
        print("gradfit: defaults = a config naming only data (data.split.val: 0) and model"
              + (f"; tuned = the same with dtype {args.dtype}, optimizer {args.optimizer}" if tuned else "")
              + "; LRE = correct significant digits (max 15)\n")
        print(table(rows, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())

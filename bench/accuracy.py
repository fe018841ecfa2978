"""Certified accuracy: gradfit on the eleven NIST StRD linear least-squares datasets.

For each dataset, trains gradfit with the plain config (the dataset's model, ``dtype: float64``,
``optimizer: {kind: lbfgs}``, no validation split, everything else default) through the library
API, and prints the LRE (correct significant digits against NIST's certified values, the
minimum over the parameters) beside numpy ``lstsq`` and scikit-learn ``LinearRegression``
computed in the same run on the raw powers of x, plus metrics.json's ``exact.gap``.

    python bench/accuracy.py                       # the table (markdown)
    python bench/accuracy.py --dtype float32 --optimizer adam   # the defaults, for the honest gap
    python bench/accuracy.py --json                # one JSON document

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


def plain_config(name: str, dtype: str = "float64", optimizer: str = "lbfgs") -> dict:
    """The plain config of a NIST dataset: its model, dtype, optimizer, no validation split."""
    kind, degree, intercept = DATASETS[name]
    model = {"kind": kind}
    if kind == "polynomial":
        model["degree"] = degree
    if not intercept:
        model["intercept"] = False
    return {
        "name": name,
        "dtype": dtype,
        "data": {"path": str(NIST_DIR / f"{name}.csv"), "split": {"val": 0}},
        "model": model,
        "optimizer": {"kind": optimizer},
    }


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


def run_gradfit(name: str, dtype: str, optimizer: str, overrides=()) -> dict:
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
        "seconds": time.perf_counter() - t0,
    }


def measure(names, dtype="float64", optimizer="lbfgs", overrides=()) -> list[dict]:
    rows = []
    for name in names:
        ref = certified(name)
        g = run_gradfit(name, dtype, optimizer, overrides)
        rows.append(
            {
                "dataset": name,
                "gradfit": lre(g["params"], ref),
                "numpy_lstsq": lre(numpy_params(name), ref),
                "sklearn_LinearRegression": lre(sklearn_params(name), ref),
                "exact_gap": g["gap"],
                "epochs": g["epochs"],
                "stop_reason": g["stop_reason"],
                "seconds": g["seconds"],
            }
        )
    return rows


def table(rows) -> str:
    lines = [
        "| dataset | gradfit | numpy lstsq | sklearn LinearRegression | exact.gap | epochs | stop_reason |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['gradfit']:.1f} | {r['numpy_lstsq']:.1f} | {r['sklearn_LinearRegression']:.1f} "
            f"| {r['exact_gap']:.1e} | {r['epochs']} | {r['stop_reason']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", default=list(DATASETS), help="default: all eleven")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--optimizer", default="lbfgs", help="optimizer.kind (default lbfgs)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra KEY=VALUE config override")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    unknown = [n for n in args.datasets if n not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    rows = measure(args.datasets, args.dtype, args.optimizer, args.overrides)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"gradfit: dtype {args.dtype}, optimizer {args.optimizer}; LRE = correct significant digits (max 15)\n")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

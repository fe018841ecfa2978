"""Issue 16: defaults that reach the optimum, converged that means converged, warnings about the design.

Known answers: statsmodels OLS on its longley data and scikit-learn's diabetes.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gradfit.config.loading import config_from_dict
from gradfit.train.run import train

sm = pytest.importorskip("statsmodels.api")
datasets = pytest.importorskip("sklearn.datasets")


def _longley() -> pd.DataFrame:
    return sm.datasets.longley.load_pandas().data


def _diabetes() -> pd.DataFrame:
    X, y = datasets.load_diabetes(return_X_y=True, as_frame=True)
    return X.assign(y=y)


def _fit(path, target, model, **extra):
    raw = {"data": {"path": str(path), "target": target, "split": {"val": 0}}, "model": model, "device": "cpu", **extra}
    return train(config_from_dict(raw), write=False)


def _design(df, target, degree):
    X = df.drop(columns=[target])
    if degree == 2:
        from sklearn.preprocessing import PolynomialFeatures

        pf = PolynomialFeatures(2, include_bias=False)
        X = pd.DataFrame(pf.fit_transform(X), columns=[n.replace(" ", "*") for n in pf.get_feature_names_out(X.columns)])
    return X


def _digits(a, b):
    return -np.log10(np.abs(a - b) / np.abs(b) + 1e-300)


@pytest.mark.parametrize("which, target, model", [
    ("longley", "TOTEMP", {"kind": "linear"}),
    ("diabetes", "y", {"kind": "linear"}),
    ("diabetes-nosex", "y", {"kind": "polynomial", "degree": 2}),  # (sex is 0/1: sex^2 would be aliased)
])
def test_defaults_equal_ols(tmp_path, which, target, model):
    df = _longley() if which == "longley" else _diabetes()
    if which == "diabetes-nosex":
        df = df.drop(columns=["sex"])
    path = tmp_path / f"{which}.csv"
    df.to_csv(path, index=False)
    run = _fit(path, target, model)
    assert run.config.optimizer.kind == "lbfgs" and run.config.dtype == "float64"
    assert run.config.auto_chosen() == {"optimizer.kind": "lbfgs", "dtype": "float64"}
    assert run.metrics["converged"] and run.metrics["warnings"] == []
    X = _design(df, target, model.get("degree", 1))
    ols = sm.OLS(df[target], sm.add_constant(X)).fit()
    c = run.coefficients
    got = np.array([c["intercept"]] + [c["coefficients"][n] for n in X.columns])
    want = ols.params.to_numpy()
    scale = np.abs(want).max()  # (terms near zero: digits relative to the largest coefficient)
    assert np.all(np.abs(got - want) <= 1e-10 * np.maximum(np.abs(want), 1e-3 * scale)), _digits(got, want)
    se = np.array([c["std_errors"]["intercept"]] + [c["std_errors"][n] for n in X.columns])
    assert np.allclose(se, ols.bse.to_numpy(), rtol=1e-8, atol=0)
    assert c["std_errors_reliable"] is True


def test_under_trained_fit_is_not_converged(tmp_path, cli):
    path = tmp_path / "diabetes.csv"
    _diabetes().to_csv(path, index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{path: {path}, split: {{val: 0}}}}\nmodel: {{kind: linear}}\n"
                   "optimizer: {kind: adam}\ntrain: {epochs: 20}\ndevice: cpu\n")
    r = cli("train", cfg, "--out", tmp_path / "r")
    assert r.exit_code == 0
    assert "warning: not converged" in r.stderr and "optimizer adam" in r.stderr and "epoch cap" in r.stderr
    assert "withheld" in r.stdout
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["converged"] is False and any("lbfgs" in w for w in m["warnings"])
    c = json.loads((tmp_path / "r" / "coefficients.json").read_text())
    assert c["std_errors_reliable"] is False
    r = cli("train", cfg, "--out", tmp_path / "r2", "--strict")
    assert r.exit_code == 3


def test_strict_exits_0_without_warnings(tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {synthetic: {kind: polynomial, coefficients: [3, 2, 1], noise: 0.1}}\n"
                   "model: {kind: polynomial, degree: 2}\ndevice: cpu\n")
    r = cli("train", cfg, "--out", tmp_path / "r", "--strict")
    assert r.exit_code == 0, r.stderr
    assert "auto chose: optimizer.kind lbfgs, dtype float64" in r.stdout


def test_duplicated_columns_are_named(tmp_path):
    df = _diabetes().assign(bmi2=lambda d: 2 * d["bmi"])
    path = tmp_path / "dup.csv"
    df.to_csv(path, index=False)
    run = _fit(path, "y", {"kind": "linear"})
    aliased = [w for w in run.metrics["warnings"] if w.startswith("terms") and "aliased" in w]
    assert len(aliased) == 1 and "bmi, bmi2" in aliased[0] and "age" not in aliased[0]
    assert any("standard errors are not reported" in w for w in run.metrics["warnings"])
    assert "std_errors" not in run.coefficients


def test_binary_squared_is_named(tmp_path):
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=50), rng.integers(0, 2, 50).astype(float)
    path = tmp_path / "b.csv"
    pd.DataFrame({"x": x, "g": g, "y": 1 + x + g + rng.normal(size=50) * 0.1}).to_csv(path, index=False)
    run = _fit(path, "y", {"kind": "polynomial", "degree": 2})
    assert any("g^2" in w and "constant" in w for w in run.metrics["warnings"]), run.metrics["warnings"]


def test_more_parameters_than_rows(tmp_path):
    path = tmp_path / "s.csv"
    _diabetes().iloc[:8].to_csv(path, index=False)
    run = _fit(path, "y", {"kind": "linear"})
    assert any("11 coefficients but only 8 training rows" in w for w in run.metrics["warnings"]), run.metrics["warnings"]


def test_constant_at_float32_is_named(tmp_path):
    path = tmp_path / "big.csv"
    i = np.arange(20) % 2
    pd.DataFrame({"x": 1e8 + i, "y": i + np.linspace(0, 0.1, 20)}).to_csv(path, index=False)
    run = _fit(path, "y", {"kind": "linear"}, dtype="float32", data={"path": str(path), "standardize": False,
                                                                      "split": {"val": 0}})
    assert any("x is constant at float32" in w for w in run.metrics["warnings"]), run.metrics["warnings"]


def test_explicit_values_keep_their_meaning():
    raw = {"data": {"path": "a.csv"}, "model": {"kind": "polynomial"}, "dtype": "float32", "optimizer": {"kind": "adam"}}
    cfg = config_from_dict(raw)
    assert cfg.dtype == "float32" and cfg.optimizer.kind == "adam" and cfg.auto_chosen() == {}
    mlp = config_from_dict({"data": {"path": "a.csv"}, "model": {"kind": "mlp"}})
    assert mlp.dtype == "float32" and mlp.optimizer.kind == "adam"
    mae = config_from_dict({"data": {"path": "a.csv"}, "model": {"kind": "linear"}, "loss": {"kind": "mae"}})
    assert mae.optimizer.kind == "exact" and mae.dtype == "float64"  # (the linear program)
    huber = config_from_dict({"data": {"path": "a.csv"}, "model": {"kind": "linear"}, "loss": {"kind": "huber"}})
    assert huber.optimizer.kind == "exact" and huber.dtype == "float64"  # (RLM's IRLS, its scale estimated)
    huber = config_from_dict({"data": {"path": "a.csv"}, "model": {"kind": "linear"}, "loss": {"kind": "huber", "delta": 1}})
    assert huber.optimizer.kind == "lbfgs" and huber.dtype == "float64"
    batched = config_from_dict({"data": {"path": "a.csv"}, "model": {"kind": "linear"}, "train": {"batch_size": 32}})
    assert batched.optimizer.kind == "adam"


def test_float32_coefficients_that_lost_their_digits_say_so():
    """Wampler4 (NIST, certified coefficients all 1): float32 Adam resolves the fitted values
    (the gap test holds), not the ill-conditioned degree-5 coefficients; the run says how many
    digits they keep. The defaults reach the certified values and say nothing."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "nist" / "Wampler4.csv"
    model = {"kind": "polynomial", "degree": 5}
    run = _fit(path, "y", model, dtype="float32", optimizer={"kind": "adam"})
    digits = [w for w in run.metrics["warnings"] if "significant digits" in w]
    assert len(digits) == 1, run.metrics["warnings"]
    shown = float(digits[0].split("to only ")[1].split(" ")[0])
    coefs = run.coefficients["coefficients"] | {"intercept": run.coefficients["intercept"]}
    worst = max(abs(v - 1.0) for v in coefs.values())  # the certified values are 1
    assert shown == pytest.approx(max(-np.log10(worst), 0.0), abs=0.15)
    default = _fit(path, "y", model)
    assert not [w for w in default.metrics["warnings"] if "significant digits" in w]
    assert all(abs(v - 1.0) < 1e-8 for v in (default.coefficients["coefficients"] | {"i": default.coefficients["intercept"]}).values())

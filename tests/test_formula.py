"""Formula models: planted parameters, NIST certified values, the checkpoint round trip, refused formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gradfit.config.loading import config_from_dict
from gradfit.errors import ConfigError, DataError, TrainingError
from gradfit.train.run import train

NIST = Path(__file__).resolve().parents[1] / "data" / "nist"


def lre(est: float, ref: float) -> float:
    err = abs(est - ref) / abs(ref)
    return 15.0 if err == 0 else -math.log10(err)


def nist_config(name: str, start: str = "start1", **model) -> dict:
    meta = json.loads((NIST / f"{name}.json").read_text())
    formula = meta["model"].replace(" + e", "").replace("[", "(").replace("]", ")")
    return {
        "name": name,
        "dtype": "float64",
        "data": {"path": str(NIST / f"{name}.csv"), "split": {"val": 0}},
        "model": {"kind": "formula", "formula": formula, "start": meta[start], **model},
    }


@pytest.fixture
def decay_csv(tmp_path) -> Path:
    """y = 5 * exp(-0.7 * t) + 1.5 with a little noise, and an unused column."""
    g = np.random.default_rng(0)
    t = np.linspace(0, 6, 80)
    y = 5 * np.exp(-0.7 * t) + 1.5 + 0.01 * g.standard_normal(t.size)
    path = tmp_path / "decay.csv"
    path.write_text("t,other,y\n" + "\n".join(f"{float(a)!r},{i},{float(b)!r}" for i, (a, b) in enumerate(zip(t, y))) + "\n")
    return path


def decay_config(path: Path, **over) -> dict:
    cfg = {
        "name": "decay",
        "dtype": "float64",
        "data": {"path": str(path), "split": {"val": 0.25}},
        "model": {"kind": "formula", "formula": "y = a * exp(-k * t) + c", "start": {"a": 1, "k": 0.3}},
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


# ---------------------------------------------------------------- fitting


def test_planted_parameters_match_scipy_curve_fit(decay_csv):
    from scipy.optimize import curve_fit

    run = train(config_from_dict(decay_config(decay_csv)), write=False)
    assert run.config.optimizer.kind == "lm"  # the default for formula models with mse loss
    assert run.metrics["stop_reason"] == "tolerance"
    p = run.coefficients["parameters"]
    assert list(p) == ["a", "k", "c"]
    assert p["a"] == pytest.approx(5, rel=0.01) and p["k"] == pytest.approx(0.7, rel=0.01)
    # the same rows scipy sees: the training split
    data = np.loadtxt(decay_csv, delimiter=",", skiprows=1)
    from gradfit.data.split import split_rows

    tr = split_rows(len(data), 0.25, 0.0, 0).train.numpy()
    ref, cov = curve_fit(lambda t, a, k, c: a * np.exp(-k * t) + c, data[tr, 0], data[tr, 2], p0=[1, 0.3, 1])
    assert [p["a"], p["k"], p["c"]] == pytest.approx(list(ref), rel=1e-7)
    # curve_fit's covariance is the same sigma^2 (J^T J)^-1
    se = run.coefficients["std_errors"]
    assert [se["a"], se["k"], se["c"]] == pytest.approx(list(np.sqrt(np.diag(cov))), rel=1e-5)
    assert run.coefficients["dof"] == len(tr) - 3
    assert run.coefficients["inputs"] == ["t"]
    assert run.model.spec["features"] == ["t"]  # the unused column is never read


@pytest.mark.parametrize("name", ["Misra1a", "DanWood"])
@pytest.mark.parametrize("start", ["start1", "start2"])
def test_nist_certified_values(name, start):
    meta = json.loads((NIST / f"{name}.json").read_text())
    run = train(config_from_dict(nist_config(name, start)), write=False)
    c = run.coefficients
    for k, cert in meta["certified"].items():
        assert lre(c["parameters"][k], cert["value"]) >= 7, k
        assert lre(c["std_errors"][k], cert["sd"]) >= 5, k
    assert lre(c["residual_sd"], meta["residual_sd"]) >= 5
    assert c["dof"] == meta["degrees_of_freedom"]


@pytest.mark.parametrize(
    "optimizer", [{"kind": "lbfgs"}, {"kind": "adam", "lr": 0.05}]
)
def test_other_optimizers_fit_formulas_too(decay_csv, optimizer):
    cfg = decay_config(decay_csv, optimizer=optimizer, train={"epochs": 3000})
    run = train(config_from_dict(cfg), write=False)
    assert run.config.optimizer.kind == optimizer["kind"]
    assert run.coefficients["parameters"]["k"] == pytest.approx(0.7, rel=0.02)


def test_other_losses_give_no_standard_errors(decay_csv):
    cfg = decay_config(decay_csv, loss={"kind": "huber", "delta": 0.1}, optimizer={"kind": "lbfgs"})
    run = train(config_from_dict(cfg), write=False)
    assert run.config.optimizer.kind == "lbfgs"
    assert "std_errors" not in run.coefficients and "parameters" in run.coefficients
    assert run.coefficients["parameters"]["a"] == pytest.approx(5, rel=0.02)


def test_lm_jacobian_is_the_finite_difference_one(decay_csv):
    from gradfit.results.uncertainty import formula_jacobian

    run = train(config_from_dict(decay_config(decay_csv, train={"epochs": 1})), write=False)
    X = run.model.design(torch.linspace(0, 6, 9)[:, None]).double()
    pred, J = formula_jacobian(run.model, X)
    assert torch.equal(pred, run.model.head.evaluate(X, run.model.head.theta.detach().double()))
    theta = run.model.head.theta.detach().double()
    h = 1e-6
    for j in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[j] = h * max(1.0, abs(float(theta[j])))
        fd = (run.model.head.evaluate(X, theta + e) - run.model.head.evaluate(X, theta - e)) / (2 * e[j])
        assert torch.allclose(J[:, j], fd, rtol=1e-6, atol=1e-8)


def test_float32_run_and_synthetic_data():
    cfg = {
        "data": {"synthetic": {"kind": "polynomial", "coefficients": [1, 2], "noise": 0.01, "n_samples": 100}},
        "model": {"kind": "formula", "formula": "y = m * x + q"},
    }
    run = train(config_from_dict(cfg), write=False)
    p = run.coefficients["parameters"]
    assert p["m"] == pytest.approx(2, abs=0.01) and p["q"] == pytest.approx(1, abs=0.01)
    assert run.model.head.theta.dtype == torch.float32


# ---------------------------------------------------------------- round trip


def test_predict_from_the_checkpoint_alone_is_the_formula_by_hand(decay_csv, tmp_path, cli):
    out = tmp_path / "run"
    r = cli("train", _write(tmp_path, decay_config(decay_csv)), "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    coefs = json.loads((out / "coefficients.json").read_text())
    assert coefs["model"] == "formula" and coefs["formula"] == "y = a * exp(-k * t) + c"
    assert set(coefs) >= {"target", "parameters", "std_errors", "ci95", "residual_sd", "dof"}
    # the checkpoint alone: move the data away, predict on a new file
    new = tmp_path / "new.csv"
    t = np.array([0.0, 0.5, 2.25, 10.0, -1.0])
    new.write_text("t\n" + "\n".join(repr(float(v)) for v in t) + "\n")
    decay_csv.unlink()
    pred_file = tmp_path / "pred.csv"
    r = cli("predict", out, "--data", new, "--out", pred_file)
    assert r.exit_code == 0, r.output
    import pandas as pd

    got = pd.read_csv(pred_file)["prediction"].to_numpy()
    p = coefs["parameters"]
    by_hand = p["a"] * np.exp(-p["k"] * t) + p["c"]
    # torch's exp and numpy's (each build its own SIMD code) differ by an ulp or two; parameters
    # rounded on their way through coefficients.json would show far above 1e-14.
    np.testing.assert_allclose(got, by_hand, rtol=1e-14, atol=0)
    import gradfit

    lm = gradfit.load_model(out)
    assert lm.coefficients() == coefs
    np.testing.assert_allclose(lm.predict(pd.DataFrame({"t": t})), by_hand, rtol=1e-14)


def test_eval_on_the_held_out_rows(decay_csv, tmp_path, cli):
    out = tmp_path / "run"
    assert cli("train", _write(tmp_path, decay_config(decay_csv)), "--out", out, "--quiet").exit_code == 0
    r = cli("eval", out, "--json")
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(r.stdout)["val"]["mse"] == pytest.approx(metrics["val"]["mse"], rel=1e-12)


def test_summary_shows_parameters_and_standard_errors(decay_csv, tmp_path, cli):
    r = cli("train", _write(tmp_path, decay_config(decay_csv)), "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "formula model, mse loss, lm on" in r.stdout
    assert "std error" in r.stdout and "95% interval" in r.stdout and "degrees of freedom" in r.stdout
    for name in ("a", "k", "c"):
        assert f"\n{name} " in r.stdout


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "formula.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


# ---------------------------------------------------------------- refused


@pytest.mark.parametrize(
    "formula, expected",
    [
        ("y = a * foo(t)", "unknown function 'foo'"),
        ("y = a * t.__class__", "attribute access is not allowed"),
        ("y = __import__('os')", "unknown function '__import__'"),
        ("y = a * __t", "this name is not allowed: '__t'"),
        ("y = a * exp(-k * t", "syntax error"),
        ("y = a ^ t", "the operator '^' is not allowed"),
        ("2 * y = a * t", "left side of a formula must be the target column's name"),
        ("y = y * a", "the target 'y' also appears on the right side"),
    ],
)
def test_refused_formulas_exit_1_before_training(decay_csv, tmp_path, cli, formula, expected):
    cfg = decay_config(decay_csv)
    cfg["model"] = {"kind": "formula", "formula": formula}
    out = tmp_path / "run"
    r = cli("train", _write(tmp_path, cfg), "--out", out)
    assert r.exit_code == 1
    assert expected in " ".join(r.stderr.split())  # rich wraps long lines
    assert formula.split("=")[-1].strip() in r.stderr or expected.startswith(("left", "the target"))  # the offending text
    assert "Traceback" not in r.stderr
    assert not out.exists()  # refused before training: no run directory


@pytest.mark.parametrize(
    "model, data, expected, err",
    [
        ({"formula": "z = a * t"}, {}, "the formula's target 'z' is not a column", DataError),
        ({"formula": "y = a * u"}, {}, "uses no column", DataError),
        ({"formula": "y = t * other"}, {}, "has no parameters", ConfigError),
        ({"formula": "y = a * t", "start": {"t": 1}}, {}, "is a column", ConfigError),
        ({"formula": "y = a * t + b * other"}, {"features": ["t"]}, "which data.features leaves out", ConfigError),
        ({"formula": "y = a * t"}, {"target": "other"}, "data.target is 'other'", ConfigError),
    ],
)
def test_names_checked_against_the_data_before_training(decay_csv, model, data, expected, err):
    cfg = decay_config(decay_csv)
    cfg["model"] = {"kind": "formula", **model}
    cfg["data"].update(data)
    with pytest.raises(err, match=expected.replace("(", r"\(").replace(")", r"\)")):
        train(config_from_dict(cfg), write=False)


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"model": {"kind": "formula", "formula": "y = a * t", "start": {"b": 1}}}, "'b' does not appear in the formula"),
        ({"optimizer": {"kind": "lm", "lr": 0.1}}, "takes no learning rate"),
        ({"optimizer": {"lr": 0.1}}, "takes no learning rate"),
        ({"loss": {"kind": "mae"}, "optimizer": {"kind": "lm"}}, "mse loss only"),
    ],
)
def test_config_refusals(decay_csv, over, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(decay_config(decay_csv, **over))


def test_non_finite_start_is_reported(decay_csv):
    cfg = decay_config(decay_csv)
    cfg["model"] = {"kind": "formula", "formula": "y = a * log(k * t) + c", "start": {"k": -1}}
    with pytest.raises(TrainingError, match=r"not finite at the start point \(a=1, k=-1, c=1\)"):
        train(config_from_dict(cfg), write=False)


def test_non_finite_derivative_at_the_start_is_reported(decay_csv):
    cfg = decay_config(decay_csv)
    cfg["model"] = {"kind": "formula", "formula": "y = a * sqrt(k) * t + c", "start": {"k": 0}}
    with pytest.raises(TrainingError, match=r"derivative with respect to .*k.* is not finite at the start point \(a=1, k=0, c=1\)"):
        train(config_from_dict(cfg), write=False)

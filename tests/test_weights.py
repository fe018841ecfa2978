"""Observation weights (data.weights): WLS against statsmodels, formula fits against scipy's
curve_fit(sigma=...), sigma vs weights, the weighted metrics, eval and predict, bad weights, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, run_gradfit, table_config
from gradfit.config.loading import config_from_dict
from gradfit.errors import ConfigError, DataError
from gradfit.results.evaluate import evaluate, predict_file
from gradfit.results.inference import read_summary
from gradfit.train.run import train


def config(data: dict, model: dict | None = None, **over) -> dict:
    return table_config(data, model, epochs=300, **over)


def table(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """A numeric and a text column, heteroscedastic noise, and the weights 1/variance that fit it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 1.5, n)
    city = rng.choice(["a", "b", "c"], n)
    w = rng.uniform(0.2, 5.0, n)
    y = 3.0 - 1.5 * x + np.select([city == "b", city == "c"], [0.7, -1.2], 0.0) + rng.normal(size=n) / np.sqrt(w)
    return pd.DataFrame({"x": x, "city": city, "w": w, "y": y})


def fit(tmp: Path, frame: pd.DataFrame, data: dict | None = None, model: dict | None = None, name: str = "run", **over):
    path = tmp / f"{name}.csv"
    frame.to_csv(path, index=False)
    return train(config_from_dict(config({"path": str(path), "weights": "w", **(data or {})}, model, **over)), out=tmp / name)


def params(run) -> dict:
    c = run.coefficients
    return {"Intercept": c["intercept"], **c["coefficients"]}


@pytest.fixture(scope="module")
def wls(tmp_path_factory):
    import statsmodels.formula.api as smf

    tmp = tmp_path_factory.mktemp("wls")
    d = table()
    run = fit(tmp, d)
    return run, smf.wls("y ~ x + city", data=d, weights=d["w"]).fit(), d, tmp


def test_wls_equals_statsmodels_with_a_category(wls):
    run, ref, _, _ = wls
    got = params(run)
    assert set(got) == set(ref.params.index)  # (the weights column is no feature)
    for name, value in ref.params.items():
        assert got[name] == pytest.approx(value, rel=1e-10)
    se = run.coefficients["std_errors"]
    for name, value in ref.bse.items():
        assert se["intercept" if name == "Intercept" else name] == pytest.approx(value, rel=1e-8)
    assert run.coefficients["dof"] == ref.df_resid
    m = run.metrics
    assert m["weights"] == {"column": "w", "are": "weights"}
    assert m["train"]["weighted"] is True
    assert m["train"]["r2"] == pytest.approx(ref.rsquared, rel=1e-10)
    assert m["train"]["mse"] == pytest.approx(ref.ssr / ref.model.weights.sum(), rel=1e-10)
    assert m["converged"] is True and abs(m["exact"]["gap"]) < 1e-12


def test_summary_equals_statsmodels_wls(wls):
    run, ref, _, _ = wls
    s = read_summary(run.run_dir)
    assert s["method"] == "WLS"
    for key, want in (("r2", ref.rsquared), ("adj_r2", ref.rsquared_adj), ("f_stat", ref.fvalue), ("ssr", ref.ssr),
                      ("scale", ref.scale), ("log_likelihood", ref.llf), ("aic", ref.aic), ("bic", ref.bic)):
        assert s[key] == pytest.approx(want, rel=1e-9), key
    for name, value in ref.bse.items():
        assert s["coefficients"]["intercept" if name == "Intercept" else name]["std_err"] == pytest.approx(value, rel=1e-8)


def test_predict_interval_is_for_a_new_row_of_weight_1(wls):
    run, ref, d, tmp = wls
    new = d.drop(columns=["w", "y"]).head(6)  # predict needs no weights column
    new.to_csv(tmp / "new.csv", index=False)
    pr = predict_file(run.run_dir, tmp / "new.csv", interval=0.95)
    got = pr.frame
    assert any("weight 1" in n for n in pr.notes)
    want = ref.get_prediction(new).summary_frame(alpha=0.05)  # (statsmodels' default: weights 1)
    np.testing.assert_allclose(got["prediction"], want["mean"], rtol=1e-10)
    for col in ("mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-8)


def test_eval_on_a_file_reports_weighted_metrics(wls):
    run, ref, d, tmp = wls
    ev = evaluate(run.run_dir, tmp / "run.csv")
    m = ev.metrics["data"]
    assert m["weighted"] is True and m["r2"] == pytest.approx(ref.rsquared, rel=1e-10)
    assert m["mae"] == pytest.approx(float((d["w"] * ref.resid.abs()).sum() / d["w"].sum()), rel=1e-10)
    assert any("weighted" in n for n in ev.notes)
    d.drop(columns=["w"]).to_csv(tmp / "no_w.csv", index=False)
    ev = evaluate(run.run_dir, tmp / "no_w.csv")  # without the column: the plain means, and a note
    assert "weighted" not in ev.metrics["data"] and any("unweighted" in n for n in ev.notes)
    assert ev.metrics["data"]["mse"] == pytest.approx(float((ref.resid**2).mean()), rel=1e-10)


def test_held_out_metrics_are_weighted(tmp_path):
    d = table(120, seed=3)
    run = fit(tmp_path, d, data={"split": {"val": 0.25}})
    ev = evaluate(run.run_dir)
    val = ev.metrics["val"]
    assert val["weighted"] is True
    assert val["mse"] == pytest.approx(run.metrics["val"]["mse"], rel=1e-10)
    split = pd.read_csv(run.run_dir / "split.csv")
    rows = d.iloc[split.loc[split["set"] == "val", "row"].to_numpy()]
    pred = predict_file(run.run_dir, tmp_path / "run.csv").frame["prediction"].to_numpy()[rows.index]
    want = float((rows["w"] * (rows["y"] - pred) ** 2).sum() / rows["w"].sum())
    assert val["mse"] == pytest.approx(want, rel=1e-10)
    # the validation loss of the history is the weighted one too
    hist = pd.read_csv(run.run_dir / "history.csv")
    assert hist["val_loss"].iloc[-1] == pytest.approx(want, rel=1e-8)


def test_sigma_is_weights_one_over_sigma_squared(tmp_path):
    d = table(50, seed=1)
    a = fit(tmp_path, d, name="w")
    d2 = d.assign(w=1.0 / np.sqrt(d["w"]))  # the standard deviations
    b = fit(tmp_path, d2, data={"weights_are": "sigma"}, name="sigma")
    for k, v in params(a).items():
        assert params(b)[k] == pytest.approx(v, rel=1e-10)
    for k, v in a.coefficients["std_errors"].items():
        assert b.coefficients["std_errors"][k] == pytest.approx(v, rel=1e-8)
    assert b.metrics["weights"]["are"] == "sigma"


def test_zero_weight_contributes_nothing_and_scale_does_not_matter(tmp_path):
    d = table(60, seed=2)
    d.loc[[4, 17], "w"] = 0.0
    d.loc[4, "y"] = 1e6  # an outlier of weight 0 changes nothing
    zero = fit(tmp_path, d, name="zero")
    kept = fit(tmp_path, d.drop(index=[4, 17]), name="kept")
    scaled = fit(tmp_path, d.assign(w=d["w"] * 1e3), name="scaled")
    for k, v in params(kept).items():
        assert params(zero)[k] == pytest.approx(v, rel=1e-9, abs=1e-12)
        assert params(scaled)[k] == pytest.approx(params(zero)[k], rel=1e-10)
    assert zero.metrics["train"]["mse"] == pytest.approx(kept.metrics["train"]["mse"], rel=1e-10)
    # statsmodels counts a row of weight 0 in nobs (and so in the residual degrees of freedom); so does gradfit
    import statsmodels.formula.api as smf

    ref = smf.wls("y ~ x + city", data=d, weights=d["w"]).fit()
    assert zero.coefficients["dof"] == ref.df_resid == len(d) - 4
    for name, value in ref.bse.items():
        assert zero.coefficients["std_errors"]["intercept" if name == "Intercept" else name] == pytest.approx(value, rel=1e-8)
    s = read_summary(zero.run_dir)  # (its log-likelihood is -inf, as statsmodels' WLS makes it: log 0 in it)
    assert s["log_likelihood"] == -np.inf and s["r2"] == pytest.approx(ref.rsquared, rel=1e-9)


def test_weighted_huber_equals_repeated_rows(tmp_path):
    """Integer weights are repeated rows: the weighted Huber fit is the plain fit of the repeated table."""
    rng = np.random.default_rng(5)
    n = 40
    x = rng.uniform(-2, 2, n)
    y = 1.0 + 2.0 * x + rng.standard_t(2, n) * 0.3
    w = rng.integers(1, 4, n).astype(float)
    d = pd.DataFrame({"x": x, "w": w, "y": y})
    loss = {"kind": "huber", "delta": 0.5}
    weighted = fit(tmp_path, d, loss=loss, optimizer={"kind": "lbfgs"}, name="weighted")
    rep = d.loc[d.index.repeat(d["w"].astype(int))].drop(columns=["w"])
    rep.to_csv(tmp_path / "rep.csv", index=False)
    plain = train(config_from_dict(config({"path": str(tmp_path / "rep.csv")}, loss=loss, optimizer={"kind": "lbfgs"})),
                  write=False)
    for k, v in params(plain).items():
        assert params(weighted)[k] == pytest.approx(v, rel=1e-6)
    assert weighted.metrics["train"]["loss"] == pytest.approx(plain.metrics["train"]["loss"], rel=1e-8)


def _danwood(tmp: Path) -> pd.DataFrame:
    d = pd.read_csv(DATA / "nist" / "DanWood.csv")
    d["s"] = np.array([0.02, 0.05, 0.03, 0.08, 0.04, 0.1])[: len(d)] * d["y"].abs().mean()
    d.to_csv(tmp / "danwood.csv", index=False)
    return d


@pytest.mark.parametrize("are", ["sigma", "weights"])
def test_formula_model_equals_curve_fit_with_sigma(tmp_path, are):
    from scipy.optimize import curve_fit

    d = _danwood(tmp_path)
    p, cov = curve_fit(lambda x, b1, b2: b1 * x**b2, d["x"], d["y"], p0=[1.0, 5.0], sigma=d["s"],
                       ftol=1e-15, xtol=1e-15, gtol=1e-15)
    if are == "weights":
        d.assign(s=1.0 / d["s"] ** 2).to_csv(tmp_path / "danwood.csv", index=False)
    cfg = config({"path": str(tmp_path / "danwood.csv"), "weights": "s", "weights_are": are},
                 {"kind": "formula", "formula": "y = b1 * x**b2", "start": {"b1": 1.0, "b2": 5.0}})
    run = train(config_from_dict(cfg), write=False)
    got, se = run.coefficients["parameters"], run.coefficients["std_errors"]
    np.testing.assert_allclose([got["b1"], got["b2"]], p, rtol=1e-8)
    np.testing.assert_allclose([se["b1"], se["b2"]], np.sqrt(np.diag(cov)), rtol=1e-6)
    assert run.metrics["train"]["weighted"] is True


def test_absolute_sigma_as_curve_fit_and_statsmodels_fixed_scale(tmp_path):
    from scipy.optimize import curve_fit

    d = _danwood(tmp_path)
    p, cov = curve_fit(lambda x, b1, b2: b1 * x**b2, d["x"], d["y"], p0=[1.0, 5.0], sigma=d["s"], absolute_sigma=True,
                       ftol=1e-15, xtol=1e-15, gtol=1e-15)
    cfg = config({"path": str(tmp_path / "danwood.csv"), "weights": "s", "weights_are": "sigma", "absolute_sigma": True},
                 {"kind": "formula", "formula": "y = b1 * x**b2", "start": {"b1": 1.0, "b2": 5.0}})
    c = train(config_from_dict(cfg), write=False).coefficients
    np.testing.assert_allclose([c["std_errors"]["b1"], c["std_errors"]["b2"]], np.sqrt(np.diag(cov)), rtol=1e-6)
    assert c["absolute_sigma"] is True
    assert c["ci95"]["b1"][1] - c["parameters"]["b1"] == pytest.approx(1.959963984540054 * c["std_errors"]["b1"], rel=1e-12)
    # a linear model: statsmodels' WLS with the scale fixed at 1
    import statsmodels.formula.api as smf

    t = table(40, seed=4)
    run = fit(tmp_path, t.assign(w=1.0 / np.sqrt(t["w"])), data={"weights_are": "sigma", "absolute_sigma": True})
    ref = smf.wls("y ~ x + city", data=t, weights=t["w"]).fit(cov_type="fixed scale", cov_kwds={"scale": 1.0})
    for name, value in ref.bse.items():
        assert run.coefficients["std_errors"]["intercept" if name == "Intercept" else name] == pytest.approx(value, rel=1e-8)


def _write(tmp: Path, w) -> Path:
    d = table(8)
    d["w"] = w
    path = tmp / "bad.csv"
    d.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("value, are, words", [
    (-1.0, "weights", "negative weight"),
    (np.nan, "weights", "missing or non-numeric"),
    ("heavy", "weights", "missing or non-numeric"),
    (np.inf, "weights", "infinite"),
    (0.0, "sigma", "not positive"),
])
def test_bad_weights_name_row_and_column(tmp_path, value, are, words):
    w = [1.0] * 8
    w[3] = value
    path = _write(tmp_path, w)
    with pytest.raises(DataError) as e:
        train(config_from_dict(config({"path": str(path), "weights": "w", "weights_are": are})), write=False)
    msg = e.value.message
    assert words in msg and "'w'" in msg and "row 5" in msg  # (the header is line 1: the 4th row is line 5)


def test_all_zero_weights_and_a_missing_column(tmp_path):
    path = _write(tmp_path, [0.0] * 8)
    with pytest.raises(DataError, match="weight 0"):
        train(config_from_dict(config({"path": str(path), "weights": "w"})), write=False)
    with pytest.raises(DataError, match="'weight' .*not a column"):
        train(config_from_dict(config({"path": str(path), "weights": "weight"})), write=False)


def test_bad_weights_exit_1_without_traceback(tmp_path):
    path = _write(tmp_path, [1.0, 1.0, -2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    (tmp_path / "c.yaml").write_text(json.dumps(config({"path": str(path), "weights": "w"})))
    r = run_gradfit("train", tmp_path / "c.yaml", "--out", tmp_path / "run")
    err = " ".join(r.stderr.split())
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "'w'" in err and "row 4" in err and "negative" in err


@pytest.mark.parametrize("change, words", [
    ({"data": {"streaming": True, "path": "t.parquet"}}, "data.streaming"),
    ({"train": {"batch_size": 16}}, "train.batch_size"),
    ({"loss": {"kind": "quantile", "q": 0.5}}, "loss.kind 'quantile'"),
    ({"loss": {"kind": "poisson"}}, "loss.kind 'poisson'"),
    ({"model": {"kind": "linear", "penalty": {"l2": 1.0}}}, "model.penalty"),
    ({"data": {"target": "w"}}, "target"),
    ({"data": {"features": ["x", "w"]}}, "data.features"),
    ({"data": {"synthetic": {"kind": "polynomial", "coefficients": [1, 2]}, "path": None}}, "synthetic"),
])
def test_unsupported_combinations_are_refused(change, words):
    cfg = config({"path": "t.csv", "weights": "w"})
    for section, values in change.items():
        cfg[section] = {**cfg[section], **values} if isinstance(cfg[section], dict) else values
    cfg["data"] = {k: v for k, v in cfg["data"].items() if v is not None}
    with pytest.raises(ConfigError) as e:
        config_from_dict(cfg)
    assert "data.weights" in e.value.message and words in e.value.message


def test_check_leaves_the_weights_column_out_of_the_features(tmp_path):
    from gradfit.data.check import check_data

    table(10).to_csv(tmp_path / "t.csv", index=False)
    said = check_data(config_from_dict(config({"path": str(tmp_path / "t.csv"), "weights": "w"}))).checked
    assert "features x, city, weighted by 'w'" in said


def test_weights_are_without_weights_is_refused():
    with pytest.raises(ConfigError, match="data.weights_are"):
        config_from_dict(config({"path": "t.csv", "weights_are": "sigma"}))
    with pytest.raises(ConfigError, match="data.absolute_sigma"):
        config_from_dict(config({"path": "t.csv", "absolute_sigma": True}))
    config_from_dict(config({"path": "t.csv", "weights_are": "weights"}))  # (the default, as config.yaml writes it)

"""gradfit summary RUN: trained runs' summary.json against statsmodels OLS (issue 18)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml

sm = pytest.importorskip("statsmodels.api")
from statsmodels.stats.stattools import durbin_watson, jarque_bera, omni_normtest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gradfit.cli import app  # noqa: E402

COV_TYPES = ("nonrobust", "HC0", "HC1", "HC2", "HC3")
FIT_KEYS = ("nobs", "df_model", "df_resid", "r2", "adj_r2", "f_stat", "f_pvalue", "log_likelihood", "aic", "bic",
            "omnibus", "omnibus_p", "jarque_bera", "jarque_bera_p", "skew", "kurtosis", "durbin_watson", "cond_no")


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _dataset(name):
    d = getattr(sm.datasets, name).load_pandas()
    frame = d.exog.copy()
    frame["target"] = d.endog
    return frame


def _train(tmp, name, frame, model, epochs=20, features=None):
    csv = tmp / f"{name}.csv"
    frame.to_csv(csv, index=False, float_format="%.17g")
    cfg = {"name": name, "seed": 0, "device": "cpu", "data": {"path": str(csv), "target": "target", "split": {"val": 0}},
           "model": model, "loss": {"kind": "mse"}, "train": {"epochs": epochs}}
    if features:
        cfg["data"]["features"] = features
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    run = tmp / "runs" / name
    r = _invoke("train", p, "--out", run, "--quiet")
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("summary")
    longley, stackloss = _dataset("longley"), _dataset("stackloss")
    quad = stackloss[["AIRFLOW", "target"]]
    return {
        "longley": (_train(tmp, "longley", longley, {"kind": "linear"}), longley, 1),
        "stackloss_noint": (_train(tmp, "stackloss_noint", stackloss, {"kind": "linear", "intercept": False}), stackloss, 1),
        "quadratic": (_train(tmp, "quadratic", quad, {"kind": "polynomial", "degree": 2}), quad, 2),
    }


def _reference(frame, degree, intercept, cov_type, alpha=0.05):
    """statsmodels' OLS on the raw design (ones first, then x, x^2 for a one-feature polynomial)."""
    X = frame.drop(columns="target")
    names = list(X.columns)
    A = X.to_numpy(float)
    if degree == 2:
        A = np.column_stack([A, A[:, 0] ** 2])
        names = names + [f"{names[0]}^2"]
    if intercept:
        A, names = np.column_stack([np.ones(len(A)), A]), ["intercept"] + names
    return statsmodels_summary(frame["target"].to_numpy(float), A, names, cov_type, alpha)


def statsmodels_summary(y, A, names, cov_type, alpha=0.05) -> dict:
    """Every number of gradfit's summary, as statsmodels' OLS(y, A).fit(cov_type) gives it (``names``: A's columns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sm.OLS(y, A).fit(cov_type=cov_type)
        jb, jb_p, skew, kurt = jarque_bera(r.resid)
        omni, omni_p = omni_normtest(r.resid)
    ref = dict(nobs=r.nobs, df_model=r.df_model, df_resid=r.df_resid, r2=r.rsquared, adj_r2=r.rsquared_adj, f_stat=r.fvalue,
               f_pvalue=r.f_pvalue, log_likelihood=r.llf, aic=r.aic, bic=r.bic, omnibus=omni, omnibus_p=omni_p,
               jarque_bera=jb, jarque_bera_p=jb_p, skew=skew, kurtosis=kurt, durbin_watson=durbin_watson(r.resid),
               cond_no=r.condition_number)
    ci = r.conf_int(alpha)
    ref["coefficients"] = {n: dict(coef=r.params[i], std_err=r.bse[i], t=r.tvalues[i], p=r.pvalues[i],
                                   ci_low=ci[i, 0], ci_high=ci[i, 1]) for i, n in enumerate(names)}
    return ref


def _close(got, want, rtol, what):
    if what.endswith("p") and want < 1e-300:
        return
    assert got == pytest.approx(float(want), rel=rtol, abs=0), what


def _summary(run, *options):
    r = _invoke("summary", run, "--json", *options)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("case", ["longley", "stackloss_noint", "quadratic"])
def test_summary_matches_statsmodels(runs, case, cov_type):
    run, frame, degree = runs[case]
    out = _summary(run, "--cov", cov_type)
    ref = _reference(frame, degree, case != "stackloss_noint", cov_type)
    assert out["cov_type"] == cov_type
    # longley's design has condition number 5e9: statsmodels' own HC numbers carry ~1e-7 of rounding
    p_rtol = 5e-7 if case == "longley" and cov_type != "nonrobust" else 1e-8
    for key in FIT_KEYS:
        loose = key.endswith("pvalue") or key.endswith("_p") or key == "f_stat"
        _close(out[key], ref[key], p_rtol if loose else 1e-8, key)
    assert list(out["coefficients"]) == list(ref["coefficients"])
    for name, want in ref["coefficients"].items():
        got = out["coefficients"][name]
        for key in ("coef", "std_err", "t"):
            _close(got[key], want[key], 1e-8, f"{name}.{key}")
        _close(got["p"], want["p"], p_rtol, f"{name}.p")
        for key in ("ci_low", "ci_high"):
            assert abs(got[key] - want[key]) <= 1e-8 * (abs(want[key]) + 2 * want["std_err"]), f"{name}.{key}"


def test_uncentered_r2_without_intercept(runs):
    run, frame, _ = runs["stackloss_noint"]
    out = _summary(run)
    r = sm.OLS(frame["target"].to_numpy(float), frame.drop(columns="target").to_numpy(float)).fit()
    assert "intercept" not in out["coefficients"]
    assert out["r2"] == pytest.approx(r.rsquared, rel=1e-10)
    y = frame["target"].to_numpy(float)
    assert out["r2"] == pytest.approx(1 - r.ssr / (y @ y), rel=1e-10)  # (uncentered: about 0, not the mean)


def test_alpha_changes_the_intervals(runs):
    run, frame, degree = runs["quadratic"]
    out = _summary(run, "--alpha", "0.1")
    ref = _reference(frame, degree, True, "nonrobust", alpha=0.1)
    for name, want in ref["coefficients"].items():
        assert out["coefficients"][name]["ci_low"] == pytest.approx(want["ci_low"], rel=1e-8)


def test_console_table_and_notes(runs):
    run, _, _ = runs["longley"]
    r = _invoke("summary", run)
    assert r.exit_code == 0
    for label in ("R-squared", "Adj. R-squared", "F-statistic", "Durbin-Watson", "Cond. No.", "GNPDEFL", "intercept"):
        assert label in r.stdout
    assert "condition number is large" in r.stderr


def test_refusals(runs, tmp_path):
    run, _, _ = runs["quadratic"]
    r = _invoke("summary", run, "--cov", "HC9")
    assert r.exit_code == 1 and "HC9" in r.stderr and "Traceback" not in r.output
    r = _invoke("summary", run, "--alpha", "1.5")
    assert r.exit_code == 1 and "alpha" in r.stderr
    r = _invoke("summary", tmp_path)
    assert r.exit_code == 1 and "summary.json" in r.stderr
    r = _invoke("summary", tmp_path / "nowhere")
    assert r.exit_code == 1 and "not a run directory" in " ".join(r.stderr.split())


@pytest.mark.parametrize("case", ["longley", "stackloss_noint", "quadratic"])
def test_predict_interval_matches_summary_frame(runs, case, tmp_path):
    import pandas as pd

    run, frame, degree = runs[case]
    new = frame.drop(columns="target").iloc[::3] * 1.01  # (rows the fit did not see)
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False, float_format="%.17g")
    r = _invoke("predict", run, "--data", path, "--interval", "0.95")
    assert r.exit_code == 0, r.output
    got = pd.read_csv(__import__("io").StringIO(r.stdout))
    X, Xn = frame.drop(columns="target").to_numpy(float), new.to_numpy(float)
    if degree == 2:
        X, Xn = np.column_stack([X, X[:, 0] ** 2]), np.column_stack([Xn, Xn[:, 0] ** 2])
    if case != "stackloss_noint":
        X, Xn = sm.add_constant(X, has_constant="add"), sm.add_constant(Xn, has_constant="add")
    want = sm.OLS(frame["target"].to_numpy(float), X).fit().get_prediction(Xn).summary_frame(alpha=0.05)
    for col in ("mean_se", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"):
        scale = np.abs(want[col].to_numpy()) + want["mean_se"].to_numpy()
        assert np.all(np.abs(got[col].to_numpy() - want[col].to_numpy()) <= 1e-8 * scale), col
    np.testing.assert_allclose(got["prediction"], want["mean"], rtol=1e-5)  # (the trained model's own prediction)


def test_predict_interval_refusals(runs, tmp_path):
    run, frame, _ = runs["quadratic"]
    path = tmp_path / "new.csv"
    frame.drop(columns="target").to_csv(path, index=False)
    r = _invoke("predict", run, "--data", path, "--interval", "95")
    assert r.exit_code == 1 and "--interval" in r.stderr


def test_compare_nested_matches_statsmodels(runs, tmp_path):
    run, frame, _ = runs["longley"]
    small = _train(tmp_path, "longley_small", frame, {"kind": "linear"}, features=["GNP", "UNEMP", "YEAR"])
    r = _invoke("compare", small, run, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    y = frame["target"].to_numpy(float)
    full = sm.OLS(y, sm.add_constant(frame.drop(columns="target").to_numpy(float))).fit()
    restricted = sm.OLS(y, sm.add_constant(frame[["GNP", "UNEMP", "YEAR"]].to_numpy(float))).fit()
    f, fp, df = full.compare_f_test(restricted)
    lr, lp, _ = full.compare_lr_test(restricted)
    assert out["nested"] and out["restricted"] == 0 and out["df_diff"] == df
    for key, want in (("f_stat", f), ("f_pvalue", fp), ("lr_stat", lr), ("lr_pvalue", lp)):
        assert out[key] == pytest.approx(want, rel=1e-8), key
    r2 = _invoke("compare", run, small, "--json")  # (either order)
    assert json.loads(r2.stdout)["f_stat"] == pytest.approx(f, rel=1e-8)
    r3 = _invoke("compare", small, run)
    assert r3.exit_code == 0 and "F =" in r3.stdout


def test_compare_refuses_non_nested(runs):
    a, _, _ = runs["longley"]
    b, _, _ = runs["quadratic"]
    r = _invoke("compare", a, b, "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert not out["nested"] and "same rows" in out["reason"] and "f_stat" not in out
    assert [x["aic"] for x in out["runs"]][0] == pytest.approx(_summary(a)["aic"], rel=1e-12)
    c, _, _ = runs["stackloss_noint"]
    out = json.loads(_invoke("compare", b, c, "--json").stdout)
    assert not out["nested"] and "not nested" in out["reason"]


def test_streamed_run_gives_the_same_summary(runs, tmp_path):
    """A Parquet stream's summary (sums over row groups) equals the in-memory run's."""
    run, frame, _ = runs["longley"]
    pq = tmp_path / "longley.parquet"
    frame.to_parquet(pq, row_group_size=5)
    cfg = {"name": "s", "seed": 0, "device": "cpu", "model": {"kind": "linear"}, "loss": {"kind": "mse"}, "train": {"epochs": 20},
           "data": {"path": str(pq), "target": "target", "split": {"val": 0}, "streaming": True}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = _invoke("train", p, "--out", tmp_path / "stream", "--quiet")
    assert r.exit_code == 0, r.output
    for cov in ("nonrobust", "HC3"):
        a, b = _summary(run, "--cov", cov), _summary(tmp_path / "stream", "--cov", cov)
        for key in FIT_KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-8), key
        for name, c in a["coefficients"].items():
            assert b["coefficients"][name]["std_err"] == pytest.approx(c["std_err"], rel=1e-8), name

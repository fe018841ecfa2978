"""results/summary.py against statsmodels' OLS/WLS (and scipy's normality tests): its oracles."""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats

from gradfit.results.summary import (
    COV_TYPES,
    GramSums,
    ResidualSums,
    finalize,
    kurtosistest_z,
    skewtest_z,
    summary_from_chunks,
)

sm = pytest.importorskip("statsmodels.api")
from statsmodels.stats.stattools import durbin_watson, jarque_bera, omni_normtest  # noqa: E402

FIT_KEYS = ("nobs", "df_model", "df_resid", "r2", "adj_r2", "f_stat", "f_pvalue", "log_likelihood", "aic", "bic")


def _longley():
    d = sm.datasets.longley.load_pandas()
    return d.exog.to_numpy(float), d.endog.to_numpy(float), list(d.exog.columns)


def _stackloss():
    d = sm.datasets.stackloss.load_pandas()
    return d.exog.to_numpy(float), d.endog.to_numpy(float), list(d.exog.columns)


def _diabetes():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    return X, y, [f"x{i}" for i in range(X.shape[1])]


DATA = {"longley": _longley, "stackloss": _stackloss, "diabetes": _diabetes}


def _design(name, intercept):
    """(A, y, names, intercept index): the ones column last, as results/exact.py builds it."""
    X, y, names = DATA[name]()
    if intercept:
        return np.column_stack([X, np.ones(len(y))]), y, names + ["const"], X.shape[1]
    return X, y, names, None


def _chunks(A, y, w=None, size=7):
    def chunks():
        for i in range(0, len(y), size):
            yield A[i : i + size], y[i : i + size], None if w is None else w[i : i + size]

    return chunks


def _reference(A, y, names, intercept, cov_type, w=None, alpha=0.05):
    """statsmodels' numbers under the summary's keys."""
    model = sm.OLS(y, A) if w is None else sm.WLS(y, A, weights=w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = model.fit(cov_type=cov_type)
        jb, jb_p, skew, kurt = jarque_bera(r.wresid)
        omni, omni_p = omni_normtest(r.wresid)
    ref = {
        "nobs": r.nobs,
        "df_model": r.df_model,
        "df_resid": r.df_resid,
        "r2": r.rsquared,
        "adj_r2": r.rsquared_adj,
        "f_stat": r.fvalue,
        "f_pvalue": r.f_pvalue,
        "log_likelihood": r.llf,
        "aic": r.aic,
        "bic": r.bic,
        "omnibus": omni,
        "omnibus_p": omni_p,
        "jarque_bera": jb,
        "jarque_bera_p": jb_p,
        "skew": skew,
        "kurtosis": kurt,
        "durbin_watson": durbin_watson(r.wresid),
        "cond_no": r.condition_number,
    }
    ci = r.conf_int(alpha)
    ref["coefficients"] = {
        ("intercept" if i == intercept else n): {
            "coef": r.params[i],
            "std_err": r.bse[i],
            "t": r.tvalues[i],
            "p": r.pvalues[i],
            "ci_low": ci[i, 0],
            "ci_high": ci[i, 1],
        }
        for i, n in enumerate(names)
    }
    return ref


def _close(got, want, rtol, what):
    if want < 1e-300 and what.endswith("p"):
        return
    assert got == pytest.approx(want, rel=rtol, abs=0), what


def _compare(out, ref, rtol=1e-8, p_rtol=1e-8):
    """Every number to ``rtol`` (p-values and F ``p_rtol``); an interval bound to rtol of |bound| + 2 se."""
    for key in FIT_KEYS + ("omnibus", "omnibus_p", "jarque_bera", "jarque_bera_p", "skew", "kurtosis"):
        loose = key.endswith("pvalue") or key.endswith("_p") or key == "f_stat"
        _close(out[key], ref[key], p_rtol if loose else rtol, key)
    _close(out["durbin_watson"], ref["durbin_watson"], rtol, "durbin_watson")
    _close(out["cond_no"], ref["cond_no"], rtol, "cond_no")
    assert list(out["coefficients"]) == list(ref["coefficients"])
    for name, want in ref["coefficients"].items():
        got = out["coefficients"][name]
        for key in ("coef", "std_err", "t"):
            _close(got[key], want[key], rtol, f"{name}.{key}")
        _close(got["p"], want["p"], p_rtol, f"{name}.p")
        for key in ("ci_low", "ci_high"):
            tol = rtol * (abs(want[key]) + 2 * want["std_err"])
            assert abs(got[key] - want[key]) <= tol, f"{name}.{key}"


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("data", sorted(DATA))
def test_ols_matches_statsmodels(data, intercept, cov_type):
    A, y, names, ic = _design(data, intercept)
    out = summary_from_chunks(_chunks(A, y), names, ic, cov_type=cov_type)
    assert out["cov_type"] == cov_type
    # longley's design has condition number 5e9: statsmodels' own HC standard errors carry
    # 1e-9 to 1e-8 of rounding there (by column order), which the robust F (an inverse) and the
    # p-values (by about t^2) amplify; ours are within 1e-9 of 60-digit arithmetic
    # (test_longley_hc_high_precision).
    p_rtol = 5e-7 if data == "longley" and cov_type != "nonrobust" else 1e-8
    _compare(out, _reference(A, y, names, ic, cov_type), p_rtol=p_rtol)


@pytest.mark.parametrize("cov_type", ["nonrobust", "HC1", "HC3"])
@pytest.mark.parametrize("intercept", [True, False])
def test_wls_matches_statsmodels(intercept, cov_type):
    A, y, names, ic = _design("diabetes", intercept)
    w = 1.0 / (1.0 + np.arange(len(y)) % 5)
    out = summary_from_chunks(_chunks(A, y, w), names, ic, cov_type=cov_type)
    _compare(out, _reference(A, y, names, ic, cov_type, w=w))


def test_alpha_and_use_t():
    A, y, names, ic = _design("stackloss", True)
    out = summary_from_chunks(_chunks(A, y), names, ic, cov_type="HC2", alpha=0.1, use_t=True)
    r = sm.OLS(y, A).fit(cov_type="HC2", use_t=True)
    ci = r.conf_int(0.1)
    for i, name in enumerate(["intercept" if i == ic else n for i, n in enumerate(names)]):
        c = out["coefficients"][name]
        assert c["p"] == pytest.approx(r.pvalues[i], rel=1e-8)
        assert (c["ci_low"], c["ci_high"]) == pytest.approx((ci[i, 0], ci[i, 1]), rel=1e-8)


def _flat(out):
    vals = [v for k, v in out.items() if k not in ("coefficients", "cov_type")]
    return np.array(vals + [x for c in out["coefficients"].values() for x in c.values()])


@pytest.mark.parametrize("weighted", [False, True])
def test_chunks_and_ranks_equal_one_chunk(weighted):
    A, y, names, ic = _design("diabetes", True)
    w = 1.0 / (1.0 + np.arange(len(y)) % 3) if weighted else None
    one = summary_from_chunks(_chunks(A, y, w, size=len(y)), names, ic, cov_type="HC3")
    seven = summary_from_chunks(_chunks(A, y, w, size=7), names, ic, cov_type="HC3")
    np.testing.assert_allclose(_flat(seven), _flat(one), rtol=1e-10)

    # two "ranks", each its contiguous half in chunks of 7, merged through a gather callback
    halves = [slice(0, 200), slice(200, None)]
    wh = [None if w is None else w[s] for s in halves]
    grams = [GramSums(names, ic) for _ in halves]
    for g, s, ws in zip(grams, halves, wh):
        for block in _chunks(A[s], y[s], ws)():
            g.add(*block)
    sol = grams[0].reduce(lambda _: grams).solve()

    def residual_pass(sol):
        parts = [ResidualSums(sol) for _ in halves]
        for res, s, ws in zip(parts, halves, wh):
            for block in _chunks(A[s], y[s], ws)():
                res.add(*block)
        return parts[1].reduce(lambda _: parts, consecutive=True)

    sol = sol.refined(residual_pass(sol))  # one refinement, as summary_from_chunks
    total = residual_pass(sol)
    merged = finalize(total, cov_type="HC3")
    np.testing.assert_allclose(_flat(merged), _flat(one), rtol=1e-10)


def test_strided_shards_omit_the_seam():
    A, y, names, ic = _design("stackloss", True)
    gram = GramSums(names, ic).add(A, y)
    sol = gram.solve()
    whole = ResidualSums(sol).add(A, y)
    a, b = ResidualSums(sol).add(A[:10], y[:10]), ResidualSums(sol).add(A[10:], y[10:])
    seam = (b.first - a.last) ** 2
    assert a.merge(b).dw == pytest.approx(whole.dw - seam, rel=1e-12)


@pytest.mark.parametrize("j, cov_type", [(0, "HC0"), (1, "HC2"), (2, "HC3")])
@pytest.mark.parametrize("intercept", [True, False])
def test_longley_hc_high_precision(intercept, j, cov_type):
    """Against 60-digit arithmetic: the HC standard errors and the robust F to 1e-9."""
    mpmath = pytest.importorskip("mpmath")
    X, y, names, ic = _design("longley", intercept)
    with mpmath.workdps(60):
        f_stat, se = _hc_exact(mpmath, X, y, ic, j)
    out = summary_from_chunks(_chunks(X, y), names, ic, cov_type=cov_type)
    np.testing.assert_allclose([c["std_err"] for c in out["coefficients"].values()], se, rtol=1e-9)
    assert out["f_stat"] == pytest.approx(f_stat, rel=1e-9)


def _hc_exact(mpmath, X, y, ic, j):
    """(robust F, HC standard errors) in mpmath's precision, by the textbook formulas."""
    A, Y = mpmath.matrix(X.tolist()), mpmath.matrix(y.tolist())
    n, k = X.shape
    inv = (A.T * A) ** -1
    b = inv * (A.T * Y)
    r = Y - A * b
    meat = mpmath.zeros(k, k)
    for i in range(n):
        h = (A[i, :] * inv * A[i, :].T)[0]
        meat += (A[i, :].T * A[i, :]) * (r[i] ** 2 / (1 - h) ** j)
    cov = inv * meat * inv
    slopes = [i for i in range(k) if i != ic]
    sub = mpmath.matrix([[cov[p, q] for q in slopes] for p in slopes])
    bs = mpmath.matrix([b[p] for p in slopes])
    f_stat = float((bs.T * sub**-1 * bs)[0]) / len(slopes)
    return f_stat, [float(mpmath.sqrt(cov[i, i])) for i in range(k)]


def test_normality_tests_match_scipy():
    rng = np.random.default_rng(3)
    for n in (8, 20, 500):
        for x in (rng.standard_normal(n), rng.exponential(size=n)):
            skew, kurt = stats.skew(x), stats.kurtosis(x, fisher=False)
            zs, zk = skewtest_z(n, skew), kurtosistest_z(n, kurt)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert zs == pytest.approx(stats.skewtest(x).statistic, rel=1e-12)
                assert zk == pytest.approx(stats.kurtosistest(x).statistic, rel=1e-12)
                assert zs**2 + zk**2 == pytest.approx(stats.normaltest(x).statistic, rel=1e-12)


def test_fewer_than_8_rows_gives_no_omnibus():
    A, y, names, ic = _design("longley", True)
    A, y = A[:7, [0, -1]], y[:7]
    out = summary_from_chunks(_chunks(A, y), ["GNPDEFL", "const"], 1)
    assert math.isnan(out["omnibus"]) and math.isnan(out["omnibus_p"])
    assert out["jarque_bera"] == pytest.approx(jarque_bera(sm.OLS(y, A).fit().wresid)[0], rel=1e-8)


def test_bad_options():
    A, y, names, ic = _design("stackloss", True)
    res = ResidualSums(GramSums(names, ic).add(A, y).solve()).add(A, y)
    with pytest.raises(ValueError, match="cov_type must be one of"):
        finalize(res, cov_type="HC4")
    with pytest.raises(ValueError, match="alpha"):
        finalize(res, alpha=1.5)


def test_import_leaves_scipy_out():
    code = "import sys, gradfit.results.summary; print('scipy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

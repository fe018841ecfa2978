"""The summary's passes over the training design in hand (results/lifted.py) against the raw rows and statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

sm = pytest.importorskip("statsmodels.api")
from statsmodels.stats.stattools import durbin_watson, jarque_bera  # noqa: E402

from gradfit.config.loading import config_from_dict  # noqa: E402
from gradfit.results import inference, lifted  # noqa: E402
from gradfit.results.inference import load_sums  # noqa: E402
from gradfit.results.summary import GramSums, finalize  # noqa: E402
from gradfit.train import run as api  # noqa: E402

NAMES = ["intercept", "a", "b", "c", "d"]


def _table(tmp_path, n=6000):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, 4)) * [1, 100, 1e-3, 5] + [0, 1950, 3, -7e3]  # (offsets and spreads far from 1)
    y = 2 + X @ [1.5, -0.02, 300, 0.01] + rng.standard_normal(n) * (1 + np.abs(X[:, 0]))  # (heteroscedastic: HC differs)
    frame = pd.DataFrame(X, columns=list("abcd"))
    frame["y"] = y
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False, float_format="%.17g")
    return path, X, y


def _run(monkeypatch, path, **data):
    seen = {}
    real = inference.summary_sums

    def spy(model, source, design=None, gram=None):
        seen.update(model=model, source=source, design=design, gram=gram)
        return real(model, source, design, gram)

    monkeypatch.setattr(api.inference, "summary_sums", spy)
    cfg = config_from_dict({"dtype": "float64", "device": "cpu", "data": {"path": str(path), "target": "y", **data},
                            "model": {"kind": "linear"}})
    run = api.train(cfg, write=False)
    return run, seen


def _numbers(stored, cov):
    out = finalize(load_sums(stored), cov_type=cov)
    return out, np.array([out["coefficients"][k]["coef"] for k in NAMES]), np.array([out["coefficients"][k]["std_err"] for k in NAMES])


@pytest.mark.parametrize("standardize", [True, False])
def test_lifted_summary_equals_rows_and_statsmodels(tmp_path, monkeypatch, standardize):
    path, X, y = _table(tmp_path)
    passes = []
    monkeypatch.setattr(GramSums, "add", lambda self, *a, _real=GramSums.add: passes.append(1) or _real(self, *a))
    run, seen = _run(monkeypatch, path, standardize=standardize)
    assert seen["design"] is not None and lifted.LiftedDesign.of(seen["model"], *inference.raw_terms(seen["model"])[::2],
                                                                 seen["design"], seen["gram"]) is not None
    # a centred design's co-moments come from the exact check's Gram matrix: no pass of their own
    assert (len(passes) == 0) == standardize
    rows = inference.summary_sums(seen["model"], seen["source"])  # (the raw rows, gathered: the path without the design)
    tr = seen["source"].split.train.numpy()
    ref = sm.OLS(y[tr], sm.add_constant(X[tr])).fit()
    for cov in ("nonrobust", "HC0", "HC1", "HC2", "HC3"):
        out, coef, se = _numbers(run.summary, cov)
        _, coef_rows, se_rows = _numbers(rows, cov)
        np.testing.assert_allclose(coef, coef_rows, rtol=1e-8)
        np.testing.assert_allclose(se, se_rows, rtol=1e-9)
        np.testing.assert_allclose(coef, ref.params, rtol=1e-8)
        bse = ref.bse if cov == "nonrobust" else ref.get_robustcov_results(cov).bse
        np.testing.assert_allclose(se, bse, rtol=1e-9)
    out = finalize(load_sums(run.summary))
    assert out["durbin_watson"] == pytest.approx(durbin_watson(ref.resid), rel=1e-10)
    assert out["jarque_bera"] == pytest.approx(jarque_bera(ref.resid)[0], rel=1e-8)
    assert out["r2"] == pytest.approx(ref.rsquared, rel=1e-12)
    assert out["log_likelihood"] == pytest.approx(ref.llf, rel=1e-12)
    assert out["cond_no"] == pytest.approx(ref.condition_number, rel=1e-6)


def test_lift_declines_what_it_cannot_carry(tmp_path, monkeypatch):
    path, _, _ = _table(tmp_path, 500)
    _, seen = _run(monkeypatch, path)
    model, design = seen["model"], seen["design"]
    terms, _, intercept = inference.raw_terms(model)
    assert lifted.LiftedDesign.of(model, terms, intercept, None) is None  # (no design in hand: the rows are read)
    assert lifted.LiftedDesign.of(model, terms, False, design) is None  # (no intercept)
    assert lifted.LiftedDesign.of(model, [(2, 0, 0, 0)], intercept, design) is None  # (a power: not an affine column)


def test_clear_rank_sends_collinear_designs_to_the_rows():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = X @ [1.0, 2.0, 3.0] + rng.standard_normal(200)
    names = ["intercept", "a", "b", "c"]
    ok = GramSums(names, 0).add(np.column_stack([np.ones(200), X]), y)
    assert ok.clear_rank()
    X[:, 2] = X[:, 0] + X[:, 1]  # (an exact sum: its direction is rounding noise, which may fall either side of the cut)
    assert not GramSums(names, 0).add(np.column_stack([np.ones(200), X]), y).clear_rank()

"""results/distributions.py (scipy.special) against scipy.stats, which computes the same functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gradfit.results import distributions as d

DFS = [1, 2, 3.5, 12, 97, 1e6, math.inf]


@pytest.mark.parametrize(
    "dof, expected",  # printed tables (to their digits)
    [(1, 12.706204736), (2, 4.302652730), (5, 2.570581836), (12, 2.178812830), (30, 2.042272456), (1000, 1.962339081)],
)
def test_t_quantile_table(dof, expected):
    assert d.t_ppf(0.975, dof) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("df", DFS)
def test_t_matches_scipy_stats(df):
    for p in [0.5, 0.6, 0.9, 0.975, 0.999999, 1 - 1e-12]:
        assert d.t_ppf(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-12, abs=1e-15)
    x = np.array([0.0, 0.3, 2.0, 40.0, 1e3, -2.0, np.inf])
    np.testing.assert_allclose(d.t_sf(x, df), stats.t.sf(x, df), rtol=1e-12, atol=1e-300)
    assert math.isnan(d.t_ppf(0.975, 0)) and math.isnan(stats.t.ppf(0.975, 0))  # (no degrees of freedom)


def test_normal_matches_scipy_stats():
    for p in [0.5, 0.975, 1e-9]:
        assert d.norm_ppf(p) == pytest.approx(stats.norm.ppf(p), rel=1e-14)
    for x in [0.0, 1.5, -3.0, 30.0]:
        assert d.norm_sf(x) == pytest.approx(stats.norm.sf(x), rel=1e-14, abs=1e-300)


@pytest.mark.parametrize("x", [0.0, 0.5, 3.0, 100.0, 1e5, -1.0, math.inf, math.nan])
def test_f_and_chi2_match_scipy_stats(x):
    for n1, n2 in [(1, 1), (3, 17), (10, 1e6), (0, 5), (2, 0)]:
        a, b = d.f_sf(x, n1, n2), float(stats.f.sf(x, n1, n2))
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-300), (n1, n2)
    for k in [1, 2, 7.5, 0]:
        a, b = d.chi2_sf(x, k), float(stats.chi2.sf(x, k))
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-300), k


def test_no_scipy_stats_import():
    """The summaries' distributions come without scipy.stats (1 s of import on 2 cores)."""
    import subprocess
    import sys

    code = ("import sys; from gradfit.results import distributions as d; d.t_ppf(0.975, 5); d.f_sf(2.0, 3, 9); "
            "d.chi2_sf(1.0, 2); print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

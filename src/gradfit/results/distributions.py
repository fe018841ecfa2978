"""The few distribution functions the summaries need, from ``scipy.special``.

``scipy.stats`` computes these same functions with these same ``scipy.special`` routines
(``t.ppf`` is ``stdtrit``, ``f.sf`` is ``fdtrc``, ``chi2.sf`` is ``chdtrc``, ...), but importing it
costs about 1 s of a run on 2 cores, against 0.3 s for ``scipy.special``: a whole ``gradfit
train`` of a small table spends less than that on its fit. tests/test_distributions.py holds
each of them to scipy.stats.
"""

from __future__ import annotations

import numpy as np


def _special():
    from scipy import special  # (imported here for start-up time)

    return special


def t_ppf(p, df):
    """Student's t quantile: scipy.stats.t.ppf(p, df); df = inf is the normal's."""
    s = _special()
    return np.where(np.isinf(df), s.ndtri(p), s.stdtrit(np.where(np.isinf(df), 1.0, df), p))[()]


def t_sf(x, df):
    """P(T > x): scipy.stats.t.sf(x, df)."""
    s = _special()
    x = np.negative(x)
    return np.where(np.isinf(df), s.ndtr(x), s.stdtr(np.where(np.isinf(df), 1.0, df), x))[()]


def norm_ppf(p):
    """The standard normal's quantile: scipy.stats.norm.ppf(p)."""
    return _special().ndtri(p)


def norm_sf(x):
    """P(Z > x): scipy.stats.norm.sf(x)."""
    return _special().ndtr(np.negative(x))


def f_sf(x, dfn, dfd):
    """P(F > x): scipy.stats.f.sf(x, dfn, dfd); nan outside the distribution's parameters, as scipy.stats."""
    if not (dfn > 0 and dfd > 0) or np.isnan(x):
        return float("nan")
    return float(_special().fdtrc(dfn, dfd, max(x, 0.0)))


def chi2_sf(x, df):
    """P(X > x): scipy.stats.chi2.sf(x, df)."""
    if not df > 0 or np.isnan(x):
        return float("nan")
    return float(_special().chdtrc(df, max(x, 0.0)))

"""Large and odd data: names with spaces and non-ASCII letters, huge offsets, tiny spreads.

Known answers: every dataset has planted coefficients and no noise, so the fit must
recover them (in original units, through the scaling that makes them trainable).
The 1 GB memory check is a benchmark (bench/csv_memory.py), not a test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gradfit.config.loading import config_from_dict
from gradfit.results.checkpoint import load_model
from gradfit.train import run as api


def _train(tmp_path, frame: pd.DataFrame, target: str, features, **over):
    frame.to_csv(tmp_path / "data.csv", index=False, encoding="utf-8")
    cfg = {
        "name": "odd",
        "device": "cpu",
        "dtype": "float64",
        "data": {"path": str(tmp_path / "data.csv"), "target": target, "features": features, "split": {"val": 0.2}},
        "model": {"kind": "linear"},
        "optimizer": {"kind": "lbfgs"},
        "train": {"epochs": 200},
    }
    for k, v in over.items():
        cfg[k] = v
    return api.train(config_from_dict(cfg), out=tmp_path / "run")


def test_column_names_with_spaces_and_non_ascii_letters_end_to_end(tmp_path, cli):
    rng = np.random.default_rng(0)
    n = 200
    t, w = rng.uniform(-10, 35, n), rng.uniform(0, 20, n)
    names = ["température (°C)", "vitesse du vent", "Ωmega ñ"]
    o = rng.normal(size=n)
    target = "rendement ü"
    frame = pd.DataFrame({names[0]: t, names[1]: w, names[2]: o, target: 1.5 + 2.0 * t - 0.5 * w + 3.25 * o})
    _train(tmp_path, frame, target, names)

    coefs = json.loads((tmp_path / "run" / "coefficients.json").read_text(encoding="utf-8"))
    assert coefs["target"] == target
    assert list(coefs["coefficients"]) == names
    for name, truth in zip(names, [2.0, -0.5, 3.25]):
        assert coefs["coefficients"][name] == pytest.approx(truth, abs=1e-8)
    assert coefs["intercept"] == pytest.approx(1.5, abs=1e-7)
    eq = coefs["equation"]
    assert eq.startswith(f"{target} = 1.5 ")
    for name in names:
        assert name in eq
    # Written as UTF-8 text, not \\u escapes.
    assert "température" in (tmp_path / "run" / "coefficients.json").read_text(encoding="utf-8")
    # The checkpoint keeps the names; predicting by name works.
    model = load_model(tmp_path / "run")
    assert model.feature_names == names and model.target == target
    pred = model.predict(frame[names].head(5))
    np.testing.assert_allclose(pred, frame[target].head(5), atol=1e-7)
    # gradfit eval reads the run back by those names.
    result = cli("eval", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["val"]["r2"] == pytest.approx(1.0, abs=1e-9)


def test_polynomial_term_names_keep_odd_names(tmp_path):
    x = np.linspace(-2, 2, 80)
    frame = pd.DataFrame({"débit m³/s": x, "niveau": 1 - x + 0.5 * x**2})
    run = _train(tmp_path, frame, "niveau", ["débit m³/s"], model={"kind": "polynomial", "degree": 2})
    c = run.coefficients
    assert set(c["coefficients"]) == {"débit m³/s", "débit m³/s^2"}
    assert c["coefficients"]["débit m³/s^2"] == pytest.approx(0.5, abs=1e-8)
    assert c["coefficients"]["débit m³/s"] == pytest.approx(-1.0, abs=1e-8)
    assert "débit m³/s^2" in c["equation"]


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-7), ("float32", 2e-3)])
def test_huge_offsets_and_tiny_spreads_recover_planted_coefficients(tmp_path, dtype, tol):
    """x1 ~ 1e6 (spread 1e3), x2 ~ 1e-6 (spread 1e-6), x3 = 5 + a spread of 1e-6: scaling makes them trainable."""
    rng = np.random.default_rng(1)
    n = 400
    x1 = 1e6 + rng.uniform(-1e3, 1e3, n)
    x2 = rng.uniform(0, 2e-6, n)
    x3 = 5 + rng.uniform(-1e-6, 1e-6, n)
    b = np.array([2.0e-3, 3.0e6, 4.0e6])  # each feature moves y by a few units
    y = 7.0 + b[0] * x1 + b[1] * x2 + b[2] * (x3 - 5)
    frame = pd.DataFrame({"big": x1, "tiny": x2, "narrow": x3, "y": y})
    run = _train(tmp_path, frame, "y", ["big", "tiny", "narrow"], dtype=dtype)
    c = run.coefficients["coefficients"]
    for name, truth in zip(["big", "tiny", "narrow"], b):
        assert c[name] == pytest.approx(truth, rel=tol)
    # Predictions in original units match y to the dtype's precision relative to the spread of y.
    pred = load_model(tmp_path / "run").predict(frame[["big", "tiny", "narrow"]])
    assert np.max(np.abs(pred - y)) / np.std(y) < (1e-6 if dtype == "float64" else 1e-2)
    assert run.metrics["train"]["r2"] == pytest.approx(1.0, abs=1e-6 if dtype == "float64" else 1e-3)


def test_huge_offset_polynomial_with_adam(tmp_path):
    """A quadratic in x ~ 1e6 with spread 10: the Legendre basis on the scaled x trains with Adam."""
    x = 1e6 + np.linspace(-10, 10, 101)
    u = x - 1e6
    y = 4 + 0.3 * u - 0.02 * u**2
    frame = pd.DataFrame({"x": x, "y": y})
    run = _train(tmp_path, frame, "y", ["x"], model={"kind": "polynomial", "degree": 2},
                 optimizer={"kind": "adam", "lr": 0.05}, train={"epochs": 3000, "tol": 0.0})
    pred = load_model(tmp_path / "run").predict(frame[["x"]])
    assert np.max(np.abs(pred - y)) < 1e-4
    assert run.metrics["train"]["r2"] == pytest.approx(1.0, abs=1e-9)


def test_read_frame_reads_only_the_needed_columns(tmp_path):
    """A text column the config does not use is never parsed (and never a problem)."""
    from gradfit.data.tables import read_frame

    pd.DataFrame({"x": [1.0, 2.0], "notes": ["a, b", "ç"], "y": [3.0, 4.0]}).to_csv(tmp_path / "d.csv", index=False)
    frame = read_frame(tmp_path / "d.csv", ["x", "y"])
    assert list(frame.columns) == ["x", "y"]
    assert all(str(t) == "float64" for t in frame.dtypes)


def test_a_missing_date_stays_missing():
    """A datetime column becomes numbers (nanoseconds); a missing date (NaT) is a missing value,
    reported or dropped like any other, not the number -9.2e18."""
    from gradfit.data.tables import frame_to_arrays
    from gradfit.errors import DataError

    frame = pd.DataFrame({"t": pd.date_range("2026-01-01", periods=5, freq="D"), "y": np.arange(5.0)})
    frame.loc[2, "t"] = pd.NaT
    with pytest.raises(DataError, match="missing value.*column 't' at row 3"):
        frame_to_arrays(frame.copy(), ["t"], "y", "d.parquet", dropna=False, first_row=1)
    X, y, notes = frame_to_arrays(frame.copy(), ["t"], "y", "d.parquet", dropna=True, first_row=1)
    assert X.shape == (4, 1) and list(y) == [0.0, 1.0, 3.0, 4.0] and "dropped 1 row" in notes[0]
    assert X.min() > 1e15  # 2026 in microseconds (or nanoseconds) since 1970

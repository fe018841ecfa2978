"""gradfit export: onnxruntime's predictions on 1,000 new rows equal gradfit predict's; refusals have reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import CONFIGS

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

HOUSES = ["size_m2", "age_years", "rooms", "distance_km"]
# name: (config, --set overrides, columns and their ranges for new rows, relative tolerance)
RUNS = {
    "linear": ("multi.yaml", ["train.epochs=50"], {c: (0, 100) for c in HOUSES}, 1e-12),
    "polynomial": ("multi.yaml", ["model.kind=polynomial", "model.degree=3", "model.interactions=true",
                                  "train.epochs=30"], {c: (0, 40) for c in HOUSES}, 1e-12),
    "polynomial32": ("multi.yaml", ["model.kind=polynomial", "model.degree=2", "dtype=float32", "train.epochs=30"],
                     {c: (0, 40) for c in HOUSES}, 1e-6),
    "mlp": ("mlp.yaml", ["train.epochs=20", "model.hidden=[16,16]", "dtype=float32"], {"x": (-3, 3)}, 1e-6),
    "mlp64": ("mlp.yaml", ["train.epochs=20", "model.hidden=[8]", "model.activation=sigmoid", "dtype=float64"],
              {"x": (-3, 3)}, 1e-12),
    "formula": ("misra1a.yaml", [], {"x": (50, 800)}, 1e-12),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from typer.testing import CliRunner

    from gradfit.cli import app

    base = tmp_path_factory.mktemp("export")
    out = {}
    for name, (cfg, sets, _, _) in RUNS.items():
        args = ["train", str(CONFIGS / cfg), "--out", str(base / name), "-q"]
        for s in sets:
            args += ["--set", s]
        res = CliRunner().invoke(app, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        out[name] = base / name
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_matches_predict(name, runs, cli, tmp_path):
    cols, rtol = RUNS[name][2], RUNS[name][3]
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({c: rng.uniform(lo, hi, 1000) for c, (lo, hi) in cols.items()})
    frame.to_csv(tmp_path / "new.csv", index=False)
    res = cli("predict", runs[name], "--data", tmp_path / "new.csv", "--out", tmp_path / "pred.csv")
    assert res.exit_code == 0, res.output
    want = pd.read_csv(tmp_path / "pred.csv")["prediction"].to_numpy()

    res = cli("export", runs[name], "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert res.exit_code == 0, res.output
    assert "onnxruntime agrees" in res.stderr
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(cols)
    assert all(i.type == "tensor(double)" for i in sess.get_inputs())
    got = sess.run(["prediction"], {c: frame[c].to_numpy(np.float64) for c in cols})[0]
    assert got.shape == (1000,) and got.dtype == np.float64
    # Relative to the size of the predictions (an MLP's cross zero, where a pointwise ratio means nothing).
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def test_default_out_and_torchscript(runs, cli, tmp_path):
    import torch

    run = runs["polynomial"]
    res = cli("export", run)
    assert res.exit_code == 0, res.output
    assert (run / "model.onnx").is_file()
    res = cli("export", run, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert res.exit_code == 0, res.output
    from gradfit.results.checkpoint import load_model

    lm = load_model(run)
    X = np.random.default_rng(2).uniform(0, 40, (500, 4))
    ts = torch.jit.load(str(tmp_path / "m.pt"))
    got = ts(*[torch.tensor(X[:, j]) for j in range(4)]).numpy()
    np.testing.assert_allclose(got, lm.predict(X), rtol=1e-12, atol=1e-12 * np.max(np.abs(got)))


@pytest.fixture(scope="module")
def cars(tmp_path_factory):
    from typer.testing import CliRunner

    from gradfit.cli import app

    out = tmp_path_factory.mktemp("cars") / "run"
    res = CliRunner().invoke(app, ["train", str(CONFIGS / "used_cars.yaml"), "--out", str(out), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def test_categorical_model(cars, cli, tmp_path):
    """Text, boolean and date columns: strings in for the categories, days since 1970 for the date."""
    rng = np.random.default_rng(3)
    n = 1000
    frame = pd.DataFrame({
        "make": rng.choice(["Fiat", "Ford", "Toyota", "VW"], n),
        "fuel": rng.choice(["petrol", "diesel", "electric"], n),
        "automatic": rng.choice([True, False], n),
        "first_registered": (pd.Timestamp("2008-01-01") + pd.to_timedelta(rng.integers(0, 5000, n), unit="D")).strftime("%Y-%m-%d"),
        "mileage_km": rng.uniform(0, 250_000, n).round(),
        "power_kw": rng.uniform(40, 150, n).round(),
    })
    frame.to_csv(tmp_path / "new.csv", index=False)
    res = cli("predict", cars, "--data", tmp_path / "new.csv", "--out", tmp_path / "pred.csv")
    assert res.exit_code == 0, res.output
    want = pd.read_csv(tmp_path / "pred.csv")["prediction"].to_numpy()
    res = cli("export", cars, "--out", tmp_path / "cars.onnx")
    assert res.exit_code == 0, res.output
    assert "strings: make, fuel, automatic" in res.stderr
    onnx.checker.check_model(onnx.load(str(tmp_path / "cars.onnx")), full_check=True)
    sess = ort.InferenceSession(str(tmp_path / "cars.onnx"), providers=["CPUExecutionProvider"])
    days = (pd.to_datetime(frame["first_registered"]) - pd.Timestamp("1970-01-01")).dt.days.to_numpy(np.float64)
    feeds = {"make": frame["make"].to_numpy(object), "fuel": frame["fuel"].to_numpy(object),
             "automatic": frame["automatic"].astype(str).to_numpy(object), "first_registered[days]": days,
             "mileage_km": frame["mileage_km"].to_numpy(np.float64), "power_kw": frame["power_kw"].to_numpy(np.float64)}
    assert {i.name for i in sess.get_inputs()} == set(feeds)
    got = sess.run(["prediction"], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.max(np.abs(want)))
    # A level the model never saw: NaN (gradfit predict refuses such a row).
    feeds = {k: v[:2].copy() for k, v in feeds.items()}
    feeds["make"][0] = "Lada"
    got = sess.run(["prediction"], feeds)[0]
    assert np.isnan(got[0]) and np.isfinite(got[1])
    res = cli("export", cars, "--format", "torchscript")
    assert res.exit_code == 1 and "text or date columns" in " ".join(res.stderr.split())


def test_refuses_wilkinson_formula(runs):
    from gradfit.errors import ExportError
    from gradfit.results.checkpoint import load_model
    from gradfit.results.export import export_model

    lm = load_model(runs["linear"])
    lm.config = {**lm.config, "model": {**lm.config["model"], "formula": "price_k ~ np.log(size_m2)"}}
    with pytest.raises(ExportError, match=r"formulaic from the formula 'price_k ~ np.log\(size_m2\)'"):
        export_model(lm, "onnx")


def test_cli_refusals(runs, cli, tmp_path):
    res = cli("export", runs["linear"], "--format", "tflite")
    assert res.exit_code == 1
    err = " ".join(res.stderr.split())
    assert "unknown export format 'tflite'" in err and "onnx or torchscript" in err
    res = cli("export", runs["linear"], "--out", tmp_path)
    assert res.exit_code == 1 and "is a directory" in " ".join(res.stderr.split())
    res = cli("export", tmp_path / "nothing")
    assert res.exit_code == 1 and "checkpoint not found" in " ".join(res.stderr.split())

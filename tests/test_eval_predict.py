"""gradfit eval and gradfit predict, against metrics.json, coefficients.json and numpy by hand."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gradfit
from conftest import run_gradfit, small_config
from gradfit.config.loading import config_from_dict
from gradfit.errors import DataError
from gradfit.results.evaluate import evaluate, predict_file
from gradfit.train.run import train

METRICS = ("loss", "mse", "rmse", "mae", "r2")


def said(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def write_csv(path: Path, n: int, features: list[str], f, seed: int, noise: float) -> Path:
    """A CSV of features uniform on [-2, 3] and y = f(features) + noise."""
    rng = np.random.default_rng(seed)
    cols = {name: rng.uniform(-2, 3, n) for name in features}
    cols["y"] = f(*cols.values()) + noise * rng.standard_normal(n)
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


def run_on(tmp: Path, data: dict, model: dict, **over) -> Path:
    cfg = small_config(data=data, model=model, **over)
    return train(config_from_dict(cfg), out=tmp / "run").run_dir


@pytest.fixture(scope="module")
def quad(tmp_path_factory):
    """A float32 quadratic on a CSV, held out: val and test."""
    tmp = tmp_path_factory.mktemp("quad")
    csv = write_csv(tmp / "quad.csv", 150, ["x"], lambda x: 1 + 2 * x - 0.5 * x**2, 1, 0.3)
    run = run_on(tmp, {"path": str(csv), "target": "y", "split": {"val": 0.2, "test": 0.1}},
                 {"kind": "polynomial", "degree": 2})
    return run, csv


@pytest.fixture(scope="module")
def several(tmp_path_factory):
    """A float64 degree-2 polynomial of three features, with interactions."""
    tmp = tmp_path_factory.mktemp("several")
    csv = write_csv(tmp / "s.csv", 200, ["a", "b", "c"], lambda a, b, c: 1 + a - 2 * b * c + 0.5 * a**2 + c, 2, 0.1)
    run = run_on(tmp, {"path": str(csv), "target": "y", "split": {"val": 0.25}},
                 {"kind": "polynomial", "degree": 2}, dtype="float64", train={"epochs": 400})
    return run, csv


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A float32 linear model of two features."""
    tmp = tmp_path_factory.mktemp("linear")
    csv = write_csv(tmp / "l.csv", 120, ["u", "v"], lambda u, v: 5 - 3 * u + 0.25 * v, 3, 0.2)
    run = run_on(tmp, {"path": str(csv), "target": "y"}, {"kind": "linear"})
    return run, csv


def polynomial_of(coefficients: dict, frame: pd.DataFrame) -> np.ndarray:
    """Evaluate coefficients.json's polynomial on raw inputs: terms 'x', 'x^2', 'a*b^2'."""
    out = np.full(len(frame), float(coefficients.get("intercept", 0.0)))
    for term, c in coefficients["coefficients"].items():
        col = np.ones(len(frame))
        for factor in term.split("*"):
            name, _, power = factor.partition("^")
            col = col * frame[name].to_numpy(dtype=float) ** int(power or 1)
        out += c * col
    return out


def by_hand(y: np.ndarray, pred: np.ndarray) -> dict:
    r = pred - y
    mse = float(np.mean(r**2))
    return {"loss": mse, "mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(r))),
            "r2": 1 - float(np.sum(r**2)) / float(np.sum((y - y.mean()) ** 2))}


def assert_metrics_close(got: dict, want: dict, rtol: float) -> None:
    assert set(got) == set(METRICS)
    for k in METRICS:
        assert got[k] == pytest.approx(want[k], rel=rtol), k


# ---------------------------------------------------------------- eval


@pytest.mark.parametrize("target", ["dir", "file"])
def test_eval_without_data_reproduces_the_runs_held_out_metrics(cli, quad, target):
    run, _ = quad
    recorded = json.loads((run / "metrics.json").read_text())
    r = cli("eval", run if target == "dir" else run / "model.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert set(got) == {"val", "test"}
    for name in ("val", "test"):
        assert_metrics_close(got[name], recorded[name], 1e-6)
    assert r.stderr == ""


def test_eval_on_synthetic_data_regenerates_the_held_out_rows(cli, tmp_path):
    run = run_on(tmp_path, {"synthetic": {"kind": "linear", "n_features": 3, "n_samples": 80, "noise": 0.5},
                            "split": {"val": 0.25, "test": 0.25}}, {"kind": "linear"})
    recorded = json.loads((run / "metrics.json").read_text())
    ev = evaluate(run)
    assert ev.rows == {"val": 20, "test": 20}
    assert "synthetic linear data (80 rows, seed 0)" == ev.source
    for name in ("val", "test"):
        assert_metrics_close(ev.metrics[name], recorded[name], 1e-6)
    assert ev.notes == []
    r = cli("eval", run)
    assert r.exit_code == 0
    assert "held-out rows of synthetic linear data" in said(r.stdout)
    assert f"{recorded['val']['mse']:.6g}" in r.stdout


def test_eval_with_data_equals_metrics_by_hand_from_coefficients_json(cli, quad):
    run, csv = quad
    coefs = json.loads((run / "coefficients.json").read_text())
    frame = pd.read_csv(csv)
    want = by_hand(frame["y"].to_numpy(), polynomial_of(coefs, frame))
    r = cli("eval", run, "--data", csv, "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert list(got) == ["data"]
    assert_metrics_close(got["data"], want, 1e-6)
    # A file that holds only the validation rows gives the val metrics.
    recorded = json.loads((run / "metrics.json").read_text())
    from gradfit.data.split import split_rows

    split = split_rows(len(frame), 0.2, 0.1, 0)
    val_csv = csv.parent / "val_only.parquet"
    frame.iloc[split.val.numpy()].to_parquet(val_csv)
    assert_metrics_close(evaluate(run, val_csv).metrics["data"], recorded["val"], 1e-6)


def test_eval_reports_the_models_own_loss(tmp_path):
    csv = write_csv(tmp_path / "h.csv", 100, ["x"], lambda x: 2 * x + 3, 4, 1.0)
    run = run_on(tmp_path, {"path": str(csv), "target": "y"}, {"kind": "linear"},
                 loss={"kind": "huber", "delta": 0.5})
    recorded = json.loads((run / "metrics.json").read_text())
    ev = evaluate(run)
    assert ev.metrics["val"]["loss"] != ev.metrics["val"]["mse"]
    assert_metrics_close(ev.metrics["val"], recorded["val"], 1e-6)


def test_eval_refuses_a_data_file_that_changed(cli, tmp_path):
    csv = write_csv(tmp_path / "d.csv", 60, ["x"], lambda x: x + 1, 5, 0.1)
    run = run_on(tmp_path, {"path": str(csv), "target": "y"}, {"kind": "linear"})
    with open(csv, "a") as f:
        f.write("0.5,1.5\n")
    r = cli("eval", run)
    assert r.exit_code == 1
    assert f"{csv} changed since the model was trained on it" in said(r.stderr)
    assert f"--data {csv}" in said(r.stderr)
    assert r.stdout == ""
    # the file as it is now can still be evaluated as a whole
    r = cli("eval", run, "--data", csv, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["data"]["r2"] > 0.9
    csv.unlink()
    r = cli("eval", run)
    assert r.exit_code == 1
    assert f"the data this model was trained on is no longer at {csv}" in said(r.stderr)


def test_eval_without_held_out_rows_asks_for_data(cli, tmp_path):
    run = run_on(tmp_path, {"synthetic": {"kind": "polynomial", "coefficients": [1, 1], "n_samples": 30},
                            "split": {"val": 0.0}}, {"kind": "linear"})
    r = cli("eval", run)
    assert r.exit_code == 1
    assert "trained with no held-out rows" in said(r.stderr) and "--data FILE" in said(r.stderr)


def test_eval_needs_the_target_column(cli, quad, tmp_path):
    run, _ = quad
    (tmp_path / "x.csv").write_text("x\n1\n2\n")
    r = cli("eval", run, "--data", tmp_path / "x.csv")
    assert r.exit_code == 1
    assert "target column 'y' not found; columns found: 'x'" in said(r.stderr)


def test_eval_drops_missing_values_when_the_run_did(tmp_path):
    csv = write_csv(tmp_path / "d.csv", 60, ["x"], lambda x: x + 1, 6, 0.1)
    run = run_on(tmp_path, {"path": str(csv), "target": "y", "dropna": True}, {"kind": "linear"})
    holes = tmp_path / "holes.csv"
    holes.write_text("x,y\n1,2\n,3\n2,3.1\n3,\n")
    ev = evaluate(run, holes)
    assert ev.rows == {"data": 2}
    assert any("dropped 2 rows with missing values" in n for n in ev.notes)
    plain = run_on(tmp_path / "p", {"path": str(csv), "target": "y"}, {"kind": "linear"})
    with pytest.raises(DataError, match="missing value") as err:
        evaluate(plain, holes)
    assert "data.dropna" not in (err.value.hint or "")


# ---------------------------------------------------------------- predict


def read_predictions(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


@pytest.mark.parametrize("fixture, rtol", [("quad", 1e-5), ("linear", 1e-5), ("several", 1e-10)])
def test_predict_equals_the_polynomial_in_coefficients_json(cli, request, fixture, rtol):
    run, csv = request.getfixturevalue(fixture)
    coefs = json.loads((run / "coefficients.json").read_text())
    frame = pd.read_csv(csv)
    r = cli("predict", run, "--data", csv)
    assert r.exit_code == 0, r.stderr
    out = read_predictions(r.stdout)
    assert list(out.columns) == list(frame.columns) + ["prediction"]
    assert len(out) == len(frame)
    pd.testing.assert_frame_equal(out[frame.columns], frame)
    want = polynomial_of(coefs, frame)
    np.testing.assert_allclose(out["prediction"], want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_predict_writes_full_precision(cli, several, tmp_path):
    run, csv = several
    exact = gradfit.load_model(run).predict(pd.read_csv(csv))
    out = tmp_path / "p.csv"
    r = cli("predict", run / "model.safetensors", "--data", csv, "--out", out)
    assert r.exit_code == 0 and r.stdout == ""
    assert f"wrote {len(exact)} predictions to {out}" in said(r.stderr)
    assert np.array_equal(pd.read_csv(out)["prediction"].to_numpy(), exact)  # bit for bit


def test_predict_without_the_target_column_and_chosen_columns(cli, several, tmp_path):
    run, csv = several
    frame = pd.read_csv(csv).drop(columns="y").head(5)
    frame.insert(0, "id", range(5))
    src = tmp_path / "in.parquet"
    frame.to_parquet(src)
    r = cli("predict", run, "--data", src, "--columns", "id,prediction")
    assert r.exit_code == 0, r.stderr
    out = read_predictions(r.stdout)
    assert list(out.columns) == ["id", "prediction"]
    assert np.array_equal(out["prediction"].to_numpy(), gradfit.load_model(run).predict(frame))
    r = cli("predict", run, "--data", src, "--columns", "prediction", "--columns", "a")
    assert list(read_predictions(r.stdout).columns) == ["prediction", "a"]
    r = cli("predict", run, "--data", src, "--columns", "id,price")
    assert r.exit_code == 1
    assert "--columns: 'price' not among the columns" in said(r.stderr)
    assert "'id', 'a', 'b', 'c', 'prediction'" in said(r.stderr)


def test_predict_a_file_missing_a_feature_column(cli, several, tmp_path):
    run, _ = several
    (tmp_path / "in.csv").write_text("a,c,extra\n1,2,3\n")
    for cmd in ("predict", "eval"):
        r = cli(cmd, run, "--data", tmp_path / "in.csv")
        assert r.exit_code == 1
        assert "the model's feature column 'b' not found; columns found: 'a', 'c', 'extra'" in said(r.stderr)
        assert r.stdout == ""
    proc = run_gradfit("predict", run, "--data", tmp_path / "in.csv")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "'b' not found" in said(proc.stderr)


def test_predict_refuses_bad_values_and_bad_outputs(cli, quad, tmp_path):
    run, csv = quad
    (tmp_path / "bad.csv").write_text("x\n1\nabc\n")
    r = cli("predict", run, "--data", tmp_path / "bad.csv")
    assert r.exit_code == 1 and "column 'x' is not numeric: row 3 holds 'abc'" in said(r.stderr)
    r = cli("predict", run, "--data", csv, "--out", csv)
    assert r.exit_code == 1 and "is the input data file; refusing to overwrite it" in said(r.stderr)
    r = cli("predict", run, "--data", csv, "--out", tmp_path)
    assert r.exit_code == 1 and "is a directory" in said(r.stderr)
    r = cli("predict", run)
    assert r.exit_code == 2  # --data is required: a usage error
    r = cli("predict", run, "--data", tmp_path / "nope.csv")
    assert r.exit_code == 1 and "data file not found" in said(r.stderr)


def test_predict_replaces_an_existing_prediction_column(quad, tmp_path):
    run, csv = quad
    frame = pd.read_csv(csv).head(3).assign(prediction=0.0)
    frame.to_csv(tmp_path / "in.csv", index=False)
    res = predict_file(run, tmp_path / "in.csv", out=tmp_path / "out.parquet")
    assert res.notes and "already has a 'prediction' column" in res.notes[0]
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert list(back.columns) == ["x", "y", "prediction"]
    assert np.array_equal(back["prediction"].to_numpy(), gradfit.load_model(run).predict(frame))


def test_the_checkpoint_alone_evaluates_with_data_and_predicts(cli, linear, tmp_path):
    run, csv = linear
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "model.safetensors", alone / "model.safetensors")
    ev = evaluate(alone, csv)
    assert ev.metrics["data"]["r2"] > 0.99
    r = cli("predict", alone, "--data", csv)
    assert r.exit_code == 0
    assert len(read_predictions(r.stdout)) == 120


def test_library_api(quad, tmp_path):
    run, csv = quad
    ev = gradfit.evaluate_model(run)
    assert set(ev.metrics) == {"val", "test"} and ev.rows == {"val": 30, "test": 15}
    assert ev.recorded["val"] == json.loads((run / "metrics.json").read_text())["val"]
    res = gradfit.predict_file(run, csv, columns=["prediction"])
    assert list(res.frame.columns) == ["prediction"] and res.n_rows == 150 and res.out is None


def test_eval_notes_a_checkpoint_saved_mid_training(quad, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run, csv = quad
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["extra"] = json.dumps({"epochs": 40, "in_progress": True})
    save_file(tensors, str(tmp_path / "partial.safetensors"), metadata=meta)
    ev = evaluate(tmp_path / "partial.safetensors")
    assert ev.recorded == {}
    assert ev.notes == ["this checkpoint was saved while training was in progress (epoch 40)"]

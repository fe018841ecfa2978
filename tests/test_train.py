"""gradfit train: known answers for every model, loss and optimizer, and the run directory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import CONFIGS, DATA, small_config
from gradfit.config.loading import config_from_dict, load_config
from gradfit.train.run import train


def _train(raw, tmp_path, **kw):
    raw = {**raw, "output": {"dir": str(tmp_path / "runs")}}
    return train(config_from_dict(raw, base_dir=kw.pop("base_dir", ".")), **kw)


def test_quadratic_example_recovers_3_2_1(tmp_path):
    run = train(load_config(CONFIGS / "quadratic.yaml"), out=tmp_path / "q")
    c = run.coefficients
    assert c["intercept"] == pytest.approx(3, abs=1e-3)
    assert c["coefficients"]["x"] == pytest.approx(2, abs=1e-3)
    assert c["coefficients"]["x^2"] == pytest.approx(1, abs=1e-3)
    assert c["equation"] == "y = 3 + 2*x + 1*x^2"
    saved = json.loads((tmp_path / "q" / "coefficients.json").read_text())
    assert saved["equation"] == c["equation"]


def test_exact_fit_stops_at_the_rounding_level(tmp_path):
    """float32 Adam on exact data: the loss reaches the target's rounding noise, where it jumps by
    large relative amounts; the run stops there (tolerance) instead of running on to max_epochs."""
    run = train(load_config(CONFIGS / "quadratic.yaml"), write=False)
    m = run.metrics
    assert m["stop_reason"] == "tolerance" and m["converged"] is True
    assert m["epochs"] < 600  # the answer is reached by about epoch 300 of the 2000 allowed
    # ... and not before the rounding level: every coefficient to float32 precision
    assert m["exact"]["gap"] < 1e-12
    c = run.coefficients
    assert [c["intercept"], c["coefficients"]["x"], c["coefficients"]["x^2"]] == pytest.approx([3, 2, 1], rel=1e-6)
    # the relative rule alone never fired: the last losses still change by far more than tol
    tail = [r.train_loss for r in run.result.history[-6:]]
    assert max(tail) < 1e-12 and max(abs(a - b) / a for a, b in zip(tail, tail[1:])) > 1e-6


def test_tol_zero_runs_every_epoch(tmp_path):
    run = train(load_config(CONFIGS / "quadratic.yaml", ["train.tol=0", "train.epochs=700"]), write=False)
    assert run.metrics["epochs"] == 700 and run.metrics["stop_reason"] == "max_epochs"


def test_linear_csv_matches_numpy_lstsq(tmp_path):
    run = train(load_config(CONFIGS / "multi.yaml"), out=tmp_path / "m")
    df = pd.read_csv(DATA / "houses.csv")
    feats = ["size_m2", "age_years", "rooms", "distance_km"]
    # numpy on the same training rows the run used
    from gradfit.data.split import split_rows

    split = split_rows(len(df), 0.2, 0.1, 0)
    tr = split.train.numpy()
    A = np.column_stack([df[feats].to_numpy()[tr], np.ones(len(tr))])
    sol, *_ = np.linalg.lstsq(A, df["price_k"].to_numpy()[tr], rcond=None)
    c = run.coefficients
    for name, ref in zip(feats, sol[:-1]):
        assert c["coefficients"][name] == pytest.approx(ref, rel=1e-4)
    assert c["intercept"] == pytest.approx(sol[-1], rel=1e-4)
    assert run.metrics["exact"]["gap"] < 1e-8


def test_huber_and_mae_beat_mse_on_outliers(tmp_path):
    errors = {}
    for kind in ("mse", "mae", "huber"):
        cfg = load_config(CONFIGS / "huber.yaml", [f"loss.kind={kind}"] + (["loss.delta=null"] if kind != "huber" else []))
        run = train(cfg, write=False)
        c = run.coefficients
        errors[kind] = max(abs(c["coefficients"]["x"] - 2) / 2, abs(c["intercept"] - 3) / 3)
    assert errors["huber"] < 0.05 and errors["mae"] < 0.05
    assert errors["mse"] > 0.3
    assert errors["mse"] > 10 * errors["huber"]


def test_mlp_reaches_r2_on_held_out_curve(tmp_path):
    run = train(load_config(CONFIGS / "mlp.yaml"), write=False)
    assert run.metrics["val"]["r2"] >= 0.98
    assert run.coefficients["model"] == "mlp"
    assert run.coefficients["parameters"] == 1 * 64 + 64 + 64 * 64 + 64 + 64 + 1


def test_same_config_twice_gives_identical_coefficients(tmp_path):
    for name in ("mlp.yaml", "linear.yaml"):
        a = train(load_config(CONFIGS / name, ["train.epochs=100"]), write=False)
        b = train(load_config(CONFIGS / name, ["train.epochs=100"]), write=False)
        assert a.coefficients == b.coefficients
        assert a.metrics["train"] == b.metrics["train"]


def test_minibatch_sgd_momentum_recovers_line(tmp_path):
    raw = small_config(
        data={"synthetic": {"kind": "linear", "n_features": 3, "coefficients": [1.5, -2.0, 0.5], "bias": 4.0, "n_samples": 2000, "noise": 0.01}},
        model={"kind": "linear"},
        optimizer={"kind": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
        train={"epochs": 60, "batch_size": 128},
    )
    run = _train(raw, tmp_path, write=False)
    c = run.coefficients
    assert c["intercept"] == pytest.approx(4.0, abs=0.01)
    assert [c["coefficients"][k] for k in ("x1", "x2", "x3")] == pytest.approx([1.5, -2.0, 0.5], abs=0.01)


def test_lr_auto_sgd_is_1_8_over_L_and_converges(tmp_path):
    run = train(load_config(CONFIGS / "linear.yaml"), write=False)
    assert run.lr_rule.startswith("auto: 1.8/L")
    # The scaled design of a centred, standardized line has Hessian 2*I: L = 2, lr = 0.9.
    assert run.metrics["lr"] == pytest.approx(0.9, rel=1e-6)
    assert run.metrics["exact"]["gap"] < 1e-6
    assert run.metrics["stop_reason"] == "tolerance"


def test_polynomial_several_features_with_interactions(tmp_path):
    rng = np.random.default_rng(1)
    x1, x2 = rng.uniform(-2, 5, 300), rng.uniform(10, 20, 300)
    y = 1 + 2 * x1 - 0.5 * x2 + 0.25 * x1 * x2 + 0.1 * x1**2 - 0.05 * x2**2
    path = tmp_path / "p.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "y": y}).to_csv(path, index=False, float_format="%.17g")
    raw = small_config(
        dtype="float64",
        data={"path": str(path), "target": "y", "split": {"val": 0}},
        model={"kind": "polynomial", "degree": 2},
        optimizer={"kind": "lbfgs"},
        train={"epochs": 200},
    )
    run = _train(raw, tmp_path, write=False)
    c = run.coefficients["coefficients"]
    expect = {"x1": 2, "x2": -0.5, "x1^2": 0.1, "x1*x2": 0.25, "x2^2": -0.05}
    assert list(c) == ["x1", "x2", "x1^2", "x1*x2", "x2^2"]
    for k, v in expect.items():
        assert c[k] == pytest.approx(v, rel=1e-6, abs=1e-8)
    assert run.coefficients["intercept"] == pytest.approx(1, abs=1e-6)


def test_early_stopping_restores_best_weights(tmp_path):
    raw = small_config(
        data={"synthetic": {"kind": "polynomial", "coefficients": [0, 1], "n_samples": 60, "noise": 0.5}, "split": {"val": 0.3}},
        model={"kind": "mlp", "hidden": [64, 64]},
        optimizer={"kind": "adam", "lr": 0.01},
        train={"epochs": 3000, "early_stopping": {"patience": 20}},
    )
    run = _train(raw, tmp_path, write=False)
    m = run.metrics
    assert m["stop_reason"] == "early_stopping"
    hist = run.result.history
    best = min(r.val_loss for r in hist)
    assert m["best_epoch"] == min(hist, key=lambda r: r.val_loss).epoch
    assert m["val"]["loss"] == pytest.approx(best, rel=1e-5)
    assert m["epochs"] == m["best_epoch"] + 20


def test_divergence_is_a_clear_error(tmp_path):
    from gradfit.errors import TrainingError

    raw = small_config(optimizer={"kind": "sgd", "lr": 50.0}, train={"epochs": 500})
    with pytest.raises(TrainingError, match=r"diverged.*epoch \d+") as exc:
        _train(raw, tmp_path)
    assert "lower optimizer.lr" in exc.value.hint
    assert not (tmp_path / "runs" / "t").exists()  # nothing half-written


def test_float64_and_no_standardize(tmp_path):
    raw = small_config(
        dtype="float64",
        data={"synthetic": {"kind": "polynomial", "coefficients": [3, 2], "n_samples": 50, "x_range": [0, 1]}, "standardize": False},
        model={"kind": "linear"},
        optimizer={"kind": "sgd", "lr": "auto"},
        train={"epochs": 5000},
    )
    run = _train(raw, tmp_path, write=False)
    assert run.coefficients["coefficients"]["x"] == pytest.approx(2, rel=1e-6)
    assert run.model.head.weight.dtype.__str__() == "torch.float64"


def test_run_directory_files(tmp_path):
    run = _train(small_config(), tmp_path)
    d = run.run_dir
    assert d == tmp_path / "runs" / "t"
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(["config.yaml", "metrics.json", "history.csv", "coefficients.json", "model.safetensors", "loss.png", "fit.png",
                            "optimizer.safetensors", "split.csv", "summary.json"])  # the training state (--resume); each row's set; the summary sums
    m = json.loads((d / "metrics.json").read_text())
    for k in ("train", "val", "test", "epochs", "stop_reason", "converged", "seconds", "device", "exact"):
        assert k in m
    assert set(m["train"]) == {"loss", "mse", "rmse", "mae", "r2"}
    assert m["test"] is None and m["device"] == "cpu"
    assert m["stop_reason"] in ("max_epochs", "tolerance", "early_stopping", "interrupted")
    rows = list(csv.DictReader((d / "history.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert len(rows) == m["epochs"] and rows[-1]["epoch"] == str(m["epochs"])
    assert float(rows[-1]["seconds"]) >= float(rows[0]["seconds"])
    # The resolved config repeats the run.
    again = train(load_config(d / "config.yaml"), write=False)
    assert again.coefficients == run.coefficients
    # A second run with the same name gets a fresh sibling directory.
    run2 = _train(small_config(), tmp_path)
    assert run2.run_dir == tmp_path / "runs" / "t-2"


def test_out_refuses_non_empty_directory_without_force(tmp_path):
    from gradfit.errors import GradfitError

    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(GradfitError, match="never overwrites"):
        _train(small_config(), tmp_path, out=out)
    assert (out / "keep.txt").read_text() == "x"
    run = _train(small_config(), tmp_path, out=out, force=True)
    assert (run.run_dir / "metrics.json").exists()


def test_cuda_absent_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from gradfit.errors import TrainingError

    with pytest.raises(TrainingError, match="CUDA is not available"):
        _train(small_config(device="cuda"), tmp_path)


@pytest.mark.cuda
def test_cuda_matches_cpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    a = _train(small_config(device="cpu", dtype="float64"), tmp_path, write=False)
    b = _train(small_config(device="cuda", dtype="float64"), tmp_path, write=False)
    assert b.metrics["device"].startswith("cuda")
    for k, v in a.coefficients["coefficients"].items():
        assert b.coefficients["coefficients"][k] == pytest.approx(v, rel=1e-8)


def test_help_does_not_import_torch():
    code = "import sys; sys.argv=['gradfit','--help']\nfrom gradfit.cli import app\ntry:\n    app()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr


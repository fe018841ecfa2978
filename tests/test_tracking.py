"""Tracking: MLflow (a local SQLite store in tmp_path) and TensorBoard event files; a failure only warns."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from conftest import DATA

pytest.importorskip("mlflow")


def _config(tmp_path, **output) -> str:
    cfg = {
        "name": "trk",
        "seed": 0,
        "data": {"path": str(DATA / "houses.csv"), "target": "price_k", "split": {"val": 0.2, "test": 0.1}},
        "model": {"kind": "polynomial", "degree": 2},
        "optimizer": {"kind": "adam", "lr": 0.05},
        "train": {"epochs": 25},
        "output": {"dir": str(tmp_path / "runs"), **output},
    }
    p = tmp_path / "trk.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    from typer.testing import CliRunner

    from gradfit.cli import app

    tmp = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    (tmp / "store").mkdir()
    cfg = _config(tmp, mlflow={"tracking_uri": uri, "experiment": "houses"}, tensorboard=True)
    res = CliRunner().invoke(app, ["train", cfg, "--out", str(tmp / "run"), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp / "run", uri


def test_mlflow_params_metrics_artifacts(tracked):
    from mlflow.tracking import MlflowClient

    from gradfit.train.tracking import flatten

    run_dir, uri = tracked
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("houses")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "trk"
    # Every key of the resolved config, flattened, as a param with its value.
    want = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert "model.degree" in want and "data.split.val" in want and len(want) > 25
    assert run.data.params == want
    # The epoch losses as a metric history, step = epoch, equal to history.csv.
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    hist = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == [int(r["epoch"]) for r in rows] and len(hist) == 25
    for m, r in zip(hist, rows):
        assert m.value == pytest.approx(float(r["train_loss"]), rel=1e-12)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 25
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test_rmse"] == pytest.approx(metrics["test"]["rmse"], rel=1e-12)
    assert run.data.metrics["val_r2"] == pytest.approx(metrics["val"]["r2"], rel=1e-12)
    # The run directory's files as artifacts (the TensorBoard events among them).
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    files = {p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert files <= arts and {"model.safetensors", "metrics.json", "config.yaml"} <= files
    assert "tensorboard" in arts
    assert not any("tracking failed" in w for w in metrics["warnings"])


def test_tensorboard_events(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tracked
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train_loss")
    assert [e.step for e in loss] == list(range(1, 26))
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert loss[-1].value == pytest.approx(float(rows[-1]["train_loss"]), rel=1e-6)  # (stored as float32)
    assert "final/val_rmse" in acc.Tags()["scalars"]


def test_unreachable_server_warns_and_keeps_the_run(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = _config(tmp_path, mlflow={"tracking_uri": "http://127.0.0.1:9", "experiment": "x"})
    res = cli("train", cfg, "--out", tmp_path / "run", "-q")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (w,) = [w for w in metrics["warnings"] if "MLflow tracking failed" in w]
    assert "127.0.0.1:9" in w and "check output.mlflow.tracking_uri" in w
    assert "MLflow tracking failed" in " ".join(res.stderr.split())
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()  # (off by default)


def test_flatten():
    from gradfit.train.tracking import flatten

    assert flatten({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": {}}) == {"a.b": "1", "a.c": "null", "a.d": "[1, 2]", "e": "{}"}
    assert flatten({"data": {"reference": {"a[b]": "x"}}}) == {"data.reference.a_b_": "x"}

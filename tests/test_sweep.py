"""gradfit sweep: grid over config values, ranking by a validation metric, resume, processes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gradfit.cli import app
from gradfit.config.loading import load_config
from gradfit.data.tables import load_dataset

POLY = """name: poly
seed: 1
data:
  synthetic: {kind: polynomial, coefficients: [1, -2, 0.5, 0.4], n_samples: 48, noise: 0.6, x_range: [-2, 2]}
  split: {val: 0.0, test: 0.0}
model: {kind: polynomial, degree: 1}
loss: {kind: mse}
optimizer: {kind: lbfgs}
train: {epochs: 200}
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "poly.yaml").write_text(POLY)
    args = ["sweep", str(d / "poly.yaml"), "--grid", "model.degree=1,2,3,5", "--folds", "3", "--out", str(d / "s")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return d, args, res.output


def test_best_is_gridsearchcv_best_with_the_same_folds(swept):
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    d, _, _ = swept
    ranking = json.loads((d / "s" / "ranking.json").read_text())
    assert ranking["metric"] == "val.r2"
    ds = load_dataset(load_config(d / "poly.yaml"))
    X, y = ds.X.numpy(), ds.y.numpy()
    with open(d / "s" / "model.degree=1" / "folds.csv", newline="") as f:
        fold = np.array([int(r["fold"]) - 1 for r in csv.DictReader(f)])
    search = GridSearchCV(make_pipeline(PolynomialFeatures(), LinearRegression()),
                          {"polynomialfeatures__degree": [1, 2, 3, 5]}, cv=PredefinedSplit(fold), scoring="r2")
    search.fit(X, y)
    best = ranking["runs"][0]
    assert best["overrides"] == [f"model.degree={search.best_params_['polynomialfeatures__degree']}"]
    assert best["score"] == pytest.approx(search.best_score_, rel=1e-8)
    scores = {r["overrides"][0]: r["score"] for r in ranking["runs"]}
    for deg, s in zip([1, 2, 3, 5], search.cv_results_["mean_test_score"]):
        assert scores[f"model.degree={deg}"] == pytest.approx(s, rel=1e-8)
    assert [r["rank"] for r in ranking["runs"]] == [1, 2, 3, 4]
    assert (d / "s" / "sweep.yaml").is_file()


def test_runs_lists_the_sweep(swept):
    d, _, _ = swept
    res = CliRunner().invoke(app, ["runs", str(d / "s")])
    assert res.exit_code == 0, res.output
    assert "model.degree=5/fold-3" in res.output


def test_rerun_skips_finished_runs(swept):
    d, args, _ = swept
    before = (d / "s" / "model.degree=2" / "fold-1" / "metrics.json").stat().st_mtime_ns
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped (finished)") == 4
    assert (d / "s" / "model.degree=2" / "fold-1" / "metrics.json").stat().st_mtime_ns == before


@pytest.mark.slow  # (two processes that import torch: about 12 s)
def test_two_jobs_in_processes(tmp_path):
    (tmp_path / "poly.yaml").write_text(POLY.replace("val: 0.0", "val: 0.25"))
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "poly.yaml"), "--grid", "model.degree=1,3", "--jobs", "2",
                                   "--metric", "val.mse", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    ranking = json.loads((tmp_path / "s" / "ranking.json").read_text())
    assert [r["overrides"] for r in ranking["runs"]] == [["model.degree=3"], ["model.degree=1"]]  # lower mse first
    assert all((tmp_path / "s" / r["name"] / "metrics.json").is_file() for r in ranking["runs"])


def test_bad_grid_is_a_clear_error(tmp_path):
    (tmp_path / "poly.yaml").write_text(POLY)
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "poly.yaml"), "--grid", "model.degree", "--out", str(tmp_path / "s")])
    assert res.exit_code == 1
    assert "KEY=V1,V2" in res.output

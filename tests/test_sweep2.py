"""gradfit sweep, the rest: adam sweeps against GridSearchCV, cv repeats, --random and --optuna draws and their
resume, the regularization path against scikit-learn's Lasso, and gradfit runs on a sweep directory."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from gradfit.cli import app
from gradfit.config.loading import config_from_dict, load_config
from gradfit.data.tables import load_dataset
from gradfit.train.sweep_draws import parse_ranges, random_draws

ADAM = """name: adam
seed: 2
data:
  synthetic: {kind: polynomial, coefficients: [1, -2, 0.5, 0.4], n_samples: 45, noise: 0.6, x_range: [-2, 2]}
  split: {val: 0.0, test: 0.0}
model: {kind: polynomial, degree: 1}
loss: {kind: mse}
optimizer: {kind: adam, lr: 0.01}
train: {epochs: 60, tol: 0}
"""
EPOCHS = 60

LASSO = """name: lasso
seed: 4
data:
  synthetic: {kind: linear, n_features: 4, coefficients: [2.0, 0.0, -1.0, 0.3], bias: 1.0, n_samples: 80, noise: 0.5}
  split: {val: 0.25, test: 0.0}
model: {kind: linear}
loss: {kind: mse}
"""
L1 = [0.001, 0.05, 0.2, 0.6, 5.0]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- a grid over degree and lr (adam)


@pytest.fixture(scope="module")
def adam_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("adam")
    (d / "adam.yaml").write_text(ADAM)
    res = invoke("sweep", d / "adam.yaml", "--grid", "model.degree=1,2,3", "--grid", "optimizer.lr=0.01,0.1",
                 "--folds", "3", "--out", d / "s")
    assert res.exit_code == 0, res.output
    return d


def gradfit_adam(workdir):
    """A scikit-learn estimator that trains the ADAM config with gradfit (degree, lr) on the rows it is given."""
    from sklearn.base import BaseEstimator, RegressorMixin

    class GradfitAdam(RegressorMixin, BaseEstimator):
        def __init__(self, degree=1, lr=0.01):
            self.degree, self.lr = degree, lr

        def fit(self, X, y):
            from gradfit.train.run import train

            path = workdir / f"rows-{self.degree}-{self.lr}.csv"
            path.write_text("x,y\n" + "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(X[:, 0], y)))
            cfg = config_from_dict({"seed": 2, "data": {"path": str(path), "split": {"val": 0.0, "test": 0.0}},
                                    "model": {"kind": "polynomial", "degree": self.degree}, "loss": {"kind": "mse"},
                                    "optimizer": {"kind": "adam", "lr": self.lr}, "train": {"epochs": EPOCHS, "tol": 0}})
            c = train(cfg, write=False).coefficients
            self.coef_ = [c["intercept"]] + [c["coefficients"]["x" if p == 1 else f"x^{p}"]
                                             for p in range(1, self.degree + 1)]
            return self

        def predict(self, X):
            return np.polynomial.polynomial.polyval(X[:, 0], self.coef_)

    return GradfitAdam()


def test_degree_and_lr_sweep_picks_gridsearchcv_best(adam_sweep, tmp_path):
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    d = adam_sweep
    ranking = json.loads((d / "s" / "ranking.json").read_text())
    assert ranking["metric"] == "val.r2" and len(ranking["runs"]) == 6
    ds = load_dataset(load_config(d / "adam.yaml"))
    X, y = ds.X.numpy().astype(np.float64), ds.y.numpy().astype(np.float64)
    fold = np.array([int(r["fold"]) - 1 for r in read_csv(d / "s" / "model.degree=1,optimizer.lr=0.01" / "folds.csv")])
    search = GridSearchCV(gradfit_adam(tmp_path), {"degree": [1, 2, 3], "lr": [0.01, 0.1]}, cv=PredefinedSplit(fold),
                          scoring="r2", refit=False)
    search.fit(X, y)
    best = ranking["runs"][0]
    assert best["overrides"] == [f"model.degree={search.best_params_['degree']}", f"optimizer.lr={search.best_params_['lr']}"]
    scores = {tuple(r["overrides"]): r["score"] for r in ranking["runs"]}
    for params, s in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        assert scores[(f"model.degree={params['degree']}", f"optimizer.lr={params['lr']}")] == pytest.approx(s, rel=1e-5)
    # the ranking is by the mean of the folds' own val R^2, best first
    means = [np.mean([json.loads((d / "s" / r["name"] / f"fold-{k}" / "metrics.json").read_text())["val"]["r2"]
                      for k in (1, 2, 3)]) for r in ranking["runs"]]
    assert means == sorted(means, reverse=True)
    assert [r["score"] for r in ranking["runs"]] == pytest.approx(means, rel=1e-12)
    # the two learning rates give runs that differ (60 epochs of adam at 0.01 stay far from the optimum)
    assert abs(scores[("model.degree=3", "optimizer.lr=0.01")] - scores[("model.degree=3", "optimizer.lr=0.1")]) > 0.05


def test_runs_reads_the_sweep_ranking(adam_sweep):
    d = adam_sweep
    ranking = json.loads((d / "s" / "ranking.json").read_text())
    res = invoke("runs", d / "s")
    assert res.exit_code == 0, res.output
    assert "sweep ranking by val.r2 (ranking.json):" in res.output
    tail = res.output.split("sweep ranking by val.r2")[1].splitlines()
    rows = [line.split() for line in tail if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == [r["name"] for r in ranking["runs"]]
    assert float(rows[0][2]) == pytest.approx(ranking["runs"][0]["score"], rel=1e-4)
    assert res.output.split("sweep ranking")[0].count("/fold-") == 18  # the fold runs are still listed above


# ---------------------------------------------------------------- cv --repeats


def test_cv_repeats_are_distinct_shuffles_each_least_squares(tmp_path):
    (tmp_path / "lin.yaml").write_text(ADAM.replace("kind: polynomial, degree: 1", "kind: linear")
                                       .replace("kind: adam, lr: 0.01", "kind: lbfgs").replace("test: 0.0", "test: 0.2"))
    res = invoke("cv", tmp_path / "lin.yaml", "--folds", "3", "--repeats", "2", "--out", tmp_path / "cv")
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "cv" / "folds.csv")
    assert set(rows[0]) == {"row", "repeat", "fold"} and len(rows) == 2 * 45
    label = {r: np.array([x["fold"] for x in rows if x["repeat"] == str(r)]) for r in (1, 2)}
    assert (label[1] == "test").sum() == 9 and (label[1] == "test").tolist() == (label[2] == "test").tolist()
    assert (label[1] != label[2]).any()  # another shuffle
    ds = load_dataset(load_config(tmp_path / "lin.yaml"))
    X, y = ds.X.numpy().astype(np.float64), ds.y.numpy().astype(np.float64)
    val_r2 = []
    for r in (1, 2):
        for k in (1, 2, 3):
            train = np.nonzero(~np.isin(label[r], ["test", str(k)]))[0]
            A = np.column_stack([np.ones(train.size), X[train]])
            beta = np.linalg.lstsq(A, y[train], rcond=None)[0]
            c = json.loads((tmp_path / "cv" / f"r{r}-fold-{k}" / "coefficients.json").read_text())
            assert [c["intercept"], c["coefficients"]["x"]] == pytest.approx(beta, rel=1e-10, abs=1e-10)
            val = np.nonzero(label[r] == str(k))[0]
            resid = y[val] - (beta[0] + X[val, 0] * beta[1])
            val_r2.append(1 - np.sum(resid**2) / np.sum((y[val] - y[val].mean()) ** 2))
    doc = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert doc["repeats"] == 2 and len(doc["folds"]) == 6
    assert doc["mean"]["val"]["r2"] == pytest.approx(np.mean(val_r2), rel=1e-8)
    assert doc["sd"]["val"]["r2"] == pytest.approx(np.std(val_r2, ddof=1), rel=1e-6)
    assert "2.3" in res.output  # the table labels repeat.fold


# ---------------------------------------------------------------- --random


def test_random_draws_are_seeded_typed_and_in_range():
    cfg = load_config_text(ADAM)
    ranges = parse_ranges(["model.degree=1:4", "optimizer.lr=1e-4:1e-1:log", "data.split.val=0.1:0.3"], cfg)
    assert [r.integer for r in ranges] == [True, False, False]
    a, b, c = random_draws(ranges, 400, seed=7), random_draws(ranges, 400, seed=7), random_draws(ranges, 400, seed=8)
    assert a == b and a != c
    assert random_draws(ranges, 5, seed=7) == a[:5]  # draw i does not depend on N: a longer sweep extends a shorter
    deg = np.array([int(x[0].split("=")[1]) for x in a])
    lr = np.array([float(x[1].split("=")[1]) for x in a])
    val = np.array([float(x[2].split("=")[1]) for x in a])
    assert set(deg.tolist()) == {1, 2, 3, 4} and all("." not in x[0].split("=")[1] for x in a)
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1 and val.min() >= 0.1 and val.max() <= 0.3
    # log-uniform: log10(lr) uniform on [-4, -1] (mean -2.5, sd 3/sqrt(12) = 0.866); 400 draws: se 0.043
    assert np.log10(lr).mean() == pytest.approx(-2.5, abs=0.15)
    assert np.log10(lr).std() == pytest.approx(3 / math.sqrt(12), abs=0.08)
    assert val.mean() == pytest.approx(0.2, abs=0.01)
    # integers: each of the 4 values about a quarter of the draws
    assert np.all(np.abs(np.bincount(deg)[1:] / deg.size - 0.25) < 0.07)
    repeated = random_draws(ranges[:1], 50, seed=7)  # 50 draws of 4 integers: each combination once
    assert sorted(repeated) == [[f"model.degree={k}"] for k in (1, 2, 3, 4)]


def load_config_text(text):
    import yaml

    return config_from_dict(yaml.safe_load(text))


def test_random_sweep_is_seeded_and_resumes(tmp_path):
    (tmp_path / "adam.yaml").write_text(ADAM.replace("val: 0.0", "val: 0.3"))
    args = ["sweep", tmp_path / "adam.yaml", "--random", "3", "--range", "model.degree=1:3",
            "--range", "optimizer.lr=0.005:0.2:log", "--seed", "11"]
    res = invoke(*args, "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    ranking = json.loads((tmp_path / "a" / "ranking.json").read_text())
    names = sorted(r["name"] for r in ranking["runs"])
    cfg = load_config(tmp_path / "adam.yaml")
    expect = random_draws(parse_ranges(["model.degree=1:3", "optimizer.lr=0.005:0.2:log"], cfg), 3, seed=11)
    assert names == sorted(",".join(c) for c in expect)
    assert all((tmp_path / "a" / n / "metrics.json").is_file() for n in names)
    scores = [r["score"] for r in ranking["runs"]]
    assert scores == sorted(scores, reverse=True)
    spec = (tmp_path / "a" / "sweep.yaml").read_text()
    assert "random: 3" in spec and "seed: 11" in spec and "0.005:0.2:log" in spec
    before = {n: (tmp_path / "a" / n / "metrics.json").stat().st_mtime_ns for n in names}
    res = invoke(*args[:3], "4", *args[4:], "--out", tmp_path / "a")  # one more draw: the first three are skipped
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped (finished)") == len(set(names)) and res.output.count("trained:") == 1
    assert {n: (tmp_path / "a" / n / "metrics.json").stat().st_mtime_ns for n in names} == before
    assert len(json.loads((tmp_path / "a" / "ranking.json").read_text())["runs"]) == 4


# ---------------------------------------------------------------- --optuna


@pytest.fixture(scope="module")
def optuna_sweeps(tmp_path_factory):
    pytest.importorskip("optuna")
    d = tmp_path_factory.mktemp("optuna")
    (d / "adam.yaml").write_text(ADAM.replace("val: 0.0", "val: 0.3"))
    args = ["sweep", d / "adam.yaml", "--optuna", "3", "--range", "model.degree=1:3", "--range",
            "optimizer.lr=0.005:0.2:log", "--seed", "5"]
    for where in ("a", "b"):
        res = invoke(*args, "--out", d / where)
        assert res.exit_code == 0, res.output
    return d, args


def test_optuna_same_seed_same_trials(optuna_sweeps):
    import optuna

    d, _ = optuna_sweeps
    a = json.loads((d / "a" / "ranking.json").read_text())
    b = json.loads((d / "b" / "ranking.json").read_text())
    assert a == b and 1 <= len(a["runs"]) <= 3
    study = optuna.load_study(study_name="gradfit-sweep", storage=f"sqlite:///{d / 'a' / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    for t in done:  # optuna's value of each trial is the run's val R^2
        name = f"model.degree={t.params['model.degree']},optimizer.lr={t.params['optimizer.lr']:.6g}"
        m = json.loads((d / "a" / name / "metrics.json").read_text())
        assert t.value == pytest.approx(m["val"]["r2"], rel=1e-12)
    assert a["runs"][0]["score"] == pytest.approx(study.best_value, rel=1e-12)


def test_optuna_resumes_and_retrains_an_interrupted_trial(optuna_sweeps):
    import optuna

    d, args = optuna_sweeps
    study = optuna.load_study(study_name="gradfit-sweep", storage=f"sqlite:///{d / 'a' / 'optuna.db'}")
    left = study.ask({"model.degree": optuna.distributions.IntDistribution(1, 3),
                      "optimizer.lr": optuna.distributions.FloatDistribution(0.005, 0.2, log=True)})  # as if killed
    lost = f"model.degree={left.params['model.degree']},optimizer.lr={left.params['optimizer.lr']:.6g}"
    res = invoke(*args[:3], "4", *args[4:], "--out", d / "a")
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="gradfit-sweep", storage=f"sqlite:///{d / 'a' / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4 and states.count(optuna.trial.TrialState.RUNNING) == 0
    assert study.trials[-1].params == left.params  # the interrupted trial's values, asked again
    assert (d / "a" / lost / "metrics.json").is_file()
    assert res.output.count("trained:") + res.output.count("skipped (finished)") == 1


@pytest.mark.slow  # (processes that import torch: about 20 s)
def test_optuna_in_two_processes_asks_the_same_trials(optuna_sweeps):
    d, args = optuna_sweeps
    res = invoke(*args, "--jobs", "2", "--out", d / "c")
    assert res.exit_code == 0, res.output
    c = json.loads((d / "c" / "ranking.json").read_text())
    b = json.loads((d / "b" / "ranking.json").read_text())
    assert [r["name"] for r in c["runs"]] == [r["name"] for r in b["runs"]]
    assert [r["score"] for r in c["runs"]] == pytest.approx([r["score"] for r in b["runs"]], rel=1e-6)


def test_optuna_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    (tmp_path / "adam.yaml").write_text(ADAM.replace("val: 0.0", "val: 0.3"))
    res = invoke("sweep", tmp_path / "adam.yaml", "--optuna", "2", "--range", "optimizer.lr=0.01:0.1",
                 "--out", tmp_path / "s")
    assert res.exit_code == 1
    assert "gradfit[optuna]" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- the regularization path


def test_lasso_path_equals_sklearn_lasso(tmp_path):
    from sklearn.linear_model import Lasso

    (tmp_path / "lasso.yaml").write_text(LASSO)
    res = invoke("sweep", tmp_path / "lasso.yaml", "--grid", "model.penalty.l1=" + ",".join(map(str, L1)),
                 "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert "regularization path:" in res.output
    rows = read_csv(tmp_path / "p" / "path.csv")
    assert list(rows[0]) == ["l1", "val.r2", "intercept", "x1", "x2", "x3", "x4"]
    assert [float(r["l1"]) for r in rows] == L1
    ds = load_dataset(load_config(tmp_path / "lasso.yaml"))
    X, y = ds.X.numpy().astype(np.float64), ds.y.numpy().astype(np.float64)
    zeros = 0
    for a, row in zip(L1, rows):
        split = read_csv(tmp_path / "p" / f"model.penalty.l1={a}" / "split.csv")
        tr = np.array([int(s["row"]) for s in split if s["set"] == "train"])
        mu, sd = X[tr].mean(0), X[tr].std(0)
        ref = Lasso(alpha=a, tol=1e-14, max_iter=1_000_000).fit((X[tr] - mu) / sd, y[tr] - y[tr].mean())
        coef = np.array([float(row[f"x{j}"]) for j in range(1, 5)])
        np.testing.assert_allclose(coef * sd, ref.coef_, rtol=1e-8, atol=1e-10)  # original units = standardized / sd
        assert ((coef == 0) == (ref.coef_ == 0)).all()
        zeros += int((coef == 0).sum())
        assert float(row["intercept"]) == pytest.approx(y[tr].mean() - coef @ mu, rel=1e-8)
        m = json.loads((tmp_path / "p" / f"model.penalty.l1={a}" / "metrics.json").read_text())
        assert float(row["val.r2"]) == pytest.approx(m["val"]["r2"], rel=1e-12)
    assert 0 < zeros < 4 * len(L1)  # the path shrinks some coefficients to exact zeros, not all
    assert all(float(rows[-1][f"x{j}"]) == 0 for j in range(1, 5))  # l1 = 5 is above alpha_max: every coefficient 0
    png = (tmp_path / "p" / "path.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_path_with_folds_is_the_mean_over_the_folds(tmp_path):
    (tmp_path / "lasso.yaml").write_text(LASSO)
    res = invoke("sweep", tmp_path / "lasso.yaml", "--random", "2", "--range", "model.penalty.l2=0.01:1:log",
                 "--folds", "2", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "p" / "path.csv")
    assert len(rows) == 2 and float(rows[0]["l2"]) < float(rows[1]["l2"])
    for row in rows:
        d = tmp_path / "p" / f"model.penalty.l2={row['l2']}"
        folds = [json.loads((d / f"fold-{k}" / "coefficients.json").read_text()) for k in (1, 2)]
        for j in range(1, 5):
            assert float(row[f"x{j}"]) == pytest.approx(np.mean([f["coefficients"][f"x{j}"] for f in folds]), rel=1e-12)
        assert float(row["val.r2"]) == pytest.approx(json.loads((d / "cv.json").read_text())["mean"]["val"]["r2"], rel=1e-12)
    # ridge shrinks: the larger l2 has the smaller coefficient norm
    norm = [np.linalg.norm([float(r[f"x{j}"]) for j in range(1, 5)]) for r in rows]
    assert norm[1] < norm[0]


def test_no_path_for_other_sweeps(adam_sweep):
    assert not (adam_sweep / "s" / "path.csv").exists()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("extra, message", [
    (["--grid", "model.degree=1,2", "--random", "2", "--range", "optimizer.lr=0.01:0.1"], "cannot be combined"),
    (["--random", "2"], "needs at least one --range"),
    (["--random", "2", "--range", "optimizer.lr=0.1"], "KEY=LOW:HIGH"),
    (["--random", "2", "--range", "optimizer.lr=0.1:0.01"], "LOW must be below HIGH"),
    (["--random", "2", "--range", "optimizer.lr=0:0.1:log"], "LOW > 0"),
    (["--random", "2", "--range", "model.degree=1.5:3"], "integer"),
    (["--random", "2", "--range", "model.kind=1:3"], "not a number"),
    (["--random", "2", "--range", "model.degre=1:3"], "not a config key"),
    (["--grid", "model.degree=1,2", "--range", "optimizer.lr=0.01:0.1"], "--range goes with"),
    (["--grid", "model.degree=1,2", "--repeats", "2"], "add --folds"),
    (["--grid", "model.degree=1,2", "--set", "data.split.val=0"], "no val rows"),
])
def test_bad_sweeps_are_clear_errors(tmp_path, extra, message):
    (tmp_path / "adam.yaml").write_text(ADAM.replace("val: 0.0", "val: 0.3"))
    res = invoke("sweep", tmp_path / "adam.yaml", *extra, "--out", tmp_path / "s")
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "s").exists()

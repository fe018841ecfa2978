"""gradfit cv: folds of the non-test rows; each fold's fit equals least squares on its training rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gradfit.cli import app
from gradfit.config.loading import load_config
from gradfit.data.tables import load_dataset

LINEAR = """name: lin
seed: 3
data:
  synthetic: {kind: polynomial, coefficients: [3, 2], n_samples: 60, noise: 0.5, x_range: [0, 4]}
  split: {val: 0.0, test: 0.2}
model: {kind: linear}
loss: {kind: mse}
optimizer: {kind: lbfgs}
train: {epochs: 200}
"""


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cv")
    (d / "lin.yaml").write_text(LINEAR)
    res = CliRunner().invoke(app, ["cv", str(d / "lin.yaml"), "--folds", "3", "--out", str(d / "out")])
    assert res.exit_code == 0, res.output
    return d, res.output


def _folds(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_each_fold_is_least_squares_on_its_training_rows(cv_dir):
    d, _ = cv_dir
    ds = load_dataset(load_config(d / "lin.yaml"))
    X, y = ds.X.numpy(), ds.y.numpy()
    rows = _folds(d / "out" / "folds.csv")
    assert len(rows) == 60
    label = np.array([r["fold"] for r in rows])
    assert (label == "test").sum() == 12  # the config's test rows: in no fold
    for k in (1, 2, 3):
        train = np.array([i for i, lab in enumerate(label) if lab not in ("test", str(k))])
        A = np.column_stack([np.ones(train.size), X[train]])
        beta = np.linalg.lstsq(A, y[train], rcond=None)[0]
        c = json.loads((d / "out" / f"fold-{k}" / "coefficients.json").read_text())
        assert c["intercept"] == pytest.approx(beta[0], rel=1e-10, abs=1e-10)
        assert c["coefficients"]["x"] == pytest.approx(beta[1], rel=1e-10, abs=1e-10)
        m = json.loads((d / "out" / f"fold-{k}" / "metrics.json").read_text())
        val = np.nonzero(label == str(k))[0]
        resid = y[val] - (beta[0] + X[val] @ beta[1:])
        assert m["val"]["mse"] == pytest.approx(np.mean(resid**2), rel=1e-9)


def test_mean_and_sd_in_json_and_table(cv_dir):
    d, output = cv_dir
    doc = json.loads((d / "out" / "cv.json").read_text())
    r2 = np.array([f["val"]["r2"] for f in doc["folds"]])
    assert len(r2) == 3
    assert doc["mean"]["val"]["r2"] == pytest.approx(r2.mean(), rel=1e-12)
    assert doc["sd"]["val"]["r2"] == pytest.approx(r2.std(ddof=1), rel=1e-12)
    mean_line = next(line for line in output.splitlines() if line.startswith("mean"))
    assert float(mean_line.split()[-2]) == pytest.approx(doc["mean"]["val"]["r2"], rel=1e-4)
    sd_line = next(line for line in output.splitlines() if line.startswith("sd"))
    assert float(sd_line.split()[-2]) == pytest.approx(doc["sd"]["val"]["r2"], rel=1e-4)


def test_time_and_group_folds(tmp_path):
    from gradfit.train.cv import make_folds

    (tmp_path / "d.csv").write_text("x,g,y\n" + "".join(f"{i},{i % 5},{2 * i + 1}\n" for i in range(30)))
    (tmp_path / "c.yaml").write_text("name: t\ndata: {path: d.csv, target: y, features: [x], split: {val: 0, test: 0}}\n"
                                     "model: {kind: linear}\n")
    cfg = load_config(tmp_path / "c.yaml")
    f = make_folds(cfg, 3, time=True)
    for k in range(3):
        s = f.split(0, k)
        assert s.train.max() < s.val.min()  # forward chaining: only earlier rows train
    g = make_folds(cfg, 3, group="g")
    groups = np.arange(30) % 5
    for k in range(3):
        s = g.split(0, k)
        assert not set(groups[s.train.numpy()]) & set(groups[s.val.numpy()])


def test_group_column_is_read_as_training_reads_the_file(tmp_path):
    """A semicolon file with decimal commas: the group labels come from the same reader (sniffed
    separator, data.decimal), and a ragged line is named as training names it."""
    from gradfit.errors import DataError
    from gradfit.train.cv import make_folds

    rows = "".join(f"{i},5;{'ab'[i % 2]}{i % 3};{2 * i + 1},25\n" for i in range(30))
    (tmp_path / "d.csv").write_text("x;g;y\n" + rows)
    (tmp_path / "c.yaml").write_text("name: t\ndata: {path: d.csv, target: y, features: [x], decimal: ',', "
                                     "split: {val: 0, test: 0}}\nmodel: {kind: linear}\n")
    g = make_folds(load_config(tmp_path / "c.yaml"), 3, group="g")
    groups = np.array([f"{'ab'[i % 2]}{i % 3}" for i in range(30)])
    for k in range(3):
        s = g.split(0, k)
        assert not set(groups[s.train.numpy()]) & set(groups[s.val.numpy()])
    (tmp_path / "d.csv").write_text("x;g;y\n" + rows + "1,5;a0;3,25;7\n")
    with pytest.raises(DataError, match="line 32"):
        make_folds(load_config(tmp_path / "c.yaml"), 3, group="g")


def test_too_many_folds_is_a_clear_error(tmp_path):
    (tmp_path / "lin.yaml").write_text(LINEAR)
    res = CliRunner().invoke(app, ["cv", str(tmp_path / "lin.yaml"), "--folds", "40", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "too few for 40 folds" in res.output

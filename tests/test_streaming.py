"""data.streaming: Parquet read in row-group slices each epoch gives the in-memory run's model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gradfit.config.loading import config_from_dict
from gradfit.data import stream as streaming
from gradfit.errors import ConfigError, DataError
from gradfit.train import run as api

N = 12_000
TRUE = np.array([1.5, -2.0, 0.5])


def write_parquet(path, n=N, noise=0.3, seed=0, row_group_size=1_000, nan_rows=()):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = 2.0 + X @ TRUE + noise * rng.normal(size=n)
    cols = {"x1": X[:, 0], "x2": X[:, 1], "x3": X[:, 2], "y": y}
    if nan_rows:
        cols["x2"] = cols["x2"].copy()
        cols["x2"][list(nan_rows)] = np.nan
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return X, y


def config(path, **over):
    cfg = {
        "name": "s",
        "seed": 4,
        "device": "cpu",
        "dtype": "float64",
        "data": {"path": str(path), "split": {"val": 0.0, "test": 0.0}},
        "model": {"kind": "linear"},
        "optimizer": {"kind": "sgd", "lr": 0.5},
        "train": {"epochs": 25, "tol": 0.0},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(cfg)


def coefs(run) -> np.ndarray:
    c = run.coefficients
    return np.array([c["intercept"], *c["coefficients"].values()])


@pytest.fixture(autouse=True)
def small_reads(monkeypatch):
    # Slices smaller than a row group, so that a pass crosses slice and row-group boundaries.
    monkeypatch.setattr(streaming, "READ_ROWS", 700)


def test_full_batch_streaming_equals_in_memory(tmp_path):
    path = tmp_path / "d.parquet"
    write_parquet(path)  # 12 row groups, 18 slices of at most 700 rows
    mem = api.train(config(path), write=False)
    st = api.train(config(path, data={"streaming": True}), write=False)
    np.testing.assert_allclose(coefs(st), coefs(mem), rtol=1e-10)
    for k in ("loss", "mse", "mae", "r2"):
        assert st.metrics["train"][k] == pytest.approx(mem.metrics["train"][k], rel=1e-10)
    assert st.metrics["exact"]["loss"] == pytest.approx(mem.metrics["exact"]["loss"], rel=1e-10)
    assert [r.train_loss for r in st.result.history] == pytest.approx([r.train_loss for r in mem.result.history], rel=1e-10)
    # Standard errors from the streamed Gram matrix: the in-memory run's (which reads the rows).
    for key in ("std_errors", "ci95"):
        assert st.coefficients[key].keys() == mem.coefficients[key].keys()
        for name, v in mem.coefficients[key].items():
            assert st.coefficients[key][name] == pytest.approx(v, rel=1e-8), (key, name)
    assert st.coefficients["dof"] == mem.coefficients["dof"] == N - 4
    assert st.coefficients["residual_sd"] == pytest.approx(mem.coefficients["residual_sd"], rel=1e-10)


def test_mini_batch_streaming_reaches_the_in_memory_coefficients(tmp_path):
    # Noise-free rows: every mini-batch has the same minimizer, so both runs converge to it.
    path = tmp_path / "d.parquet"
    write_parquet(path, noise=0.0)
    over = {"train": {"batch_size": 256, "epochs": 25}, "optimizer": {"kind": "sgd", "lr": 0.2}}
    mem = api.train(config(path, **over), write=False)
    st = api.train(config(path, data={"streaming": True}, **over), write=False)
    np.testing.assert_allclose(coefs(st), coefs(mem), rtol=1e-7)
    np.testing.assert_allclose(coefs(st), [2.0, *TRUE], rtol=1e-7)
    # 12,000 rows in batches of 256: ceil(12000/256) = 47 steps per epoch, each a full batch but the sizes differ by one.
    assert st.result.epochs == 25


def test_held_out_rows_follow_the_row_hash(tmp_path):
    path = tmp_path / "d.parquet"
    X, y = write_parquet(path)
    st = api.train(config(path, data={"streaming": True, "split": {"val": 0.25, "test": 0.1}}), write=False)
    sets = streaming.row_sets(4, np.arange(N), 0.25, 0.1)
    assert abs((sets == streaming.VAL).mean() - 0.25) < 0.02 and abs((sets == streaming.TEST).mean() - 0.1) < 0.02
    # The same model trained in memory on exactly the training rows.
    train_path = tmp_path / "train.parquet"
    keep = sets == streaming.TRAIN
    pq.write_table(pa.table({"x1": X[keep, 0], "x2": X[keep, 1], "x3": X[keep, 2], "y": y[keep]}), train_path)
    mem = api.train(config(train_path), write=False)
    np.testing.assert_allclose(coefs(st), coefs(mem), rtol=1e-10)
    # Metrics of the held-out sets: those of the model's predictions on those rows.
    for name, s in (("val", streaming.VAL), ("test", streaming.TEST)):
        rows = sets == s
        pred = st.model.predict(torch.from_numpy(X[rows])).numpy()
        assert st.metrics[name]["mse"] == pytest.approx(np.mean((pred - y[rows]) ** 2), rel=1e-10)
        assert st.metrics[name]["mae"] == pytest.approx(np.mean(np.abs(pred - y[rows])), rel=1e-10)
    assert st.result.history[-1].val_loss == pytest.approx(st.metrics["val"]["loss"], rel=1e-10)


def test_a_directory_of_files_is_one_dataset(tmp_path):
    path = tmp_path / "d.parquet"
    X, y = write_parquet(path)
    parts = tmp_path / "parts.parquet"
    parts.mkdir()
    table = pq.read_table(path)
    for i, start in enumerate(range(0, N, 5_000)):
        pq.write_table(table.slice(start, 5_000), parts / f"part-{i}.parquet", row_group_size=1_500)
    one = api.train(config(path, data={"streaming": True, "split": {"val": 0.2}}), write=False)
    many = api.train(config(parts, data={"streaming": True, "split": {"val": 0.2}}), write=False)
    np.testing.assert_allclose(coefs(many), coefs(one), rtol=1e-10)
    assert many.metrics["val"]["mse"] == pytest.approx(one.metrics["val"]["mse"], rel=1e-10)


def test_polynomial_and_dropna(tmp_path):
    path = tmp_path / "d.parquet"
    write_parquet(path, n=5_000, nan_rows=(5, 999, 4_001))
    over = {"data": {"dropna": True}, "model": {"kind": "polynomial", "degree": 2}, "optimizer": {"kind": "sgd", "lr": 0.3}}
    mem = api.train(config(path, **over), write=False)
    st = api.train(config(path, **{**over, "data": {"dropna": True, "streaming": True}}), write=False)
    np.testing.assert_allclose(coefs(st), coefs(mem), rtol=1e-9, atol=1e-12)
    assert st.notes == ["dropped 3 rows with missing values (data.dropna)"]


def test_bad_values_are_reported_with_their_row(tmp_path):
    path = tmp_path / "d.parquet"
    write_parquet(path, nan_rows=(2_345,))
    with pytest.raises(DataError, match=r"missing value.*'x2' at row 2346"):
        api.train(config(path, data={"streaming": True}), write=False)


def test_streaming_writes_a_run_directory(tmp_path):
    path = tmp_path / "d.parquet"
    write_parquet(path, n=3_000)
    run = api.train(config(path, data={"streaming": True, "split": {"val": 0.2}}, output={"dir": str(tmp_path / "runs")}))
    names = {p.name for p in run.run_dir.iterdir()}
    assert {"metrics.json", "coefficients.json", "model.safetensors", "history.csv", "config.yaml"} <= names
    from gradfit.results.checkpoint import load_model

    model = load_model(run.run_dir)
    model = model[0] if isinstance(model, tuple) else model
    model = getattr(model, "model", model)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(model.predict(x).numpy(), run.model.predict(x).numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "data, over, message",
    [
        ({"path": "d.csv", "streaming": True}, {}, "streaming reads Parquet files only"),
        ({"synthetic": {"kind": "linear"}, "streaming": True}, {}, "streaming reads Parquet files only"),
        ({"path": "d.parquet", "streaming": True}, {"optimizer": {"kind": "lbfgs"}}, "does not support optimizer 'lbfgs'"),
        ({"path": "d.parquet", "streaming": True}, {"optimizer": {"kind": "sgd"}}, "'auto' for sgd needs the data in memory"),
    ],
)
def test_config_refuses_what_streaming_cannot_do(data, over, message):
    raw = {"data": data, "model": {"kind": "linear"}, **over}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_row_sets_are_a_pure_function_of_seed_and_row():
    rows = np.arange(100_000)
    a = streaming.row_sets(7, rows, 0.2, 0.1)
    b = np.concatenate([streaming.row_sets(7, rows[i : i + 333], 0.2, 0.1) for i in range(0, 100_000, 333)])
    assert (a == b).all()
    assert abs((a == streaming.VAL).mean() - 0.2) < 0.005
    assert abs((a == streaming.TEST).mean() - 0.1) < 0.005
    assert (streaming.row_sets(8, rows, 0.2, 0.1) != a).mean() > 0.2  # another seed, another split


def test_full_batch_streaming_reads_the_file_a_fixed_number_of_times_on_the_gram_route(tmp_path, monkeypatch):
    """40,000 rows x 3 (the Gram route's size): the statistics, their refinement and the results read the
    file; the epochs do not. The coefficients are the in-memory run's."""
    path = tmp_path / "d.parquet"
    write_parquet(path, n=40_000)
    reads = []
    real = streaming.StreamRows._slices

    def counted(self, *a, **k):
        reads.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(streaming.StreamRows, "_slices", counted)
    counts = {}
    for epochs in (25, 2500):
        over = {"train": {"epochs": epochs, "tol": 0.0}}
        mem = api.train(config(path, **over), write=False)
        reads.clear()
        st = api.train(config(path, data={"streaming": True}, **over), write=False)
        counts[epochs] = len(reads)
        assert st.metrics["epochs"] == mem.metrics["epochs"] == epochs
        np.testing.assert_allclose(coefs(st), coefs(mem), rtol=1e-10)
        assert [r.train_loss for r in st.result.history] == pytest.approx([r.train_loss for r in mem.result.history], rel=1e-10)
    assert counts[25] == counts[2500] <= 16, counts

"""Parquet columns of plain numbers read by pyarrow alone (data/arrow.py), against pandas' path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gradfit.config.loading import config_from_dict
from gradfit.data import arrow, tables
from gradfit.errors import DataError
from gradfit.files import fingerprint
from gradfit.train import run as api


def _frame(n=2000, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3)).astype(dtype)
    f = pd.DataFrame(X, columns=["a", "b", "c"])
    f["k"] = rng.integers(0, 5, n)  # (an integer column: float64 X)
    f["y"] = (1 + X.astype(np.float64) @ [1.0, 2.0, 3.0] + 0.1 * rng.standard_normal(n)).astype(dtype)
    return f


def _cfg(path, **data):
    return config_from_dict({"dtype": "float64", "device": "cpu", "data": {"path": str(path), "target": "y", **data},
                             "model": {"kind": "linear"}})


@pytest.mark.parametrize("features", [["a", "b", "c"], ["a", "k"]])
def test_plain_parquet_equals_pandas_read(tmp_path, monkeypatch, features):
    p = tmp_path / "d.parquet"
    _frame().to_parquet(p, index=False, row_group_size=500)  # (several row groups: chunked columns)
    fast = tables.load_dataset(_cfg(p, features=features))
    monkeypatch.setattr(tables, "_plain_parquet", lambda *a: None)
    slow = tables.load_dataset(_cfg(p, features=features))
    assert fast.X.dtype == (tables.torch.float32 if "k" not in features else tables.torch.float64)
    assert slow.X.dtype == tables.torch.float64
    np.testing.assert_array_equal(fast.X.double().numpy(), slow.X.numpy())  # (float32 holds the file's numbers)
    np.testing.assert_array_equal(fast.y.numpy(), slow.y.numpy())
    assert fast.source == slow.source and fast.source["fingerprint"] == fingerprint(p)


def test_float32_rows_train_as_the_same_numbers_in_float64(tmp_path):
    f = _frame(n=5000)
    p32, p64 = tmp_path / "f32.parquet", tmp_path / "f64.parquet"
    f.to_parquet(p32, index=False)
    f.astype({c: np.float64 for c in "abcy"}).to_parquet(p64, index=False)
    a = api.train(_cfg(p32, features=["a", "b", "c"]), write=False)
    b = api.train(_cfg(p64, features=["a", "b", "c"]), write=False)
    assert a.coefficients["coefficients"] == b.coefficients["coefficients"]
    assert a.metrics["train"] == b.metrics["train"] and a.metrics["val"] == b.metrics["val"]
    assert a.summary == b.summary


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(a=f["a"].where(f.index != 7)), "missing value"),
    (lambda f: f.assign(b=f["b"].where(f.index != 9, np.inf)), "infinite value"),
    (lambda f: f.assign(c=np.where(f.index % 2, "x", "y")), None),  # (text: a categorical feature, encoded by pandas' path)
])
def test_other_columns_take_pandas_path(tmp_path, change, message):
    p = tmp_path / "d.parquet"
    change(_frame()).to_parquet(p, index=False)
    assert arrow.read_plain(p, ["a", "b", "c"], "y") is None
    if message is None:
        assert tables.load_dataset(_cfg(p, features=["a", "b", "c"])).X.shape[1] == 3
    else:
        with pytest.raises(DataError, match=message):
            tables.load_dataset(_cfg(p, features=["a", "b", "c"]))


def test_prefetched_read_is_taken_once(tmp_path, monkeypatch):
    p = tmp_path / "d.parquet"
    _frame().to_parquet(p, index=False)
    cfg = _cfg(p)
    calls = []
    real = arrow.read_plain
    monkeypatch.setattr(arrow, "read_plain", lambda *a: calls.append(1) or real(*a))
    arrow.prefetch_config(cfg)
    ds = tables.load_dataset(cfg)
    assert len(calls) == 1 and ds.X.shape == (2000, 4)
    assert arrow.take(p, ["a", "b", "c", "k", "y"]) is None  # (taken: a second load reads the file again)
    tables.load_dataset(cfg)
    assert len(calls) == 2


def test_parquet_run_imports_neither_pandas_nor_scipy_stats(tmp_path):
    p = tmp_path / "d.parquet"
    _frame().to_parquet(p, index=False)
    (tmp_path / "c.yaml").write_text(f"name: c\ndata: {{path: {p}, target: y}}\nmodel: {{kind: linear}}\n")
    code = ("import sys; sys.argv = ['gradfit', 'train', sys.argv[1], '--out', sys.argv[2], '--quiet']\n"
            "from gradfit.__main__ import main\n"
            "try:\n    main()\nfinally:\n    print('pandas' in sys.modules, 'scipy.stats' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.yaml"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False False"
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_prefetch_of_a_replaced_file_is_not_taken(tmp_path):
    import os

    p = tmp_path / "d.parquet"
    _frame(seed=0).to_parquet(p, index=False)
    arrow.prefetch(p, ["a", "b", "c"], "y")
    other = tmp_path / "e.parquet"
    _frame(seed=1).to_parquet(other, index=False)  # (the same size: the same layout, other numbers)
    st = p.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, p)
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    assert arrow.take(p, ["a", "b", "c", "y"]) is None

"""The config schema: defaults, strictness, messages that name the key and the fix, --set."""

from __future__ import annotations

import pytest

from conftest import small_config
from gradfit.config.loading import config_from_dict, dump_yaml, load_config, yaml_load
from gradfit.errors import ConfigError


def test_defaults_are_filled_in():
    cfg = config_from_dict({"data": {"path": "a.csv"}, "model": {"kind": "polynomial"}})
    # optimizer.kind and dtype: auto, resolved at validation (issue 16): lbfgs in float64 for polynomial mse
    assert cfg.model.degree == 2 and cfg.optimizer.kind == "lbfgs" and cfg.optimizer.lr == "auto"
    assert cfg.dtype == "float64" and cfg.auto_chosen() == {"optimizer.kind": "lbfgs", "dtype": "float64"}
    assert cfg.data.split.val == 0.2 and cfg.train.batch_size is None and cfg.dtype == "float64"
    text = dump_yaml(cfg)
    assert "degree: 2" in text and "standardize: true" in text


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"model": {"kind": "polynomial", "degre": 2}}, ["model.degre", "unknown key", "did you mean 'degree'"]),
        ({"optimizr": {}}, ["optimizr", "did you mean 'optimizer'"]),
        ({"model": {"kind": "polynomal"}}, ["model.kind", "'polynomal'", "'linear', 'polynomial', 'mlp'"]),
        ({"optimizer": {"kind": "adam", "momentum": 0.9}}, ["momentum", "'sgd' only", "'adam'"]),
        ({"optimizer": {"kind": "rmsprop"}}, ["optimizer.kind", "'rmsprop'", "sgd"]),
        ({"loss": {"kind": "l2"}}, ["loss.kind", "'l2'", "huber"]),
        ({"optimizer": {"lr": 0}}, ["optimizer.lr", "positive number"]),
        ({"optimizer": {"lr": -0.1}}, ["optimizer.lr", "positive number"]),
        ({"train": {"batch_size": 0}}, ["train.batch_size", "greater than or equal to 1"]),
        ({"model": {"kind": "polynomial", "degree": 0}}, ["model.degree", "greater than or equal to 1"]),
        ({"data": {"path": "a.csv", "split": {"val": 0.6, "test": 0.4}}}, ["data.split", "below 1"]),
        ({"data": {"path": "a.txt"}}, ["data", ".csv or .parquet"]),
        ({"data": {}}, ["data", "exactly one of data.path"]),
        ({"loss": {"kind": "mse", "delta": 1}}, ["delta", "'huber' only"]),
        ({"device": "gpu"}, ["device", "auto, cpu, cuda"]),
        ({"dtype": "float16"}, ["dtype", "'float16'"]),
        ({"name": "a/b"}, ["name", "directory name"]),
        ({"optimizer": {"kind": "lbfgs"}, "train": {"batch_size": 32}}, ["lbfgs", "full batches"]),
        ({"train": {"epochs": "many"}}, ["train.epochs", "integer"]),
        ({"train": {"early_stopping": {"patience": 5}}, "data": {"path": "a.csv", "split": {"val": 0}}}, ["early_stopping", "validation split"]),
    ],
)
def test_bad_configs_name_key_and_fix(raw, words):
    base = {"data": {"path": "a.csv"}, "model": {"kind": "linear"}}
    base.update(raw)
    with pytest.raises(ConfigError) as exc:
        config_from_dict(base)
    msg = str(exc.value)
    for w in words:
        assert w in msg, (w, msg)


def test_set_overrides_by_dotted_path():
    cfg = config_from_dict(small_config(), ["optimizer.lr=0.5", "model.degree=3", "train.batch_size=null", "name=other"])
    assert cfg.optimizer.lr == 0.5 and cfg.model.degree == 3 and cfg.train.batch_size is None and cfg.name == "other"
    cfg = config_from_dict(small_config(), ["train.early_stopping.patience=7", "data.split.val=0.1"])
    assert cfg.train.early_stopping.patience == 7


@pytest.mark.parametrize(
    "item, words",
    [
        ("optimizer.lrr=1", ["optimizer.lrr", "did you mean 'lr'"]),
        ("foo=1", ["foo", "not a config key"]),
        ("optimizer", ["KEY=VALUE"]),
        ("optimizer.lr.x=1", ["optimizer.lr", "is a value"]),
    ],
)
def test_bad_set_paths(item, words):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(small_config(), [item])
    for w in words:
        assert w in str(exc.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmodel:\n  kind: linear\n   degree: 2\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(p)


def test_yaml_object_tags_are_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="tags that construct objects"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_scientific_notation_reads_as_float():
    assert yaml_load("a: 1e-3\nb: 1.0e-9\n", "x") == {"a": 1e-3, "b": 1e-9}


def test_relative_data_path_resolves_against_config(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("data: {path: ../d.csv}\nmodel: {kind: linear}\n")
    cfg = load_config(p)
    assert cfg.resolved_data_path().resolve() == (tmp_path / "d.csv").resolve()

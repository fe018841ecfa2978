"""Hostile input: random text into the config loader and the equation parser, hostile files.

Each function fed random input must return a result or raise gradfit's own error
(``GradfitError``), never anything else: any other exception would reach the user as
a traceback.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradfit.config.loading import load_config, validate_config, yaml_load
from gradfit.errors import CheckpointError, ConfigError, GradfitError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that make random text look like a config often enough to get past the YAML parser.
KEYS = ["name", "seed", "device", "dtype", "data", "path", "synthetic", "kind", "target", "features", "split", "val",
        "test", "model", "degree", "hidden", "loss", "delta", "optimizer", "lr", "momentum", "train", "epochs",
        "batch_size", "tol", "early_stopping", "patience", "output", "dir", "coefficients", "n_samples", "start",
        "formula", "checkpoint_every", "dropna", "standardize"]
SCALARS = ["0", "1", "-1", "0.5", "1e400", ".nan", "-.inf", "auto", "adam", "sgd", "polynomial", "linear", "mlp",
           "null", "true", "[]", "{}", "[1, 2]", "x.csv", "'y'", "!!python/object:os.system", "&a", "*a", "~", "1e-3"]
SYMBOLS = [":", " ", "\n", "  ", "- ", "{", "}", "[", "]", ",", "#", "'", '"', "!!", "&", "*", "?", "|", ">", "%", "@", "\t"]

config_like_text = st.lists(st.sampled_from(KEYS + SCALARS + SYMBOLS), max_size=60).map("".join)


def _config_or_error(text: str) -> None:
    try:
        raw = yaml_load(text, "fuzz.yaml")
        validate_config(raw, "fuzz.yaml")
    except GradfitError:
        pass


@FUZZ
@given(st.text(max_size=300))
def test_random_text_into_the_config_loader(text):
    _config_or_error(text)


@FUZZ
@given(config_like_text)
def test_config_like_text_into_the_config_loader(text):
    _config_or_error(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8))
def test_random_mappings_into_validate_config(raw):
    try:
        validate_config(raw, "fuzz")
    except ConfigError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8))
def test_random_mappings_through_yaml_and_back(raw):
    try:
        text = yaml.safe_dump(raw)
    except yaml.YAMLError:
        return
    _config_or_error(text)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_as_a_config_file(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    p.write_bytes(data)
    try:
        load_config(p)
    except GradfitError:
        pass


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: &a [*a]\n", "contain itself"),
        ("[" * 3000, "nested too deeply"),
        ("a: !!float abc\n", "cannot be read"),
        ("a: !!python/name:os.system\n", "YAML tags that construct objects are not allowed"),
        ("a: !!python/object/apply:subprocess.call [['touch', 'x']]\n", "YAML tags"),
        ("{[1]: 2}\n", "unhashable"),
        ("a: 1\na: 2\n", "given twice"),
        # A "billion laughs": nine lines that expand to 10^9 values.
        ("a0: &a0 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)), "more than 100,000 values"),
    ],
    ids=["self-reference", "deep", "bad-float-tag", "python-name", "python-apply", "unhashable", "duplicate", "billion-laughs"],
)
def test_hostile_yaml_is_refused(text, words):
    with pytest.raises(ConfigError, match=words):
        yaml_load(text, "evil.yaml")


# ---------------------------------------------------------------- the equation parser


expr = pytest.importorskip("gradfit.expr.parser")

EQ_TOKENS = ["x", "y", "b1", "A", "_z", "1", "2.5", "1e3", "1e999", "0", "+", "-", "*", "/", "**", "(", ")", "=", " ",
             "sin", "cos", "exp", "log", "sqrt", "abs", "tanh", "pi", "e", ",", ".", "__import__", "'os'", "lambda",
             "[", "]", "{", "}", ":", ";", "\n", "if", "else", "@", "%", "//", "not", "and", "==", "<", "j", "1j", "\\",
             "f'{x}'", "#", "...", "__class__", "x.y", "print(1)", "\x00"]
equation_like = st.lists(st.sampled_from(EQ_TOKENS), max_size=40).map("".join)


def _equation_or_error(text: str) -> None:
    try:
        eq = expr.parse_equation(text)
    except GradfitError:
        return
    assert isinstance(eq, expr.Equation)
    str(eq)  # a parsed equation prints back


@FUZZ
@given(st.text(max_size=200))
def test_random_text_into_the_equation_parser(text):
    _equation_or_error(text)


@FUZZ
@given(equation_like)
def test_equation_like_text_into_the_equation_parser(text):
    _equation_or_error(text)


@pytest.mark.parametrize(
    "text",
    ["y = __import__('os').system('touch owned')", "y = x.__class__", "y = (lambda: 1)()", "y = [1][0]",
     "y = x if x else 1", "y = open('f')", "y = " + "(" * 5000 + "x" + ")" * 5000, "y = " + "-" * 5000 + "x",
     "y = x ** 2 ** 3 ** 4 ** 5 ** 6 ** 7", "y = 9" * 3000],
    ids=["import", "dunder", "lambda", "subscript", "ternary", "call", "deep-parens", "many-minus", "power-tower", "long"],
)
def test_equation_parser_rejects_everything_outside_its_grammar(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _equation_or_error(text)
    assert not (tmp_path / "owned").exists()


# ---------------------------------------------------------------- checkpoints only through the safe loader


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch owned",))


def test_a_pickled_checkpoint_is_refused_unread(tmp_path, monkeypatch):
    from gradfit.results.checkpoint import load_model

    monkeypatch.chdir(tmp_path)
    d = tmp_path / "run"
    d.mkdir()
    (d / "model.safetensors").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(d)
    assert not (tmp_path / "owned").exists()


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_a_checkpoint(tmp_path_factory, data):
    from gradfit.results.checkpoint import load_model
    from gradfit.train.resume import load_state

    p = tmp_path_factory.mktemp("ck") / "model.safetensors"
    p.write_bytes(data)
    for load in (load_model, load_state):
        try:
            load(p)
        except GradfitError:
            pass


def test_no_unsafe_loader_anywhere_in_gradfit():
    """Neither pickle nor torch.load is used to read anything."""
    src = Path(__file__).resolve().parents[1] / "src" / "gradfit"
    for f in src.rglob("*.py"):
        text = f.read_text()
        for bad in ("torch.load(", "pickle.load", "yaml.load(text, Loader=yaml.Loader", "yaml.unsafe_load", "FullLoader"):
            assert bad not in text, f"{bad} in {f}"

"""Every user mistake is a clear error: exit code, no traceback, and a message naming what, where and the fix.

One row per kind of bad input (the table in docs/errors.md). Most run in-process through
typer's CliRunner (with catch_exceptions=False, so an unexpected exception fails the test
with its traceback); a few run ``python -m gradfit`` in a subprocess to check the real
exit code and stderr.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_gradfit

BASE = {
    "name": "t",
    "seed": 0,
    "device": "cpu",
    "data": {"path": "good.csv", "target": "y"},
    "model": {"kind": "polynomial", "degree": 2},
    "optimizer": {"kind": "adam", "lr": 0.05},
    "train": {"epochs": 30},
    "output": {"dir": "runs"},
}


def _frame(n: int = 50) -> pd.DataFrame:
    x = np.linspace(-1, 1, n)
    return pd.DataFrame({"x": x, "y": 3 + 2 * x + x**2})


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A directory with good and bad data files and a base config; the cwd during the test."""
    monkeypatch.chdir(tmp_path)
    _frame().to_csv(tmp_path / "good.csv", index=False)
    d = _frame().astype({"x": object})
    d.loc[7, "x"] = "abc"  # file line 9 (header is line 1)
    d.to_csv(tmp_path / "text.csv", index=False)
    d = _frame()
    d.loc[[4, 9], "x"] = np.nan  # file lines 6 and 11
    d.to_csv(tmp_path / "nan.csv", index=False)
    d = _frame()
    d.loc[5, "y"] = np.inf  # file line 7
    d.to_csv(tmp_path / "inf.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("x,y\n")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    return tmp_path


# 'target' is indented one space more than 'path': a YAML syntax error on line 4.
BAD_INDENT = "name: t\ndata:\n  path: good.csv\n   target: y\nmodel: {kind: linear}\n"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def config_with(work: Path, **sections) -> Path:
    cfg = yaml.safe_load((work / "base.yaml").read_text())
    for key, value in sections.items():
        cfg[key] = value
    p = work / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


# Each row: id, extra command-line args after "train", expected exit code, key words of the message.
# "base.yaml" is the good config; --set makes each mistake.
SET_CASES = [
    ("lr-zero", ["--set", "optimizer.lr=0"], ["optimizer.lr", "positive number", "got 0"]),
    ("lr-negative", ["--set", "optimizer.lr=-0.1"], ["optimizer.lr", "positive number", "-0.1"]),
    ("lr-text", ["--set", "optimizer.lr=fast"], ["optimizer.lr", "positive number or 'auto'", "'fast'"]),
    ("batch-size-zero", ["--set", "train.batch_size=0"], ["train.batch_size", "greater than or equal to 1", "got 0"]),
    ("degree-zero", ["--set", "model.degree=0"], ["model.degree", "greater than or equal to 1", "got 0"]),
    ("epochs-not-int", ["--set", "train.epochs=many"], ["train.epochs", "valid integer", "'many'"]),
    ("split-sum", ["--set", "data.split.val=0.6", "--set", "data.split.test=0.4"], ["data.split", "val + test must be below 1"]),
    ("split-fraction-one", ["--set", "data.split.val=1"], ["data.split.val", "less than 1"]),
    ("momentum-with-adam", ["--set", "optimizer.momentum=0.9"], ["momentum", "'sgd' only", "'adam'", "remove"]),
    ("unknown-model", ["--set", "model.kind=poly"], ["model.kind", "unknown kind 'poly'", "'linear'", "'polynomial'", "'mlp'"]),
    ("unknown-loss", ["--set", "loss.kind=l1"], ["loss.kind", "'l1'", "'mse'", "'mae'", "'huber'"]),
    ("unknown-optimizer", ["--set", "optimizer.kind=rmsprop"], ["optimizer.kind", "'rmsprop'", "'sgd'", "'adam'"]),
    ("unknown-activation", ["--set", "model.activation=relu6"], ["model.activation", "'relu6'", "'tanh'"], {"model": {"kind": "mlp"}}),
    ("set-no-such-key", ["--set", "optimizer.lrr=0.1"], ["--set", "optimizer.lrr is not a config key", "did you mean 'lr'"]),
    ("set-no-such-section", ["--set", "optimiser.lr=0.1"], ["optimiser is not a config key", "did you mean 'optimizer'"]),
    ("set-no-equals", ["--set", "optimizer.lr"], ["expected KEY=VALUE"]),
    ("set-into-value", ["--set", "seed.x=1"], ["seed is a value, not a section"]),
    ("device-bad", ["--set", "device=gpu"], ["device", "auto, cpu, cuda or cuda:N", "'gpu'"]),
    ("inf-in-config", ["--set", "loss.kind=huber", "--set", "loss.delta=.inf"], ["loss.delta", "finite"]),
    ("missing-data-file", ["--set", "data.path=missing.csv"], ["data file not found", "missing.csv", "data.path"]),
    ("data-not-csv", ["--set", "data.path=data.txt"], ["data.path must end in .csv or .parquet", "data.txt"]),
    ("target-missing", ["--set", "data.target=z"], ["target column 'z' not found", "columns found: 'x', 'y'", "data.target"]),
    ("feature-missing", ["--set", "data.features=[x, w]"], ["feature column 'w' not found", "columns found: 'x', 'y'"]),
    ("target-in-features", ["--set", "data.features=[x, y]"], ["the target 'y' is also listed in features"]),
    ("non-numeric", ["--set", "data.path=text.csv"], ["text.csv", "column 'x' is not numeric", "row 9", "'abc'"]),
    ("missing-values", ["--set", "data.path=nan.csv"], ["nan.csv", "2 missing value(s) in 2 row(s)", "column 'x' at row 6", "data.dropna: true"]),
    ("infinite", ["--set", "data.path=inf.csv"], ["inf.csv", "column 'y'", "infinite value at row 7"]),
    ("empty-file", ["--set", "data.path=empty.csv"], ["empty.csv", "the file is empty", "header line"]),
    ("header-only", ["--set", "data.path=header.csv"], ["header.csv", "header but no rows"]),
    ("empty-val-split", ["--set", "data.split.val=0.001"], ["data.split.val = 0.001 of 50 rows", "validation set empty"]),
    ("no-train-rows", ["--set", "data.split.val=0.99"], ["data.split", "leaves 0 training row(s) of 50", "at least 2"]),
    ("early-stopping-no-val", ["--set", "data.split.val=0", "--set", "train.early_stopping.patience=5"], ["train.early_stopping needs a validation split", "data.split.val"]),
    ("sgd-auto-lr-mlp", ["--set", "optimizer.kind=sgd", "--set", "optimizer.lr=auto"], ["optimizer.lr", "'auto' for sgd", "give optimizer.lr a number"],
     {"model": {"kind": "mlp"}}),
    ("divergence", ["--set", "optimizer.kind=sgd", "--set", "optimizer.lr=10", "--set", "train.epochs=500"],
     ["training diverged", "at epoch", "last finite loss", "lower optimizer.lr", "try 1"]),
]


def check_error(result, code: int, words: list[str]) -> str:
    """Exit code, no traceback, and every key word in stderr (case-sensitive)."""
    err = " ".join(result.stderr.split())  # rich wraps long lines
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    for w in words:
        assert w in err, f"{w!r} not in stderr:\n{result.stderr}"
    return err


@pytest.mark.parametrize("case", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_input_is_a_clear_error(cli, work, case):
    _, args, words, *sections = case
    config = config_with(work, **sections[0]) if sections else "base.yaml"
    result = cli("train", config, *args, "--out", work / "out")
    err = check_error(result, 1, words)
    assert "error:" in err
    # A failed run leaves no run directory behind.
    assert not (work / "out").exists() or not any((work / "out").iterdir())
    assert not (work / "runs").exists() or not any((work / "runs").iterdir())


def test_cuda_asked_for_where_there_is_none(cli, work):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("train", "base.yaml", "--set", "device=cuda", "--out", work / "out")
    check_error(result, 1, ["device: cuda", "CUDA is not available", "device: cpu"])


def test_cuda_index_out_of_range(cli, work):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n = torch.cuda.device_count()
    result = cli("train", "base.yaml", "--set", f"device=cuda:{n}", "--out", work / "out")
    check_error(result, 1, [f"cuda:{n} does not exist", f"{n} CUDA device"])


def test_missing_config_file(cli, work):
    check_error(cli("train", "nope.yaml"), 1, ["config file not found: nope.yaml", "gradfit init"])


def test_config_is_a_directory(cli, work):
    (work / "d.yaml").mkdir()
    check_error(cli("train", "d.yaml"), 1, ["d.yaml is a directory"])


def test_config_not_text(cli, work):
    (work / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage\x80")
    check_error(cli("train", "bin.yaml"), 1, ["bin.yaml", "not valid UTF-8"])


def test_yaml_syntax_error_names_the_line(cli, work):
    (work / "bad.yaml").write_text(BAD_INDENT)
    check_error(cli("train", "bad.yaml"), 1, ["bad.yaml", "line 4", "YAML syntax error", "indentation"])


def test_yaml_key_given_twice(cli, work):
    write(work / "twice.yaml", """
        name: t
        data: {path: good.csv}
        model: {kind: linear}
        name: u
    """)
    check_error(cli("train", "twice.yaml"), 1, ["twice.yaml", "'name' is given twice", "lines 1 and 4"])


def test_unknown_keys_name_the_closest_valid_key(cli, work):
    write(work / "keys.yaml", """
        name: t
        data: {path: good.csv, targt: y}
        model: {kind: linear}
        optimiser: {kind: adam}
    """)
    err = check_error(cli("train", "keys.yaml"), 1, ["keys.yaml", "2 problems"])
    assert "data.targt: unknown key; did you mean 'target'?" in err
    assert "optimiser: unknown key; did you mean 'optimizer'?" in err


def test_missing_required_sections(cli, work):
    write(work / "min.yaml", "name: t\n")
    err = check_error(cli("train", "min.yaml"), 1, ["data: required key is missing", "model: required key is missing"])
    assert "2 problems" in err


def test_empty_config(cli, work):
    (work / "empty.yaml").write_text("# nothing\n")
    check_error(cli("train", "empty.yaml"), 1, ["the config is empty", "gradfit init"])


def test_config_not_a_mapping(cli, work):
    (work / "list.yaml").write_text("- a\n- b\n")
    check_error(cli("train", "list.yaml"), 1, ["must be a YAML mapping", "got list"])


def test_yaml_tags_that_construct_objects_are_refused(cli, work):
    write(work / "evil.yaml", """
        name: !!python/object/apply:os.system ["echo owned > owned.txt"]
        data: {path: good.csv}
        model: {kind: linear}
    """)
    check_error(cli("train", "evil.yaml"), 1, ["evil.yaml", "line 1", "YAML tags that construct objects are not allowed"])
    assert not (work / "owned.txt").exists()


def test_dropna_drops_rows_and_says_how_many(cli, work):
    result = cli("train", "base.yaml", "--set", "data.path=nan.csv", "--set", "data.dropna=true", "--out", work / "out")
    assert result.exit_code == 0, result.stderr
    assert "dropped 2 rows with missing values (data.dropna)" in " ".join(result.stderr.split())
    import json

    m = json.loads((work / "out" / "metrics.json").read_text())
    assert m["stop_reason"] in ("max_epochs", "tolerance")


def test_out_directory_not_empty(cli, work):
    (work / "out").mkdir()
    (work / "out" / "keep.txt").write_text("x")
    check_error(cli("train", "base.yaml", "--out", work / "out"), 1, ["already holds files", "--force"])
    assert (work / "out" / "keep.txt").read_text() == "x"


# ---------------------------------------------------------------- command-line usage: exit 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "base.yaml", "--bogus"], ["No such option: --bogus"]),
        (["train"], ["give a CONFIG file", "RUN_DIR"]),
        (["train", "base.yaml", "--resume", "runs/x"], ["not both"]),
        (["nosuchcommand"], ["No such command"]),
    ],
    ids=["unknown-option", "no-config", "config-and-resume", "unknown-command"],
)
def test_usage_errors_exit_2(cli, work, args, words):
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    err = " ".join(result.stderr.split())
    for w in words:
        assert w in err


# ---------------------------------------------------------------- the real process


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["train", "nope.yaml"], 1, ["error: config file not found"]),
        (["train", "bad.yaml"], 1, ["line 4", "YAML syntax error"]),
        (["train", "base.yaml", "--set", "data.path=text.csv"], 1, ["column 'x' is not numeric", "'abc'"]),
        (["train", "base.yaml", "--set", "optimizer.kind=sgd", "--set", "optimizer.lr=10", "--set", "train.epochs=500"], 1,
         ["training diverged"]),
        (["train", "base.yaml", "--nope"], 2, ["No such option"]),
    ],
    ids=["missing-config", "yaml-syntax", "non-numeric", "divergence", "usage"],
)
def test_subprocess_exit_code_and_no_traceback(work, args, code, words):
    (work / "bad.yaml").write_text(BAD_INDENT)
    proc = run_gradfit(*args, cwd=work, env={"COLUMNS": "200"})
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""  # errors go to stderr only
    for w in words:
        assert w in proc.stderr
    assert not (work / "runs").exists() or not any((work / "runs").iterdir())

"""Review checks for issues 18 and 21 that the other test files leave out.

Issue 18: the linear summary (every number, nonrobust and HC3) of a 2-process torchrun equals the
one-process summary and statsmodels' OLS; a polynomial run's torchrun summary likewise; a
rank-deficient design gets its note and statsmodels' (pinv) numbers.
Issue 21: the red-team's non-regular-file examples on the command line, with exit code and message
(``check /dev/zero``, ``solve-equations --file /dev/zero``, a FIFO checkpoint for eval and predict,
``/dev/zero`` behind a symlink named ``zero.csv`` as ``data.path``).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml

sm = pytest.importorskip("statsmodels.api")

from gradfit.config.loading import load_config  # noqa: E402
from gradfit.train.run import train  # noqa: E402
from test_summary_cli import statsmodels_summary  # noqa: E402

posix = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")

FIT_KEYS = ("nobs", "df_model", "df_resid", "r2", "adj_r2", "f_stat", "f_pvalue", "log_likelihood", "aic", "bic",
            "omnibus", "omnibus_p", "jarque_bera", "jarque_bera_p", "skew", "kurtosis", "durbin_watson", "cond_no")


def flat(s: str) -> str:
    return " ".join(s.split())


def _close(got, want, rtol, what):
    if (what.endswith("p") or what.endswith("pvalue")) and abs(want) < 1e-300:
        return
    assert got == pytest.approx(float(want), rel=rtol, abs=0), what


# ---------------------------------------------------------------- issue 18: torchrun summary of a linear run


def _frame(n=301, seed=4):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, 3)) * [1.0, 3.0, 0.5] + [0.0, 10.0, -2.0]
    y = 4.0 + X @ [1.5, -2.0, 0.5] + g.standard_t(5, size=n) * (0.3 + 0.2 * np.abs(X[:, 0]))  # heteroskedastic
    return pd.DataFrame({"x1": X[:, 0], "x2": X[:, 1], "x3": X[:, 2], "y": y})


def _reference(frame, cov_type):
    X = sm.add_constant(frame[["x1", "x2", "x3"]].to_numpy(float))
    return statsmodels_summary(frame["y"].to_numpy(float), X, ["intercept", "x1", "x2", "x3"], cov_type)


def _summary(cli, run, cov):
    r = cli("summary", run, "--json", "--cov", cov)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_torchrun_linear_summary_equals_one_process_and_statsmodels(tmp_path, cli):
    from test_distributed import torchrun

    frame = _frame()
    frame.to_csv(tmp_path / "d.csv", index=False, float_format="%.17g")
    cfg = tmp_path / "lin.yaml"
    cfg.write_text(yaml.safe_dump({"name": "lin", "seed": 0, "device": "cpu", "dtype": "float64",
                                   "data": {"path": "d.csv", "split": {"val": 0}},
                                   "model": {"kind": "linear"}, "loss": {"kind": "mse"}, "train": {"epochs": 20}}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        train(load_config(cfg), out=tmp_path / "one")
    finally:
        os.chdir(cwd)
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for cov in ("nonrobust", "HC3"):
        one, two = _summary(cli, tmp_path / "one", cov), _summary(cli, tmp_path / "two", cov)
        ref = _reference(frame, cov)
        for key in FIT_KEYS:
            _close(two[key], one[key], 1e-8, f"{cov} {key} (two vs one process)")
            _close(one[key], ref[key], 1e-8, f"{cov} {key} (one process vs statsmodels)")
        assert list(two["coefficients"]) == list(ref["coefficients"])
        for name, want in ref["coefficients"].items():
            for key in ("coef", "std_err", "t", "p", "ci_low", "ci_high"):
                _close(two["coefficients"][name][key], one["coefficients"][name][key], 1e-8, f"{cov} {name}.{key}")
                _close(two["coefficients"][name][key], want[key], 1e-8, f"{cov} {name}.{key} vs statsmodels")


# ---------------------------------------------------------------- issue 18: rank deficiency


def _train_collinear(tmp_path, cli, third):
    frame = _frame(n=60)
    frame["x12"] = third(frame)
    frame = frame[["x1", "x2", "x12", "y"]]
    frame.to_csv(tmp_path / "col.csv", index=False, float_format="%.17g")
    cfg = tmp_path / "col.yaml"
    cfg.write_text(yaml.safe_dump({"name": "col", "seed": 0, "device": "cpu", "data": {"path": str(tmp_path / "col.csv"),
                                   "target": "y", "split": {"val": 0}}, "model": {"kind": "linear"}, "train": {"epochs": 20}}))
    r = cli("train", cfg, "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sm.OLS(frame["y"].to_numpy(float), sm.add_constant(frame[["x1", "x2", "x12"]].to_numpy(float))).fit()
    return _summary(cli, tmp_path / "run", "nonrobust"), ref


def _check_rank_deficient(out, ref):
    assert ref.df_model == 2
    assert out["df_model"] == ref.df_model and out["df_resid"] == ref.df_resid
    assert any("rank 3 of 4 columns" in n for n in out["notes"]), out["notes"]
    _close(out["f_stat"], ref.fvalue, 1e-8, "f_stat")
    _close(out["adj_r2"], ref.rsquared_adj, 1e-8, "adj_r2")
    for i, name in enumerate(["intercept", "x1", "x2", "x12"]):
        c = out["coefficients"][name]
        _close(c["coef"], ref.params[i], 1e-6, f"{name}.coef")  # (pinv: the minimum-norm solution)
        _close(c["std_err"], ref.bse[i], 1e-6, f"{name}.std_err")


def test_rank_deficient_sum_column_gets_the_note_and_statsmodels_numbers(tmp_path, cli):
    out, ref = _train_collinear(tmp_path, cli, lambda f: f.x1 + f.x2)
    _check_rank_deficient(out, ref)


def test_rank_deficient_multiple_column_gets_the_note_and_statsmodels_numbers(tmp_path, cli):
    out, ref = _train_collinear(tmp_path, cli, lambda f: 2 * f.x1)
    _check_rank_deficient(out, ref)


# ---------------------------------------------------------------- issue 21: not regular files, on the command line


@posix
@pytest.mark.parametrize("args, words", [
    (["check", "/dev/zero"], "config file /dev/zero is a character device, not a regular file"),
    (["solve-equations", "--file", "/dev/zero"], "equation file /dev/zero is a character device, not a regular file"),
])
def test_dev_zero_is_refused_at_once(cli, args, words):
    r = cli(*args)
    assert r.exit_code == 1, r.output
    assert words in flat(r.stderr) and "Traceback" not in r.output


@posix
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_fifo_checkpoint_is_refused_by_the_command_line(tmp_path, cli, command):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "model.safetensors")
    (tmp_path / "new.csv").write_text("x\n1\n")
    args = [command, run] + (["--data", tmp_path / "new.csv"] if command == "predict" else [])
    r = cli(*args)
    assert r.exit_code == 1, r.output
    err = flat(r.stderr)
    assert "the checkpoint" in err and "is a named pipe (FIFO), not a regular file" in err and "Traceback" not in r.output


@posix
def test_dev_zero_behind_a_csv_symlink_as_data_path_is_refused_by_train(tmp_path, cli):
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "z", "data": {"path": str(tmp_path / "zero.csv"), "target": "y"},
                                   "model": {"kind": "linear"}}))
    r = cli("train", cfg, "--out", tmp_path / "run")
    assert r.exit_code == 1, r.output
    assert "character device, not a regular file" in flat(r.stderr) and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- issue 21: a full disk after the training state


def test_a_full_disk_after_the_training_state_leaves_a_resumable_or_no_directory(tmp_path, monkeypatch, cli):
    import errno
    from pathlib import Path

    import test_fault_injection as fi
    from gradfit.files import WriteError

    def draw(kind, path, args):
        with fi.plots.atomic_path(Path(path)) as tmp:
            tmp.write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(fi.plots, "_draw", draw)
    inj = fi.Injector(monkeypatch)
    cfg = load_config(fi.write_config(tmp_path))
    inj.arm(errno.ENOSPC, set(range(2, 40)))  # (site 0: the marker, 1: the training state, then every write fails)
    with pytest.raises(WriteError, match="no space left"):
        train(cfg)
    inj.arm(errno.ENOSPC, set())
    d = tmp_path / "runs" / "t"
    if d.exists():
        r = cli("train", "--resume", d, "--quiet")
        assert r.exit_code == 0, r.output  # resumable: the kept state lets the run be written again
        assert (d / "metrics.json").is_file()

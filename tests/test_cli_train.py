"""gradfit train from the command line: exit codes, output, --json, --set, errors without tracebacks."""

from __future__ import annotations

import json

from conftest import CONFIGS


def test_train_prints_summary_and_equation(cli, tmp_path):
    r = cli("train", CONFIGS / "quadratic.yaml", "--out", tmp_path / "q")
    assert r.exit_code == 0, r.output
    assert "y = 3 + 2*x + 1*x^2" in r.stdout
    assert str(tmp_path / "q") in r.stdout
    assert (tmp_path / "q" / "metrics.json").exists()


def test_train_json_is_only_json(cli, tmp_path):
    r = cli("train", CONFIGS / "linear.yaml", "--out", tmp_path / "l", "--json", "--set", "train.epochs=50")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["run_dir"] == str(tmp_path / "l")
    assert doc["epochs"] <= 50 and set(doc["train"]) == {"loss", "mse", "rmse", "mae", "r2"}


def test_quiet_prints_only_the_run_dir(cli, tmp_path):
    r = cli("train", CONFIGS / "linear.yaml", "--out", tmp_path / "l", "--quiet")
    assert r.exit_code == 0
    assert r.stdout.strip() == str(tmp_path / "l")


def test_bad_config_exits_1_without_traceback(gradfit_proc, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data: {path: x.csv}\nmodel: {kind: polynomial, degre: 2}\n")
    r = gradfit_proc("train", p)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "model.degre" in r.stderr and "did you mean 'degree'" in r.stderr


def test_usage_error_exits_2(gradfit_proc):
    r = gradfit_proc("train")
    assert r.returncode == 2
    r = gradfit_proc("train", "x.yaml", "--no-such-flag")
    assert r.returncode == 2


def test_version(cli):
    from gradfit.models import passes as fastopt

    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.startswith("gradfit ")
    built = "compiled kernel: built\n" in r.stdout
    assert built == (fastopt._fused is not None), r.stdout

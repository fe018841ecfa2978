"""gradfit check, init, schema and runs: exit codes, output shape, messages; gradfit.compare."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import CONFIGS, DATA, small_config
from gradfit.config.templates import example_config, sample_data
from gradfit.results import compare


def write_yaml(path, cfg: dict):
    path.write_text(yaml.safe_dump(cfg))
    return path


def imports_torch(*args, cwd=None) -> tuple[int, bool, str]:
    """Run a gradfit command in a fresh interpreter: (exit code, whether torch got imported, stderr)."""
    code = (
        "import sys\nfrom gradfit.cli import app\n"
        "try:\n    app(prog_name='gradfit', args=sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code or 0\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\nsys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)
    return r.returncode, "NO-TORCH" not in r.stderr, r.stderr


# ---------------------------------------------------------------- check


def test_check_prints_resolved_config_with_defaults(cli):
    r = cli("check", CONFIGS / "quadratic.yaml", "--set", "optimizer.lr=0.01")
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)  # stdout is YAML alone
    assert doc["optimizer"]["lr"] == 0.01 and doc["model"] == {"kind": "polynomial", "degree": 2, "intercept": True,
                                                               "interactions": True, "penalty": None}
    assert doc["train"]["early_stopping"] is None and doc["data"]["dropna"] is False  # defaults filled in
    assert "valid" in r.stderr and "'y'" in r.stderr


def test_check_prints_one_key_a_line(cli):
    out = cli("check", CONFIGS / "multi.yaml").stdout
    assert "  split:\n    val: 0.2\n    test: 0.1\n" in out  # sections as blocks
    assert "  features: [size_m2, age_years, rooms, distance_km]\n" in out  # short lists on one line
    assert max(map(len, out.splitlines())) <= 80


def test_check_output_checks_again_to_the_same_text(cli, tmp_path):
    first = cli("check", CONFIGS / "multi.yaml").stdout
    out = tmp_path / "resolved.yaml"
    out.write_text(first.replace("path: ../data/", f"path: {CONFIGS.parent / 'data'}/"))
    again = cli("check", out)
    assert again.exit_code == 0 and yaml.safe_load(again.stdout) == yaml.safe_load(out.read_text())


def test_check_formula_resolves_target_and_features(cli, tmp_path):
    (tmp_path / "d.csv").write_text("t,y,z\n1,2,3\n2,3,4\n3,5,6\n")
    p = write_yaml(tmp_path / "f.yaml", {"data": {"path": "d.csv"}, "model": {"kind": "formula", "formula": "y = a * exp(b * t)"}})
    r = cli("check", p)
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    assert doc["data"]["features"] == ["t"] and doc["data"]["target"] == "y" and doc["optimizer"]["kind"] == "lm"


BAD = [
    # (config or None for quadratic.yaml, --set overrides, words the message must hold)
    (None, ["model.degre=3"], ["model.degre", "did you mean 'degree'"]),
    (None, ["data.target=z"], ["target column 'z' not found", "'x', 'y'"]),
    (None, ["data.features=[x, w]"], ["feature column 'w' not found"]),
    (None, ["data.path=nowhere.csv"], ["data file not found", "nowhere.csv"]),
    (None, ["optimizer.momentum=0.9"], ["momentum applies to optimizer kind 'sgd' only"]),
    ({"data": {"synthetic": {"kind": "linear", "n_features": 2}, "target": "q"}, "model": {"kind": "linear"}}, [],
     ["synthetic data has features ['x1', 'x2']"]),
    ({"data": {"path": str(DATA / "quadratic.csv")}, "model": {"kind": "formula", "formula": "y = x * x"}}, [],
     ["model.formula has no parameters"]),
    ({"data": {"path": str(DATA / "quadratic.csv")}, "model": {"kind": "formula", "formula": "y = a * exp(b * w)"}}, [],
     ["model.formula uses no column"]),
]


@pytest.mark.parametrize("raw, sets, words", BAD)
def test_check_bad_configs_exit_1_with_trains_message(cli, tmp_path, raw, sets, words):
    if raw is None:
        path = CONFIGS / "quadratic.yaml"
    else:
        path = write_yaml(tmp_path / "bad.yaml", raw)
    args = [a for s in sets for a in ("--set", s)]
    r = cli("check", path, *args)
    t = cli("train", path, *args, "--out", tmp_path / "never")
    assert r.exit_code == 1 and r.stdout == ""
    message = " ".join(r.stderr.split())
    assert all(w in message for w in words), r.stderr
    assert r.stderr == t.stderr  # the same message as train
    assert not (tmp_path / "never").exists()


def test_check_missing_file_and_no_traceback(gradfit_proc, tmp_path):
    r = gradfit_proc("check", tmp_path / "nope.yaml")
    assert r.returncode == 1 and "config file not found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.yaml").write_text("data: {path: a.csv\nmodel: {kind: linear}\n")
    r = gradfit_proc("check", tmp_path / "bad.yaml")
    assert r.returncode == 1 and "YAML syntax error" in r.stderr and "Traceback" not in r.stderr
    assert gradfit_proc("check").returncode == 2


def test_check_and_schema_do_not_import_torch(tmp_path):
    for name in ("linear", "quadratic"):  # synthetic data; a CSV file whose columns are checked
        rc, torch, err = imports_torch("check", CONFIGS / f"{name}.yaml")
        assert rc == 0 and not torch, err
    rc, torch, err = imports_torch("schema")
    assert rc == 0 and not torch, err


# ---------------------------------------------------------------- init


@pytest.mark.parametrize("kind", ["polynomial", "linear", "mlp"])
def test_init_writes_a_config_that_trains(cli, tmp_path, kind):
    path = tmp_path / f"{kind}.yaml"
    r = cli("init", path, "--model", kind)
    assert r.exit_code == 0, r.output
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=gradfit.schema.json\n")
    assert "gradfit schema > gradfit.schema.json" in text
    assert (tmp_path / f"{kind}.csv").exists() == (kind != "linear")
    assert cli("check", path).exit_code == 0
    t = cli("train", path, "--set", "train.epochs=50", "--out", tmp_path / "run", "--json")
    assert t.exit_code == 0, t.output
    doc = json.loads(t.stdout)
    assert doc["epochs"] <= 50 and doc["train"]["r2"] is not None


def test_init_default_path_and_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("init").exit_code == 0
    assert (tmp_path / "gradfit.yaml").exists() and (tmp_path / "gradfit.csv").exists()
    assert "path: gradfit.csv" in (tmp_path / "gradfit.yaml").read_text()
    (tmp_path / "sub").mkdir()
    assert cli("init", "sub", "--model", "linear").exit_code == 0
    assert (tmp_path / "sub" / "gradfit.yaml").exists()
    assert cli("init", "new/").exit_code == 0  # a folder to make
    assert (tmp_path / "new" / "gradfit.yaml").exists()


def test_init_refuses_to_overwrite_without_force(cli, tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("mine\n")
    r = cli("init", path)
    assert r.exit_code == 1 and "already exists" in r.stderr and "--force" in r.stderr
    assert path.read_text() == "mine\n" and not (tmp_path / "g.csv").exists()  # nothing written
    (tmp_path / "h.csv").write_text("mine\n")  # the data file counts too
    r = cli("init", tmp_path / "h.yaml")
    assert r.exit_code == 1 and "h.csv" in r.stderr and not (tmp_path / "h.yaml").exists()
    r = cli("init", path, "--force")
    assert r.exit_code == 0 and path.read_text().startswith("# yaml-language-server")


def test_init_names_the_run_after_the_file(cli, tmp_path):
    assert cli("init", tmp_path / "my fit.yaml").exit_code == 0
    assert yaml.safe_load((tmp_path / "my fit.yaml").read_text())["name"] == "my-fit"
    assert cli("init", tmp_path / "gradfit.yaml", "--model", "mlp").exit_code == 0
    assert yaml.safe_load((tmp_path / "gradfit.yaml").read_text())["name"] == "sine"  # the example's own name


def test_init_bad_model_is_a_usage_error(cli, tmp_path):
    r = cli("init", tmp_path / "x.yaml", "--model", "forest")
    assert r.exit_code == 2 and not (tmp_path / "x.yaml").exists()


def test_init_sample_data_is_deterministic():
    a, b = sample_data("polynomial"), sample_data("polynomial")
    assert a == b and a.startswith("x,y\n") and len(a.splitlines()) == 51
    rows = [tuple(map(float, line.split(","))) for line in a.splitlines()[1:]]
    # y = x^2 + 2x + 3 with noise of sd 0.1: the residuals are small and centred
    res = [y - (x * x + 2 * x + 3) for x, y in rows]
    assert max(map(abs, res)) < 0.5 and abs(sum(res) / len(res)) < 0.05
    assert sample_data("linear") is None
    assert "path: d.csv" in example_config("mlp", "d.csv", "c.yaml")


# ---------------------------------------------------------------- schema


def test_schema_is_json_with_the_config_keys(cli):
    r = cli("schema")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["$schema"].startswith("https://json-schema.org/")
    assert {"name", "seed", "device", "dtype", "data", "model", "loss", "optimizer", "train", "output"} <= set(doc["properties"])
    assert doc["required"] == ["data", "model"] and doc["additionalProperties"] is False
    kinds = {d["properties"]["kind"].get("const") for d in doc["$defs"].values() if "kind" in d.get("properties", {})}
    assert {"linear", "polynomial", "mlp", "formula"} <= kinds


def test_schema_validates_the_example_configs(cli):
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(cli("schema").stdout)
    for name in ("quadratic", "linear", "mlp", "huber", "multi"):
        jsonschema.validate(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()), doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"data": {"path": "a.csv"}, "model": {"kind": "polynomial", "degre": 2}}, doc)


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three real small runs under one folder, plus an incomplete one and a folder that is no run."""
    from typer.testing import CliRunner

    from gradfit.cli import app

    base = tmp_path_factory.mktemp("runs")
    configs = {
        "exact": small_config(optimizer={"kind": "lbfgs"}, train={"epochs": 30}),  # R^2 = 1 to rounding
        "straight": small_config(model={"kind": "linear"}, train={"epochs": 50}),  # a line through a parabola
        "short": small_config(train={"epochs": 3}, loss={"kind": "mae"}),  # stopped early on
    }
    for name, cfg in configs.items():
        p = write_yaml(base / f"{name}.yaml", cfg)
        r = CliRunner().invoke(app, ["train", str(p), "--out", str(base / "runs" / name), "--quiet"])
        assert r.exit_code == 0, r.output
    (base / "runs" / "crashed").mkdir()
    (base / "runs" / "crashed" / "config.yaml").write_text("name: crashed\n")
    (base / "runs" / "notes").mkdir()
    (base / "runs" / "notes" / "readme.txt").write_text("not a run\n")
    return base / "runs"


def val_r2(run_dir) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["val"]["r2"]


def test_runs_table_sorted_by_val_r2(cli, three_runs):
    r = cli("runs", three_runs, "--sort", "val.r2")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert all(line == line.rstrip() for line in lines)  # no padding to the table's width
    order = [line.split()[0] for line in lines if line.split() and line.split()[0] in ("exact", "straight", "short")]
    expected = sorted(["exact", "straight", "short"], key=lambda n: -val_r2(three_runs / n))
    assert order == expected and order[0] == "exact"
    header = " ".join(lines[:2])
    for word in ("run", "epochs", "val", "train", "r2", "loss", "date"):
        assert word in header
    assert "stopped:" in r.stdout and "max = epochs cap" in r.stdout
    assert "skipped 1 incomplete run directory" in r.stderr and "crashed" in r.stderr
    reversed_ = cli("runs", three_runs, "--sort", "val.r2", "--reverse").stdout
    assert [ln.split()[0] for ln in reversed_.splitlines() if ln.split() and ln.split()[0] in expected] == expected[::-1]


def test_runs_table_fits_80_columns_when_every_setup_differs():
    import io

    from rich.console import Console

    from gradfit.cli.inspect import runs_table

    kinds = [("polynomial(2)", "mse", "adam"), ("linear", "huber", "lbfgs"), ("mlp", "mae", "sgd"), ("formula", "mse", "lm")]
    records = [{"name": f"a-long-experiment-name-{i}", "model": m, "loss": lo, "optimizer": o, "epochs": 12345,
                "stop_reason": "early_stopping", "train": {"r2": 0.123456, "loss": 1.23456e-14},
                "val": {"r2": -0.5, "loss": 123456.7}, "date": "2020-01-01T12:34:56+00:00"}
               for i, (m, lo, o) in enumerate(kinds)]
    buf = io.StringIO()
    Console(file=buf, width=80, no_color=True).print(runs_table(records, "val.r2", 80))
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    # the names cut in the middle: their ends, which tell the runs apart, stay
    assert any(re.match(r"a-long-\S*…\S*name-0 +poly2 +mse +adam +12345 es ", line) for line in lines)
    assert "es = early stopping" in buf.getvalue() and "dates left out" in buf.getvalue()
    buf = io.StringIO()
    Console(file=buf, width=120, no_color=True).print(runs_table(records, "val.r2", 120))
    assert "2020-01-01" in buf.getvalue() and "a-long-experiment-name-3" in buf.getvalue()


def test_runs_json(cli, three_runs):
    r = cli("runs", three_runs, "--json", "--sort", "train.loss")
    assert r.exit_code == 0
    runs = json.loads(r.stdout)
    assert [x["name"] for x in runs] == sorted(["exact", "straight", "short"],
                                                 key=lambda n: json.loads((three_runs / n / "metrics.json").read_text())["train"]["loss"])
    by = {x["name"]: x for x in runs}
    assert by["straight"]["model"] == "linear" and by["exact"]["model"] == "polynomial(2)"
    assert by["short"]["loss"] == "mae" and by["exact"]["optimizer"] == "lbfgs" and by["short"]["epochs"] == 3
    assert by["short"]["stop_reason"] == "max_epochs" and by["exact"]["val"]["r2"] == val_r2(three_runs / "exact")
    assert set(by["exact"]) >= {"name", "path", "model", "loss", "optimizer", "epochs", "stop_reason", "train", "val", "date"}


def test_runs_bad_sort_key_and_missing_dir(cli, three_runs, tmp_path):
    r = cli("runs", three_runs, "--sort", "val.r3")
    assert r.exit_code == 2 and "val.r2" in r.output
    r = cli("runs", tmp_path / "nowhere")
    assert r.exit_code == 1 and "no such directory" in r.stderr
    r = cli("runs", tmp_path)
    assert r.exit_code == 0 and "no finished runs" in r.stderr
    assert json.loads(cli("runs", tmp_path, "--json").stdout) == []


def test_runs_does_not_import_torch_and_respects_no_color(three_runs):
    rc, torch, err = imports_torch("runs", three_runs)
    assert rc == 0 and not torch, err
    code = "import sys\nfrom gradfit.cli import app\napp(prog_name='gradfit', args=sys.argv[1:])"

    def colours(**env) -> set:
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | env
        r = subprocess.run([sys.executable, "-c", code, "runs", str(three_runs)], capture_output=True, text=True, env=env, check=False)
        assert r.returncode == 0 and "exact" in r.stdout
        # SGR colour codes (30-37, 38;..., 90-97) in either stream; bold (1) is not a colour
        codes = re.findall(r"\x1b\[([0-9;]*)m", r.stdout + r.stderr)
        return {c for seq in codes for c in seq.split(";") if c.isdigit() and (30 <= int(c) <= 38 or 90 <= int(c) <= 97)}

    assert colours(FORCE_COLOR="1")  # the note on the skipped run is yellow on a terminal
    assert not colours(FORCE_COLOR="1", NO_COLOR="1")


# ---------------------------------------------------------------- gradfit.compare


def rec(name, r2=None, loss=None, date="2025-01-01T00:00:00+00:00", epochs=1):
    return {"name": name, "val": None if r2 is None else {"r2": r2, "loss": loss}, "date": date, "epochs": epochs}


def test_sort_rule_best_first_missing_last():
    rs = [rec("a", 0.5, 2.0), rec("b", 0.9, 1.0), rec("c"), rec("d", float("nan"), 3.0)]
    assert [r["name"] for r in compare.sort_runs(rs, "val.r2")] == ["b", "a", "c", "d"]
    assert [r["name"] for r in compare.sort_runs(rs, "val.r2", reverse=True)] == ["a", "b", "c", "d"]
    assert [r["name"] for r in compare.sort_runs(rs, "val.loss")] == ["b", "a", "d", "c"]
    dated = [rec("old", date="2024-05-01T00:00:00+00:00"), rec("new", date="2025-05-01T00:00:00+00:00")]
    assert [r["name"] for r in compare.sort_runs(dated, "date")] == ["new", "old"]
    assert [r["name"] for r in compare.sort_runs([rec("y", epochs=9), rec("x", epochs=9), rec("z", epochs=2)], "epochs")] == ["z", "x", "y"]


def test_sort_key_suggestions():
    with pytest.raises(compare.GradfitError, match="did you mean 'val.r2'"):
        compare.check_sort_key("val.R2")
    with pytest.raises(compare.GradfitError, match="did you mean 'val.rmse'"):
        compare.check_sort_key("rmse")
    assert compare.check_sort_key("test.mae") == "test.mae"

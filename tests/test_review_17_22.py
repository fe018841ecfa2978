"""Review of issues 17 and 22: the checks their "What it must show" lists ask for that the other tests
leave out. WLS on a table with text, boolean and date columns (and through an R-style formula) against
statsmodels' smf.wls; `gradfit predict` as a command against statsmodels' predict; the EU CSV end to end
from a YAML config; and the README's cv table against numpy on the recorded folds."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import CONFIGS, DATA, ROOT
from gradfit.config.loading import config_from_dict
from gradfit.train.run import train
from test_tables import CARS_FORMULA, sm_name

CARS = DATA / "used_cars.csv"


def gradfit(*args):
    """The command in-process (no torch import per call): (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from gradfit.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr if res.stderr_bytes is not None else ""


def cfg(data: dict, model: dict | None = None) -> dict:
    return {"name": "r", "seed": 0, "dtype": "float64", "data": {"split": {"val": 0.0}, **data},
            "model": model or {"kind": "linear"}, "loss": {"kind": "mse"}, "optimizer": {"kind": "lbfgs"},
            "train": {"epochs": 300}}


def with_days(d: pd.DataFrame) -> pd.DataFrame:
    d = d.copy()
    d["days"] = (pd.to_datetime(d["first_registered"]) - pd.Timestamp("1970-01-01")).dt.days.astype(float)
    return d


@pytest.fixture(scope="module")
def weighted_cars(tmp_path_factory):
    import statsmodels.formula.api as smf

    tmp = tmp_path_factory.mktemp("wcars")
    d = pd.read_csv(CARS)
    d["w"] = np.random.default_rng(11).uniform(0.2, 4.0, len(d))
    d.to_csv(tmp / "cars_w.csv", index=False)
    run = train(config_from_dict(cfg({"path": str(tmp / "cars_w.csv"), "target": "price_k", "weights": "w",
                                      "exclude": ["listing"], "reference": {"fuel": "petrol"}})), out=tmp / "run")
    ref = smf.wls(CARS_FORMULA, data=with_days(d), weights=d["w"]).fit()
    return run, ref, tmp


def test_wls_with_text_boolean_and_date_columns_equals_smf_wls(weighted_cars):
    run, ref, _ = weighted_cars
    c = run.coefficients
    got = {"intercept": c["intercept"], **c["coefficients"]}
    assert sorted(sm_name(k) for k in got) == sorted(ref.params.index)
    assert "automatic[T.True]" in got and "first_registered[days]" in got and "w" not in got
    scale = abs(ref.params).max()
    for k, v in got.items():
        assert v == pytest.approx(ref.params[sm_name(k)], rel=1e-10, abs=1e-12 * scale), k
    for k, se in c["std_errors"].items():
        assert se == pytest.approx(ref.bse[sm_name(k)], rel=1e-8), k
    assert run.metrics["train"]["r2"] == pytest.approx(ref.rsquared, rel=1e-10)


def test_cli_predict_on_weighted_mixed_table_equals_statsmodels(weighted_cars):
    run, ref, tmp = weighted_cars
    code, out, err = gradfit("predict", run.run_dir, "--data", DATA / "new_cars.csv")
    assert code == 0, out + err
    got = pd.read_csv(io.StringIO(out))["prediction"].to_numpy()
    want = ref.predict(with_days(pd.read_csv(DATA / "new_cars.csv"))).to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_cli_predict_equals_statsmodels_ols_and_the_readme(tmp_path):
    """The README's used_cars commands as written: `gradfit predict` (the command, its printed CSV) equals
    smf.ols' predict fitted on the rows split.csv marks train, and the rows the README prints (test_docs
    checks none of the predict lines)."""
    import statsmodels.formula.api as smf

    code, out, err = gradfit("train", CONFIGS / "used_cars.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out + err
    code, out, err = gradfit("predict", tmp_path / "run", "--data", DATA / "new_cars.csv")
    assert code == 0, out + err
    got = pd.read_csv(io.StringIO(out))["prediction"].to_numpy()
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    rows = with_days(pd.read_csv(CARS))[(split["set"] == "train").to_numpy()]
    ref = smf.ols(CARS_FORMULA, data=rows).fit()
    np.testing.assert_allclose(got, ref.predict(with_days(pd.read_csv(DATA / "new_cars.csv"))).to_numpy(), rtol=1e-10)
    lines = readme_block("gradfit predict runs/used_cars --data data/new_cars.csv")
    readme = pd.read_csv(io.StringIO("\n".join(lines)))["prediction"].to_numpy()
    np.testing.assert_allclose(got, readme, rtol=1e-9)


def test_wls_through_an_r_style_formula_equals_smf_wls(tmp_path):
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(7)
    n = 150
    d = pd.DataFrame({"size": rng.uniform(1, 5, n), "age": rng.uniform(0, 30, n), "distance": rng.uniform(0.5, 20, n),
                      "city": rng.choice(["b", "a", "c"], n), "w": rng.uniform(0.3, 3.0, n)})
    d["price"] = (3 + 2 * d["size"] + d["city"].map({"a": 0, "b": 1.5, "c": -1}) + 0.05 * d["size"] * d["age"]
                  - np.log(d["distance"]) + rng.normal(0, 0.5, n) / np.sqrt(d["w"]))
    d.to_csv(tmp_path / "h.csv", index=False)
    f = "price ~ size + C(city) + size:age + np.log(distance)"
    run = train(config_from_dict(cfg({"path": str(tmp_path / "h.csv"), "weights": "w"},
                                     {"kind": "linear", "formula": f})), write=False)
    ref = smf.wls(f, data=d, weights=d["w"]).fit()
    c = run.coefficients
    assert sorted(["Intercept", *c["coefficients"]]) == sorted(ref.params.index)
    assert c["intercept"] == pytest.approx(ref.params["Intercept"], rel=1e-10)
    for k, v in c["coefficients"].items():
        assert v == pytest.approx(ref.params[k], rel=1e-10), k
        assert c["std_errors"][k] == pytest.approx(ref.bse[k], rel=1e-8), k


def test_eu_csv_with_text_and_dates_trains_from_yaml_with_no_editing(tmp_path):
    """A semicolon file with decimal commas, a text and a date column, a numeric target name: the command."""
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(9)
    n = 90
    d = pd.DataFrame({"x": rng.uniform(0, 5, n).round(3), "city": rng.choice(["Köln", "Lyon", "Graz"], n),
                      "when": (pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 2000, n), unit="D"))
                      .strftime("%Y-%m-%d")})
    days = (pd.to_datetime(d["when"]) - pd.Timestamp("1970-01-01")).dt.days
    d["2024"] = (1.5 + 2.0 * d["x"] + d["city"].map({"Köln": 0, "Lyon": 1.0, "Graz": -0.5}) + 0.001 * days
                 + 0.1 * rng.standard_normal(n)).round(4)
    d.to_csv(tmp_path / "eu.csv", sep=";", decimal=",", index=False)
    (tmp_path / "c.yaml").write_text("name: eu\nseed: 0\ndtype: float64\n"
                                     "data: {path: eu.csv, target: 2024, decimal: ',', split: {val: 0}}\n"
                                     "model: {kind: linear}\nloss: {kind: mse}\noptimizer: {kind: lbfgs}\n"
                                     "train: {epochs: 300}\n")
    code, out, err = gradfit("train", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 0, out + err
    c = json.loads((tmp_path / "run" / "coefficients.json").read_text())
    e = d.rename(columns={"2024": "y"}).assign(days=days.astype(float))
    ref = smf.ols("y ~ x + C(city) + days", data=e).fit()
    assert c["coefficients"]["x"] == pytest.approx(ref.params["x"], rel=1e-10)
    assert c["coefficients"]["city[T.Lyon]"] == pytest.approx(ref.params["C(city)[T.Lyon]"], rel=1e-10)
    assert c["coefficients"]["when[days]"] == pytest.approx(ref.params["days"], rel=1e-9)
    assert c["std_errors"]["x"] == pytest.approx(ref.bse["x"], rel=1e-8)


def readme_block(command: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def test_readme_cv_table_is_the_real_output(tmp_path):
    """README's `gradfit cv configs/linear.yaml --folds 5` table (test_docs checks none of its lines): the
    same numbers from a fresh run, and its mean and sd those of the folds in cv.json."""
    cmd = "gradfit cv configs/linear.yaml --folds 5 --out lcv"
    args = [ROOT / a if a.startswith("configs/") else a for a in cmd.split()[1:-1]]
    code, out, err = gradfit(*args, tmp_path / "lcv")
    assert code == 0, out + err
    printed = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for line in readme_block(cmd):
        row = line.split()
        if row and (row[0].isdigit() or row[0] in ("mean", "sd")):
            assert [float(v) for v in printed[row[0]][1:]] == pytest.approx([float(v) for v in row[1:]], rel=2e-4), line
    doc = json.loads((tmp_path / "lcv" / "cv.json").read_text())
    r2 = np.array([f["val"]["r2"] for f in doc["folds"]])
    assert float(printed["mean"][-2]) == pytest.approx(r2.mean(), rel=1e-4)
    assert float(printed["sd"][-2]) == pytest.approx(r2.std(ddof=1), rel=1e-4)
    # (each fold's coefficients against numpy's least squares: tests/test_cv.py, in float64 with lbfgs;
    # configs/linear.yaml trains float32 by 500 epochs of gradient descent, 5e-4 from the optimum)


def test_readme_sweep_ranking_is_the_real_output(tmp_path):
    """README's degree sweep ranking (test_docs checks only the penalty path's ranking lines)."""
    cmd = ("gradfit sweep configs/linear.yaml --set model.kind=polynomial --set optimizer.kind=lbfgs "
           "--grid model.degree=1,2,3 --folds 3 --out lsw")
    args = [ROOT / a if a.startswith("configs/") else a for a in cmd.split()[1:-1]]
    code, out, err = gradfit(*args, tmp_path / "lsw")
    assert code == 0, out + err
    printed = {line.split()[1]: float(line.split()[2]) for line in out.splitlines()
               if re.match(r"^ +\d+ +model\.degree=", line)}
    want = {line.split()[1]: float(line.split()[2]) for line in readme_block(cmd) if re.match(r"^ +\d+ +model\.", line)}
    assert len(want) == 3 and printed == pytest.approx(want, rel=1e-5)
    ranking = json.loads((tmp_path / "lsw" / "ranking.json").read_text())
    assert [r["name"] for r in ranking["runs"]] == list(want)

"""R-style formulas for linear models (data/wilkinson.py, through formulaic) vs statsmodels' smf.ols."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_gradfit
from gradfit.config.loading import config_from_dict
from gradfit.errors import ConfigError
from gradfit.results.checkpoint import load_model, read_checkpoint
from gradfit.results.evaluate import predict_file
from gradfit.train.run import train

FORMULA = "price ~ size + C(city) + size:age + np.log(distance) + I(size**2)"


def houses(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({"size": rng.uniform(1, 5, n), "age": rng.uniform(0, 30, n), "distance": rng.uniform(0.5, 20, n),
                      "city": rng.choice(["b", "a", "c"], n)})
    d["price"] = (3 + 2 * d["size"] + d["city"].map({"a": 0, "b": 1.5, "c": -1}) + 0.05 * d["size"] * d["age"]
                  - np.log(d["distance"]) + 0.3 * d["size"] ** 2 + rng.normal(0, 0.5, n))
    return d


def config(path: Path, formula: str, **model) -> dict:
    return {"name": "w", "seed": 0, "dtype": "float64", "data": {"path": str(path), "split": {"val": 0.0}},
            "model": {"kind": "linear", "formula": formula, **model}, "loss": {"kind": "mse"},
            "optimizer": {"kind": "lbfgs"}, "train": {"epochs": 200}}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import statsmodels.formula.api as smf

    tmp = tmp_path_factory.mktemp("wilkinson")
    d = houses()
    d.to_csv(tmp / "houses.csv", index=False)
    run = train(config_from_dict(config(tmp / "houses.csv", FORMULA)), out=tmp / "run").run_dir
    return run, smf.ols(FORMULA, data=d).fit(), tmp


def test_coefficients_and_standard_errors_equal_statsmodels(fitted):
    run, ref, _ = fitted
    c = json.loads((run / "coefficients.json").read_text())
    assert sorted(["Intercept", *c["coefficients"]]) == sorted(ref.params.index)  # formulaic's names
    assert c["intercept"] == pytest.approx(ref.params["Intercept"], rel=1e-10)
    for k, v in c["coefficients"].items():
        assert v == pytest.approx(ref.params[k], rel=1e-10), k
        assert c["std_errors"][k] == pytest.approx(ref.bse[k], rel=1e-8), k
    assert c["std_errors"]["intercept"] == pytest.approx(ref.bse["Intercept"], rel=1e-8)


def test_predict_rebuilds_the_design_from_the_checkpoint(fitted, tmp_path):
    run, ref, _ = fitted
    new = houses(12, seed=5).drop(columns="price")
    new = new[new["city"] != "c"]  # a subset of the levels
    new.to_csv(tmp_path / "new.csv", index=False)
    want = ref.predict(new).to_numpy()
    np.testing.assert_allclose(predict_file(run, tmp_path / "new.csv").frame["prediction"].to_numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(load_model(run).predict(new), want, rtol=1e-10)
    enc = read_checkpoint(run).data["source"]["encoding"]
    assert enc["levels"] == {"C(city)": ["a", "b", "c"]}  # JSON in the checkpoint, no pickle


def test_stateful_transform_and_no_intercept(tmp_path):
    import statsmodels.formula.api as smf

    d = houses(80, seed=2)
    d.to_csv(tmp_path / "h.csv", index=False)
    # (scale() differs: formulaic divides by the ddof=1 standard deviation, patsy by ddof=0)
    f = "price ~ center(size) + center(age) + city - 1"
    run = train(config_from_dict(config(tmp_path / "h.csv", f)), out=tmp_path / "run").run_dir
    ref = smf.ols(f, data=d).fit()
    c = json.loads((run / "coefficients.json").read_text())
    assert "intercept" not in c or c["intercept"] in (None, 0.0)
    for k, v in c["coefficients"].items():
        assert v == pytest.approx(ref.params[k], rel=1e-9), k
    new = houses(7, seed=9).drop(columns="price")  # centred with the training mean, not the new rows'
    np.testing.assert_allclose(load_model(run).predict(new), ref.predict(new).to_numpy(), rtol=1e-10)


def test_unseen_level_exits_1_naming_column_and_level(fitted, tmp_path):
    run, _, _ = fitted
    (tmp_path / "bad.csv").write_text("size,age,distance,city\n1,2,3,a\n1,2,3,zurich\n")
    r = run_gradfit("predict", run, "--data", tmp_path / "bad.csv")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "'city'" in r.stderr and "'zurich'" in r.stderr and "row 3" in r.stderr


@pytest.mark.parametrize("formula", [
    "price ~ __import__('os').system('touch PWNED')",
    "price ~ {__import__('os').system('touch PWNED')}",
    "price ~ size + np.load('x')",
    "price ~ size + {size.__class__}",
    "price ~ size + eval('1')",
    "price ~ size + {(lambda: 1)()}",
])
def test_code_outside_the_namespace_is_refused(fitted, tmp_path, formula):
    _, _, tmp = fitted
    with pytest.raises(ConfigError, match="model.formula"):
        train(config_from_dict(config(tmp / "houses.csv", formula.replace("PWNED", str(tmp_path / "PWNED")))), write=False)
    assert not (tmp_path / "PWNED").exists()


def test_refused_formula_exits_1(fitted, tmp_path):
    _, _, tmp = fitted
    (tmp_path / "c.yaml").write_text(json.dumps(config(tmp / "houses.csv", "price ~ {__import__('os').system('touch PWNED')}")))
    r = run_gradfit("train", tmp_path / "c.yaml", "--out", tmp_path / "run", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "model.formula" in r.stderr, r.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_config_checks():
    with pytest.raises(Exception, match="'~'"):
        config_from_dict(config(Path("x.csv"), "price = a * size"))


def test_formula_and_features_conflict(fitted):
    _, _, tmp = fitted
    cfg = config(tmp / "houses.csv", FORMULA)
    cfg["data"]["features"] = ["size"]
    with pytest.raises(ConfigError, match="data.features"):
        train(config_from_dict(cfg), write=False)


def test_missing_values_are_dropped_as_statsmodels_drops_them(tmp_path):
    import statsmodels.formula.api as smf

    d = houses(60, seed=3)
    d.loc[4, "size"] = np.nan
    d.loc[9, "city"] = np.nan  # (formulaic alone would code it as the reference level)
    d.to_csv(tmp_path / "h.csv", index=False)
    f = "price ~ size + C(city)"
    cfg = config(tmp_path / "h.csv", f)
    cfg["data"]["dropna"] = True
    run = train(config_from_dict(cfg), out=tmp_path / "run")
    ref = smf.ols(f, data=d).fit()
    assert ref.nobs == 58
    for k, v in run.coefficients["coefficients"].items():
        assert v == pytest.approx(ref.params[k], rel=1e-10), k


def test_named_reference_level_survives_the_checkpoint(fitted, tmp_path):
    import statsmodels.formula.api as smf

    _, _, tmp = fitted
    d = pd.read_csv(tmp / "houses.csv")
    f = "price ~ size + C(city, Treatment('b'))"
    run = train(config_from_dict(config(tmp / "houses.csv", f)), out=tmp_path / "run").run_dir
    ref = smf.ols(f, data=d).fit()
    c = json.loads((run / "coefficients.json").read_text())
    assert sorted(["Intercept", *c["coefficients"]]) == sorted(ref.params.index)
    new = d.drop(columns="price").iloc[:9]
    np.testing.assert_allclose(load_model(run).predict(new), ref.predict(new).to_numpy(), rtol=1e-10)

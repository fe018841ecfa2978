"""The checkpoint: a complete artifact that loads without executing anything from the file."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import gradfit
from conftest import run_gradfit, small_config
from gradfit.config.loading import config_from_dict
from gradfit.errors import CheckpointError
from gradfit.results.checkpoint import FORMAT_VERSION, load_model, read_checkpoint
from gradfit.train.run import train


@pytest.fixture(scope="module")
def poly_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("poly") / "run"
    return train(config_from_dict(small_config(data={"synthetic": {"kind": "polynomial", "coefficients": [3, 2, 1],
                                                                   "n_samples": 100, "noise": 0.1}})), out=out)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp") / "run"
    cfg = small_config(model={"kind": "mlp", "hidden": [8, 8], "activation": "tanh"}, train={"epochs": 100})
    return train(config_from_dict(cfg), out=out)


def said(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def rewrite(src: Path, dst: Path, meta_changes: dict | None = None, tensor_changes: dict | None = None) -> Path:
    """Copy a checkpoint with some metadata entries or tensors replaced (None removes an entry)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in (meta_changes or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    tensors.update(tensor_changes or {})
    save_file(tensors, str(dst), metadata=meta)
    return dst


# ---------------------------------------------------------------- what it holds


def test_checkpoint_holds_everything_needed(poly_run):
    ck = read_checkpoint(poly_run.run_dir)  # a run directory is accepted
    assert ck.path == poly_run.run_dir / "model.safetensors"
    assert ck.format_version == FORMAT_VERSION
    assert ck.spec["kind"] == "polynomial" and ck.spec["features"] == ["x"] and ck.spec["target"] == "y"
    assert ck.spec["terms"] == [[1], [2]]
    assert ck.config["model"] == {"kind": "polynomial", "degree": 2, "intercept": True, "interactions": True, "penalty": None}
    assert ck.data["split"] == {"val": 0.2, "test": 0.0} and ck.data["seed"] == 0 and ck.data["n_rows"] == 100
    assert ck.data["source"]["synthetic"]["coefficients"] == [3, 2, 1]
    assert ck.data["source"]["fingerprint"].startswith("sha256:")
    assert ck.extra["metrics"]["val"] == poly_run.metrics["val"]
    # scaling statistics are float64 tensors in the file
    assert ck.tensors["features.shift"].dtype == torch.float64
    assert ck.tensors["y_scale"].dtype == torch.float64


def test_load_model_predicts_and_gives_coefficients(poly_run):
    lm = gradfit.load_model(poly_run.run_dir / "model.safetensors")
    x = np.linspace(-3, 3, 7)
    assert np.array_equal(lm.predict(x), poly_run.model.predict(x).numpy())
    import pandas as pd

    assert np.array_equal(lm.predict(pd.DataFrame({"x": x, "other": 1})), lm.predict(x[:, None]))
    on_disk = json.loads((poly_run.run_dir / "coefficients.json").read_text())
    assert lm.coefficients() == on_disk
    assert lm.coefficients()["coefficients"]["x^2"] == pytest.approx(1.0, abs=0.05)


def test_mlp_predictions_equal_those_of_the_training_process(mlp_run):
    lm = load_model(mlp_run.run_dir)
    X = np.linspace(-4, 4, 301)
    assert lm.kind == "mlp"
    assert np.array_equal(lm.predict(X), mlp_run.model.predict(X).numpy())
    assert lm.coefficients()["parameters"] == 8 * 1 + 8 + 8 * 8 + 8 + 8 + 1


def test_predict_array_with_the_wrong_shape_is_a_data_error(poly_run):
    lm = load_model(poly_run.run_dir)
    with pytest.raises(gradfit.errors.DataError, match="expected 1 feature column"):
        lm.predict(np.zeros((3, 2)))
    import pandas as pd

    with pytest.raises(gradfit.errors.DataError, match="missing feature column 'x'; columns found: 'z'"):
        lm.predict(pd.DataFrame({"z": [1.0]}))


def test_checkpoint_alone_in_an_empty_directory_predicts(poly_run, tmp_path):
    lonely = tmp_path / "empty"
    lonely.mkdir()
    shutil.copy(poly_run.run_dir / "model.safetensors", lonely / "m.safetensors")
    (tmp_path / "in.csv").write_text("x\n-1\n0\n2.5\n")
    proc = run_gradfit("predict", "m.safetensors", "--data", tmp_path / "in.csv", cwd=lonely)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "x,prediction" and len(lines) == 4
    got = np.array([float(row.split(",")[1]) for row in lines[1:]])
    assert np.array_equal(got, poly_run.model.predict(np.array([-1.0, 0.0, 2.5])).numpy())
    assert sorted(p.name for p in lonely.iterdir()) == ["m.safetensors"]


# ---------------------------------------------------------------- refusals


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("kind", ["pkl", "pt"])
def test_a_pickle_payload_is_refused_and_never_runs(cli, tmp_path, kind):
    marker = tmp_path / "pwned"
    bad = tmp_path / f"model.{kind}"
    if kind == "pkl":
        bad.write_bytes(pickle.dumps({"weights": Payload(marker)}))
    else:
        torch.save({"weights": Payload(marker)}, bad)
    assert not marker.exists()
    # The payload is live: unpickling the file does run it.
    if kind == "pkl":
        pickle.loads(bad.read_bytes())
    else:
        torch.load(bad, weights_only=False)
    assert marker.exists()
    marker.unlink()
    reason = "zip archive" if kind == "pt" else "Python pickle"
    (tmp_path / "in.csv").write_text("x,y\n1,2\n")
    proc = run_gradfit("eval", bad)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "cannot be loaded as a gradfit checkpoint" in said(proc.stderr)
    assert reason in said(proc.stderr) and "can run any code" in said(proc.stderr)
    assert not marker.exists()
    for args in (("eval", bad, "--data", tmp_path / "in.csv", "--json"), ("predict", bad, "--data", tmp_path / "in.csv")):
        r = cli(*args)
        assert r.exit_code == 1 and reason in said(r.stderr) and r.stdout == ""
        assert not marker.exists()
    with pytest.raises(CheckpointError, match=reason):
        gradfit.load_model(bad)
    assert not marker.exists()


def test_a_renamed_pickle_is_refused_by_its_content(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="Python pickle"):
        read_checkpoint(tmp_path)


def truncations(good: bytes):
    n = int.from_bytes(good[:8], "little")
    return {
        "5 bytes": (good[:5], "only 5 bytes long"),
        "mid header": (good[: 8 + n // 2], "truncated: its header alone needs"),
        "mid weights": (good[: 8 + n + 10], "truncated:"),
        "last byte": (good[:-1], f"truncated: {len(good) - 1} bytes where its header promises {len(good)}"),
    }


@pytest.mark.parametrize("where", ["5 bytes", "mid header", "mid weights", "last byte"])
def test_a_truncated_checkpoint_is_refused(cli, poly_run, tmp_path, where):
    good = (poly_run.run_dir / "model.safetensors").read_bytes()
    data, expected = truncations(good)[where]
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data)
    r = cli("eval", bad)
    assert r.exit_code == 1
    assert expected in said(r.stderr)
    assert "copied again" in said(r.stderr)
    r = cli("predict", tmp_path, "--data", tmp_path / "whatever.csv")
    assert r.exit_code == 1 and expected in said(r.stderr)


def test_a_truncated_checkpoint_is_refused_by_the_real_cli(poly_run, tmp_path):
    good = (poly_run.run_dir / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(good[: len(good) // 2])
    proc = run_gradfit("eval", bad, "--json")
    assert proc.returncode == 1
    assert "truncated" in said(proc.stderr) and "Traceback" not in said(proc.stderr)
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"hello, I am not a model\n", "it is a text file (it starts with 'hello, I am not a model')"),
        (b"x,y\n1,2\n3,4\n", "it is a text file (it starts with 'x,y')"),
        ('{"weights": [1, 2, 3], "note": "caf\u00e9"}'.encode(), "it is a text file"),
        (b"", "the file is empty (0 bytes)"),
        (bytes(range(256)) * 4, "it is not a safetensors file"),
    ],
)
def test_text_empty_and_binary_files_are_refused(cli, tmp_path, content, expected):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(content)
    for args in (("eval", bad), ("eval", bad, "--json"), ("predict", bad, "--data", bad)):
        r = cli(*args)
        assert r.exit_code == 1
        assert expected in said(r.stderr)
        assert r.stdout == ""


def test_bytes_after_the_tensors_are_refused(poly_run, tmp_path):
    bad = tmp_path / "m.safetensors"
    bad.write_bytes((poly_run.run_dir / "model.safetensors").read_bytes() + b"junk")
    with pytest.raises(CheckpointError, match="4 unexpected bytes after its tensors"):
        read_checkpoint(bad)


def test_damaged_weights_are_caught_by_the_digest(poly_run, tmp_path):
    good = poly_run.run_dir / "model.safetensors"
    bad = tmp_path / "m.safetensors"
    raw = bytearray(good.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the last tensor's bytes
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match their recorded digest"):
        read_checkpoint(bad)


def test_a_newer_format_version_is_refused_saying_so(cli, poly_run, tmp_path):
    bad = rewrite(poly_run.run_dir / "model.safetensors", tmp_path / "m.safetensors",
                  {"format_version": str(FORMAT_VERSION + 1), "gradfit_version": "9.0.0"})
    r = cli("eval", bad)
    assert r.exit_code == 1
    assert f"is a newer checkpoint: format version {FORMAT_VERSION + 1}, written by gradfit 9.0.0" in said(r.stderr)
    assert f"reads format version {FORMAT_VERSION} and older" in said(r.stderr)
    assert "upgrade gradfit" in said(r.stderr)


def test_the_same_format_version_with_new_optional_records_still_loads(poly_run, tmp_path):
    ok = rewrite(poly_run.run_dir / "model.safetensors", tmp_path / "m.safetensors", {"something_new": "{}"})
    assert load_model(ok).predict(np.array([1.0])) == pytest.approx(poly_run.model.predict([1.0]).numpy())


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"format": None}, "is a safetensors file but not a gradfit checkpoint"),
        ({"format_version": "one"}, "format version 'one' is not a number"),
        ({"format_version": "0"}, "unknown checkpoint format version 0"),
        ({"spec": "{not json"}, "its records are damaged or missing"),
        ({"config": None}, "its records are damaged or missing"),
        ({"spec": json.dumps({"kind": "spline", "features": ["x"], "target": "y", "dtype": "float32"})},
         "holds a 'spline' model, which this gradfit cannot rebuild"),
        ({"spec": json.dumps({"kind": "polynomial", "target": "y", "dtype": "float32"})},
         "lacks the feature and target names"),
    ],
)
def test_damaged_or_foreign_records_are_refused(poly_run, tmp_path, changes, expected):
    bad = rewrite(poly_run.run_dir / "model.safetensors", tmp_path / "m.safetensors", changes)
    with pytest.raises(CheckpointError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_model(bad)


def test_weights_that_do_not_fit_the_spec_are_refused(poly_run, tmp_path):
    bad = rewrite(poly_run.run_dir / "model.safetensors", tmp_path / "m.safetensors",
                  {"tensors_sha256": None}, {"head.weight": torch.zeros(5)})
    with pytest.raises(CheckpointError, match="the weights do not match the model it describes"):
        load_model(bad)


def test_a_plain_safetensors_file_is_not_a_gradfit_checkpoint(tmp_path):
    save_file({"w": torch.zeros(3)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="not a gradfit checkpoint"):
        load_model(tmp_path / "m.safetensors")


def test_missing_paths(cli, tmp_path):
    r = cli("eval", tmp_path / "nope")
    assert r.exit_code == 1 and "checkpoint not found" in said(r.stderr)
    r = cli("predict", tmp_path, "--data", tmp_path / "x.csv")
    assert r.exit_code == 1 and "is a directory without a model.safetensors" in said(r.stderr)

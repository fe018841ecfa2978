"""Export a trained model to ONNX or TorchScript: raw feature columns in, predictions in original units out.

The exported graph is the whole model, not just its head: the scaling of the inputs,
the polynomial terms (Legendre or power basis) and their column scaling, the linear
layer, MLP or formula expression, and the target's unscaling. It takes one input per
raw feature column, named as the column, each a float64 vector of shape (n,) (a string
vector for a category column, results/onnx_encoding.py), and returns ``prediction``, float64 (n,): the numbers ``gradfit predict`` gives (the head
computes in the run's dtype inside the graph, as it does in gradfit).

The model is rebuilt from its checkpoint (``results.checkpoint``) and traced with
torch's TorchScript-based ONNX exporter (``dynamo=False``): the model's Python control
flow depends only on its architecture, never on the values of the rows, so a trace is
exact. (torch's dynamo exporter refuses the data-independent ``.tolist()`` of the
feature map's term table.) ``onnx.checker`` checks the file; where onnxruntime is
installed, its predictions on probe rows are compared with gradfit's before the file
is kept. What the graph cannot express yet (a Wilkinson formula's formulaic design;
text columns in TorchScript) is refused with the reason.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gradfit.errors import ExportError
from gradfit.results.checkpoint import LoadedModel, load_model
from gradfit.results.onnx_encoding import input_names, probe_feeds, with_encoding

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
OUTPUT_NAME = "prediction"
OPSET = 19  # (Equal on strings, for categorical columns, is opset 19)
PROBE_ROWS = 257
# The largest relative difference (to the largest |prediction|) accepted between the exported
# graph and gradfit on the probe rows: float64 heads agree to rounding, float32 heads to their own.
CHECK_RTOL = {"float64": 1e-10, "float32": 1e-5}


@dataclass
class Export:
    """What ``export_model`` wrote."""

    path: Path
    format: str
    inputs: list[str]  # the graph's input names: the raw feature columns, in order
    string_inputs: list[str]  # those of them that take strings (category columns); the others take float64
    output: str
    kind: str
    checked_with: Optional[str] = None  # "onnxruntime" when its predictions were compared with gradfit's
    max_rel_diff: Optional[float] = None  # on the probe rows, relative to the largest |prediction|


def refusal(lm: LoadedModel) -> Optional[str]:
    """Why this model cannot be exported as a graph of numeric columns, or None."""
    wilkinson = ((lm.config or {}).get("model") or {}).get("formula") if lm.kind != "formula" else None
    if wilkinson:
        return (f"its design is built by formulaic from the formula {wilkinson!r}, "
                "whose transforms the exported graph does not replay yet")
    unknown = [c for c in encoded_columns(lm) if c.get("kind") not in ("number", "category", "date")]
    if unknown:
        return f"its input column {unknown[0].get('column')!r} is encoded as {unknown[0].get('kind')!r}, unknown to this export"
    return None


def encoded_columns(lm: LoadedModel) -> list:
    """The checkpoint's column encoding (data/encoding.py's JSON): [{column, kind, levels}], [] when all numeric."""
    source = (lm.checkpoint.data or {}).get("source") or {}
    enc = source.get("encoding") if isinstance(source, dict) else None
    cols = list((enc or {}).get("columns") or [])
    return cols if any(c.get("kind") != "number" for c in cols) else []


def _wrapper(model, n_inputs: int):
    """An nn.Module taking each raw column (n,) as its own input; the model's own forward inside."""
    import torch  # (imported here for start-up time)

    class RawColumns(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *cols):
            X = torch.stack([c.to(torch.float64) for c in cols], dim=1)  # (n, d) raw
            return self.model(X)  # (n,) float64, original units

    return RawColumns().eval()


def probe_rows(model, d: int):
    """Rows (PROBE_ROWS, d) float64 spread over the range the model was fitted on, where it records one."""
    import torch  # (imported here for start-up time)

    u = torch.linspace(-1.0, 1.0, PROBE_ROWS, dtype=torch.float64)
    U = torch.stack([u.roll(7 * j) for j in range(d)], dim=1)  # (n, d): the columns not in lockstep
    fm = getattr(model, "features", None)  # a FeatureMap records each input's shift and scale
    if fm is not None:
        return fm.shift + fm.scale * U
    return 1.25 + 0.75 * U  # formula inputs: positive, away from 0 (log, sqrt, 1/x stay finite)


def export_model(run: str | Path | LoadedModel, fmt: str = "onnx", out: str | Path | None = None) -> Export:
    """Write the model of a run directory or checkpoint as ``fmt``; ``out`` defaults to RUN/model.onnx (.pt)."""
    lm = run if isinstance(run, LoadedModel) else load_model(run)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}", hint=f"use --format {' or '.join(FORMATS)}")
    why = refusal(lm)
    if why:
        raise ExportError(f"the {lm.kind} model in {lm.checkpoint.path} cannot be exported: {why}",
                          hint="gradfit predict handles it")
    path = Path(out) if out is not None else lm.checkpoint.path.parent / f"model{SUFFIX[fmt]}"
    if path.is_dir():
        raise ExportError(f"--out {path} is a directory", hint=f"give a file name, e.g. {path / ('model' + SUFFIX[fmt])}")
    cols = encoded_columns(lm)
    if cols and fmt != "onnx":
        raise ExportError(f"the {lm.kind} model in {lm.checkpoint.path} has text or date columns, which a {fmt} "
                          "model of tensors cannot take", hint="use --format onnx (string inputs for categories)")
    names = list(lm.feature_names)
    wrapper = _wrapper(lm.model, len(names))
    X = probe_rows(lm.model, len(names))
    example = tuple(X[:3, j].clone() for j in range(len(names)))
    from gradfit.files import atomic_path  # (imported here for start-up time)

    with atomic_path(path) as tmp:
        if fmt == "onnx":
            _write_onnx(wrapper, example, names, tmp, lm, cols)
            feeds, X = probe_feeds(cols, X) if cols else ({k: X[:, j].numpy().copy() for j, k in enumerate(names)}, X)
            checked, diff = _check_onnx(tmp, feeds, X, lm)
        else:
            _write_torchscript(wrapper, example, tmp, lm)
            checked, diff = None, None
    strings = [c["column"] for c in cols if c.get("kind") == "category"]
    return Export(path, fmt, input_names(cols) if cols else names, strings, OUTPUT_NAME, lm.kind, checked, diff)


def _write_onnx(wrapper, example, names, tmp: Path, lm: LoadedModel, cols: list) -> None:
    import torch  # (imported here for start-up time)

    try:
        with warnings.catch_warnings():  # (the tracer warns of the term table's .tolist(): fixed by the architecture)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, example, str(tmp), dynamo=False, opset_version=OPSET,
                input_names=names, output_names=[OUTPUT_NAME],
                dynamic_axes={k: {0: "rows"} for k in [*names, OUTPUT_NAME]},
            )
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        # (torch.onnx's own errors derive from RuntimeError: an operator with no ONNX form)
        raise ExportError(f"torch's ONNX exporter cannot express the {lm.kind} model in {lm.checkpoint.path}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                          hint="gradfit predict handles it; try --format torchscript") from None
    import onnx  # (imported here for start-up time)

    try:
        if cols:  # the categorical encoding in front (results/onnx_encoding.py)
            onnx.save(with_encoding(onnx.load(str(tmp)), cols), str(tmp))
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX graph of {lm.checkpoint.path} fails onnx.checker: {str(exc)[:300]}") from None


def _check_onnx(tmp: Path, feeds: dict, X, lm: LoadedModel):
    """Compare onnxruntime's predictions on the probe rows with gradfit's, where onnxruntime is installed."""
    try:
        import onnxruntime as ort  # (an optional extra: gradfit[onnx])
    except ImportError:
        return None, None
    import numpy as np  # (imported here for start-up time)

    try:
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run([OUTPUT_NAME], feeds)[0]
    except Exception as exc:  # onnxruntime's own exception types are not importable by name
        raise ExportError(f"onnxruntime cannot run the exported graph of {lm.checkpoint.path}: "
                          f"{type(exc).__name__}: {str(exc)[:300]}",
                          hint="an operator may lack a float64 kernel in onnxruntime; gradfit predict handles it") from None
    ref = lm.model.predict(X).numpy()
    ok = np.isfinite(ref)
    if not ok.any():
        return "onnxruntime", None
    scale = max(float(np.max(np.abs(ref[ok]))), 1e-300)
    same_nan = np.array_equal(np.isfinite(got), ok)
    diff = float(np.max(np.abs(got[ok] - ref[ok]))) / scale
    tol = CHECK_RTOL.get(lm.spec.get("dtype"), 1e-5)
    if not same_nan or not math.isfinite(diff) or diff > tol:
        raise ExportError(f"the exported graph of {lm.checkpoint.path} disagrees with gradfit on probe rows "
                          f"(max relative difference {diff:.3g}, allowed {tol:g})",
                          hint="this is a bug in the export; please report it, with the run's config.yaml")
    return "onnxruntime", diff


def _write_torchscript(wrapper, example, tmp: Path, lm: LoadedModel) -> None:
    import torch  # (imported here for start-up time)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, example, check_trace=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(f"torch.jit.trace cannot trace the {lm.kind} model in {lm.checkpoint.path}: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    traced.save(str(tmp))

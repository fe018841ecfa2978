"""Evaluate and predict with a saved model: what ``gradfit eval`` and ``gradfit predict`` call.

``evaluate`` measures a checkpoint on a data file, or, without one, on the held-out
rows of the data it was trained on, rebuilt from the checkpoint's records (config,
data path and fingerprint or synthetic spec, split fractions, seed). A data file
that changed since training is refused (its held-out rows could not be rebuilt),
with a hint to evaluate on it as a whole with ``data=``. ``predict_file`` adds a
``prediction`` column to a data file's rows. Neither prints.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from gradfit.errors import CheckpointError, ConfigError, DataError
from gradfit.results.checkpoint import LoadedModel, load_model

PREDICTION = "prediction"
HELD_OUT = ("val", "test")
# Recomputed held-out metrics further than this (relative) from the recorded ones get a note.
RECORDED_RTOL = 1e-6

ModelLike = Union[str, Path, LoadedModel]


@dataclass
class Evaluation:
    """Metrics of a saved model on one or more sets of rows, in original units."""

    metrics: dict  # set name (val, test, or data) -> {loss, mse, rmse, mae, r2}
    rows: dict  # set name -> number of rows
    source: str  # the data file, or a description of the synthetic data
    model: LoadedModel
    recorded: dict = field(default_factory=dict)  # the run's own metrics of the same sets (held-out only)
    notes: list = field(default_factory=list)


@dataclass
class Predictions:
    """A data file's rows with a prediction column (or the columns asked for)."""

    frame: object  # pandas DataFrame
    n_rows: int
    out: Optional[Path]
    model: LoadedModel
    notes: list = field(default_factory=list)


def _model(checkpoint: ModelLike) -> LoadedModel:
    return checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint)


def model_loss(lm: LoadedModel):
    """The loss the model was trained with (reported as ``loss``)."""
    from gradfit.models.losses import Loss  # (imported here for start-up time)

    lc = lm.config.get("loss") or {}
    # (huber without a loss.delta: the delta the fit found, recorded in the checkpoint)
    delta = lc.get("delta") if lc.get("delta") is not None else lm.checkpoint.extra.get("loss_delta")
    return Loss(lc.get("kind", "mse"), delta)


def evaluate(checkpoint: ModelLike, data: str | Path | None = None) -> Evaluation:
    """Metrics on ``data`` (key ``data``), or on the held-out rows of the training data (``val``, ``test``)."""
    lm = _model(checkpoint)
    ev = _evaluate_file(lm, Path(data)) if data is not None else _evaluate_held_out(lm)
    if lm.checkpoint.extra.get("in_progress"):
        ev.notes.append(f"this checkpoint was saved while training was in progress (epoch {lm.checkpoint.extra.get('epochs', '?')})")
    return ev


def _evaluate_file(lm: LoadedModel, path: Path) -> Evaluation:
    import numpy as np  # (imported here for start-up time)
    import torch  # (imported here for start-up time)

    from gradfit.data.tables import load_table  # (imported here for start-up time)
    from gradfit.results.metrics import regression_metrics  # (imported here for start-up time)

    dropna = bool((lm.config.get("data") or {}).get("dropna", False))
    frame, X, y, notes = load_table(path, lm.feature_names, lm.target, require_target=True, dropna=dropna,
                                    encoding=lm.encoding, decimal=lm.decimal)
    pred = lm.predict(X)
    w, notes = file_weights(lm, frame, len(y), path, dropna), list(notes)
    if w is None and (lm.config.get("data") or {}).get("weights") is not None:
        notes.append(f"{path} has no weights column {lm.config['data']['weights']!r} (data.weights): the metrics are unweighted")
    elif w is not None:
        notes.append(f"the metrics are weighted means, each row weighted by column {lm.config['data']['weights']!r} (data.weights)")
    m = regression_metrics(torch.from_numpy(np.array(y, dtype=np.float64)), torch.from_numpy(pred), model_loss(lm),
                           None if w is None else torch.from_numpy(w))
    return Evaluation({"data": m}, {"data": int(len(y))}, str(path), lm, {}, notes)


def file_weights(lm: LoadedModel, frame, n_rows: int, path: Path, dropna: bool):
    """The rows' weights of a data file when the model was trained with data.weights and the file has that column."""
    from gradfit.data.columns import is_parquet  # (imported here for start-up time)
    from gradfit.data.encoding import Encoding  # (imported here for start-up time)
    from gradfit.data.weights import table_weights  # (imported here for start-up time)

    dc = lm.config.get("data") or {}
    column = dc.get("weights")
    if column is None or column not in frame.columns:
        return None
    kept = None
    if dropna:  # (the rows load_table kept: those with the model's raw columns and the target all present)
        enc = Encoding.from_json(lm.encoding)
        raw = enc.raw_columns if enc is not None else lm.feature_names
        kept = frame[[*raw, lm.target]].notna().all(axis=1).to_numpy()
    return table_weights(frame, n_rows, column, dc.get("weights_are", "weights"), path, 1 if is_parquet(path) else 2, kept)


def _training_config(lm: LoadedModel, path: Optional[Path]):
    """The checkpoint's config as a Config, its data path replaced by the recorded one."""
    from gradfit.config.loading import config_from_dict  # (imported here for start-up time)

    raw = copy.deepcopy(lm.config)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        raise CheckpointError(f"{lm.checkpoint.path}: the checkpoint holds no data config to rebuild the held-out rows from")
    if path is not None:
        raw["data"]["path"] = str(path)
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise CheckpointError(
            f"{lm.checkpoint.path}: the config recorded in the checkpoint is not valid for this gradfit: {err.message}",
            hint="evaluate on a file with --data FILE, or use the gradfit version that trained it",
        ) from None


def held_out_rows(lm: LoadedModel):
    """Rebuild the training data and its split from the checkpoint's records: (Dataset, Split, source)."""
    import torch  # (imported here for start-up time)

    from gradfit.config.resources import check_memory  # (imported here for start-up time)
    from gradfit.data.split import Split, split_rows  # (imported here for start-up time)
    from gradfit.data.tables import fingerprint, load_dataset  # (imported here for start-up time)
    from gradfit.results.splitfile import recorded_split  # (imported here for start-up time)

    ck = lm.checkpoint
    rec = ck.data or {}
    frac = rec.get("split") or (lm.config.get("data") or {}).get("split") or {}
    val, test = float(frac.get("val", 0.0)), float(frac.get("test", 0.0))
    if val == 0 and test == 0:
        raise DataError(
            f"{ck.path}: the model was trained with no held-out rows (data.split.val and data.split.test were 0), "
            "so there is nothing to evaluate it on without a data file",
            hint="give --data FILE",
        )
    source = rec.get("source") or {}
    path = None
    if "path" in source:
        path = Path(source["path"])
        if not path.is_file():
            raise DataError(
                f"the data this model was trained on is no longer at {path} (the path its checkpoint records)",
                hint="give --data FILE to evaluate on a file (all its rows count)",
            )
        if fingerprint(path) != source.get("fingerprint"):
            raise DataError(
                f"{path} changed since the model was trained on it (its sha256 fingerprint differs from the one "
                "the checkpoint records), so the held-out rows cannot be rebuilt",
                hint=f"restore the original file, or evaluate on the file as it is now with --data {path}",
            )
    elif "synthetic" not in source:
        raise CheckpointError(f"{ck.path}: the checkpoint does not record where its training data came from")
    cfg = _training_config(lm, path)
    # (the records are outside the weights' digest: a crafted synthetic size is refused before it is drawn)
    check_memory(cfg, keys=("data.synthetic.n_samples",), error=CheckpointError,
                 needs=f"rebuilding the training data that {ck.path} records needs",
                 hint="evaluate on a file with --data FILE, or on a machine with more free memory")
    ds = load_dataset(cfg)
    recorded_fp = source.get("fingerprint")
    if path is None and recorded_fp is not None and ds.source.get("fingerprint") != recorded_fp:
        raise DataError(
            "the synthetic data regenerated from the checkpoint's seed differs from the rows the model was "
            f"trained on (written by gradfit {ck.gradfit_version}; a different torch version draws other numbers)",
            hint="evaluate on a file with --data FILE",
        )
    n_rec = rec.get("n_rows")
    if (n_rec is not None and ds.n_rows != n_rec) or ds.feature_names != lm.feature_names or ds.target_name != lm.target:
        raise DataError(
            f"the rebuilt training data ({ds.n_rows} rows, features {ds.feature_names}, target {ds.target_name!r}) "
            f"is not what the model was trained on ({n_rec} rows, features {lm.feature_names}, target {lm.target!r})",
            hint="evaluate on a file with --data FILE",
        )
    seed = int(rec.get("seed", cfg.seed))
    # The run directory's split.csv when it has one (no redrawing: the same rows whatever the torch version).
    split = recorded_split(ck.path.parent, ds) or split_rows(ds.n_rows, val, test, seed)
    # Only the held-out sets: an empty train set is skipped by evaluate_sets.
    held = Split(torch.zeros(0, dtype=torch.long), split.val, split.test)
    where = str(path) if path is not None else _describe_synthetic(source["synthetic"], seed)
    return ds, held, where


def _describe_synthetic(spec: dict, seed: int) -> str:
    return f"synthetic {spec.get('kind', '?')} data ({spec.get('n_samples', '?')} rows, seed {seed})"


def _evaluate_held_out(lm: LoadedModel) -> Evaluation:
    from gradfit.data.sources import MemoryRows  # (imported here for start-up time)
    from gradfit.results.metrics import evaluate_sets  # (imported here for start-up time)

    ds, split, where = held_out_rows(lm)
    # On the device the run used, when this machine has it: a GPU's float32 sums differ from the
    # CPU's in the last bits, which matters for the relative error of a near-perfect fit.
    device = _run_device(lm)
    try:
        lm.model.head.to(device)
        sets = evaluate_sets(lm.model, MemoryRows(ds.X, ds.y, split, ds.w), model_loss(lm))
    finally:
        lm.model.head.to("cpu")
    metrics = {k: sets[k] for k in HELD_OUT if sets.get(k) is not None}
    rows = {k: int(getattr(split, k).numel()) for k in metrics}
    recorded = {k: lm.metrics.get(k) for k in metrics if lm.metrics.get(k)}
    notes = [] if ds.w is None else [f"the metrics are weighted means (data.weights: {ds.source['weights']['column']!r})"]
    for k, m in metrics.items():
        diff = _max_rel_diff(m, recorded.get(k))
        if diff is not None and diff > RECORDED_RTOL:
            notes.append(f"{k} metrics differ from those recorded at training by up to {diff:.2g} (relative)")
    return Evaluation(metrics, rows, where, lm, recorded, notes)


def _run_device(lm: LoadedModel):
    """The device the run trained on (its config's ``device``), or the CPU where that is absent."""
    import torch  # (imported here for start-up time)

    from gradfit.errors import GradfitError  # (imported here for start-up time)
    from gradfit.parallel import resolve_device  # (imported here for start-up time)

    try:
        return resolve_device(str(lm.config.get("device", "cpu")))
    except GradfitError:
        return torch.device("cpu")


def _max_rel_diff(a: dict, b: Optional[dict]) -> Optional[float]:
    if not b:
        return None
    worst = 0.0
    for k, v in a.items():
        w = b.get(k)
        if v is None or w is None:
            continue
        scale = max(abs(v), abs(w))
        if scale > 0 and math.isfinite(scale):
            worst = max(worst, abs(v - w) / scale)
    return worst


# ---------------------------------------------------------------- predict


def predict_file(
    checkpoint: ModelLike,
    data: str | Path,
    out: str | Path | None = None,
    columns: Optional[Sequence[str]] = None,
    force: bool = False,
    interval: Optional[float] = None,
) -> Predictions:
    """Predict every row of ``data``: its columns plus ``prediction`` (or ``columns``), written to ``out`` if given.

    ``out`` is written atomically, as Parquet when it ends in .parquet and as CSV otherwise,
    floats at full precision. It is never the data file or the checkpoint, and (unless ``force``)
    never a path inside a run directory. ``interval`` (e.g. 0.95): add the mean's confidence and the
    observation's prediction intervals (results/inference.py; linear and polynomial MSE runs).
    """
    from gradfit.data.tables import load_table  # (imported here for start-up time)

    lm = _model(checkpoint)
    path = Path(data)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        _check_out(out_path, path, lm, force)
    frame, X, _, _ = load_table(path, lm.feature_names, None, require_target=False, encoding=lm.encoding, decimal=lm.decimal)
    notes = []
    if PREDICTION in frame.columns:
        notes.append(f"{path} already has a {PREDICTION!r} column; the output replaces it with this model's predictions")
    result = frame.copy()
    result[PREDICTION] = lm.predict(X)
    if interval is not None:  # (statsmodels' summary_frame columns, from the run's summary.json)
        from gradfit.results.inference import prediction_intervals  # (imported here for start-up time)

        for name, values in prediction_intervals(lm.checkpoint.path, X, interval).items():
            result[name] = values
        if (lm.config.get("data") or {}).get("weights") is not None:  # (WLS: the new row's noise variance is scale / w)
            notes.append("the obs_ci interval is that of a new row of weight 1, as statsmodels' WLS predicts by default")
    if columns:
        result = result[_select(list(columns), [str(c) for c in result.columns], path)]
    if out_path is not None:
        write_table(result, out_path)
    return Predictions(result, int(len(result)), out_path, lm, notes)


def _check_out(out: Path, data: Path, lm: LoadedModel, force: bool) -> None:
    if out.is_dir():
        raise DataError(f"--out {out} is a directory; give a file name such as {out / 'predictions.csv'}")
    from gradfit.files import check_output  # (imported here for start-up time)

    # (one guard for every writer: files.check_output)
    check_output(out, inputs=((data, "the input data file"), (lm.checkpoint.path, "the checkpoint")),
                 force=force, writes="predictions", error=DataError)


def _select(wanted: list[str], available: list[str], path: Path) -> list[str]:
    """--columns: names (repeatable, or comma-separated) among the input's columns and 'prediction'."""
    names: list[str] = []
    for w in wanted:
        names.extend([w] if w in available else [p.strip() for p in w.split(",") if p.strip()])
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DataError(
            f"--columns: {', '.join(map(repr, unknown))} not among the columns of {path} and {PREDICTION!r}; "
            f"columns available: {', '.join(map(repr, available))}"
        )
    if len(set(names)) != len(names):
        raise DataError(f"--columns lists a column twice: {names}")
    return names


def write_table(frame, out: Path) -> None:
    """CSV (floats written exactly, round-trip) or Parquet by the file's suffix, atomically."""
    from gradfit.results.rundir import atomic_path  # (imported here for start-up time)

    # (an OSError of the writing is a WriteError naming the path and its cause: files.atomic_path)
    with atomic_path(out) as tmp:
        if out.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)

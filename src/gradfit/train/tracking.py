"""Experiment tracking, optional and off by default: MLflow (``output.mlflow``) and TensorBoard (``output.tensorboard``).

A finished run is logged once its run directory is complete (``track_run``, called by
``train.run.finish`` after metrics.json is written): the resolved config as flattened
params (``data.path``, ``model.kind``...), each epoch's ``train_loss``, ``val_loss`` and
``lr`` as a metric history (step = epoch), the final metrics (``val_rmse``, ``test_r2``...),
and every file of the run directory as artifacts. Logging after training (not during it)
means a slow or unreachable tracking server never slows or stops the training itself.

A tracking failure never loses the run: it becomes a warning (metrics.json ``warnings``),
and the run directory stays as it is. The MLflow client is an optional extra
(``pip install gradfit[tracking]``); its default store is a local SQLite file,
``sqlite:///OUTPUT_DIR/mlflow.db`` (``$MLFLOW_TRACKING_URI`` when set), with the
artifacts beside it in ``OUTPUT_DIR/mlartifacts``: nothing to start.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Optional

# Final metrics per set (``loss`` is left out: ``train_loss`` and ``val_loss`` name the per-epoch history).
METRIC_KEYS = ("mse", "rmse", "mae", "r2")
_KEY = re.compile(r"[^\w\-. /]")  # the characters MLflow allows in a param or metric name
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param's value
BATCH = 1000  # MLflow's most metrics per log_batch call (and 100 params)
# An unreachable server fails fast instead of MLflow's default minutes of retries (set only when unset).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def flatten(obj, prefix: str = "") -> dict[str, str]:
    """{'data': {'path': 'a'}} -> {'data.path': 'a'}; lists and nulls as text (every config key appears)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    text = "null" if obj is None else ("{}" if isinstance(obj, dict) else str(obj))
    out[_KEY.sub("_", prefix)] = text[:MAX_PARAM_CHARS]  # (a column name in a key may hold what MLflow refuses)
    return out


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numbers as MLflow metrics: ``train_mse``, ``val_r2``..., ``epochs``, ``converged``, ``seconds``."""
    out = {f"{s}_{k}": float(m[k]) for s, m in metrics.items() if isinstance(m, dict) and "mse" in m
           for k in METRIC_KEYS if isinstance(m.get(k), (int, float))}
    for k in ("epochs", "converged", "seconds"):
        if isinstance(metrics.get(k), (int, float)):
            out[k] = float(metrics[k])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def default_tracking_uri(output_dir: str | Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    d = Path(output_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def _artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment of a local SQLite store keeps its artifacts: beside the database (not ./mlruns)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def log_mlflow(mc, output_dir: str, name: str, run_dir: Path, config: dict, history: list, metrics: dict) -> str:
    """Log one finished run to MLflow; returns its run id. Raises whatever the client raises."""
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from mlflow.entities import Metric, Param, RunTag  # (an optional extra: imported only when tracking)
    from mlflow.tracking import MlflowClient  # (an optional extra: imported only when tracking)

    for logger in ("mlflow", "alembic"):  # (library code never prints: their INFO lines about the database)
        logging.getLogger(logger).setLevel(logging.WARNING)

    uri = mc.tracking_uri or default_tracking_uri(output_dir)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(mc.experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(mc.experiment, _artifact_location(uri))
    run = client.create_run(exp_id, run_name=name, tags={"gradfit.run_dir": str(run_dir)})
    rid = run.info.run_id
    status = "FAILED"
    try:
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i : i + 100])
        now = int(time.time() * 1000)
        t0 = now - int(1000 * (history[-1].seconds if history else 0.0))
        series = []
        for rec in history:
            ts = t0 + int(1000 * rec.seconds)
            for key, v in (("train_loss", rec.train_loss), ("val_loss", rec.val_loss), ("lr", rec.lr)):
                if v is not None and math.isfinite(v):
                    series.append(Metric(key, float(v), ts, int(rec.epoch)))
        series += [Metric(k, v, now, 0) for k, v in final_metrics(metrics).items()]
        for i in range(0, len(series), BATCH):
            client.log_batch(rid, metrics=series[i : i + BATCH])
        tags = [RunTag("gradfit.warnings", "\n".join(metrics.get("warnings") or [])[:MAX_PARAM_CHARS])]
        client.log_batch(rid, tags=tags)
        for f in sorted(run_dir.iterdir()):  # (not the marker of a run in progress, nor a temporary file)
            if f.is_file() and not f.name.startswith("."):
                client.log_artifact(rid, str(f))
            elif f.is_dir() and f.name == "tensorboard":
                client.log_artifacts(rid, str(f), "tensorboard")
        status = "FINISHED"
    finally:
        client.set_terminated(rid, status)
    return rid


def log_tensorboard(run_dir: Path, history: list, metrics: dict) -> Path:
    """Event files in RUN/tensorboard: the epoch losses and lr, the final metrics (step = last epoch)."""
    from torch.utils.tensorboard import SummaryWriter  # (imported here for start-up time)

    d = run_dir / "tensorboard"
    w = SummaryWriter(log_dir=str(d))
    try:
        for rec in history:
            w.add_scalar("train_loss", rec.train_loss, rec.epoch, walltime=None)
            if rec.val_loss is not None:
                w.add_scalar("val_loss", rec.val_loss, rec.epoch)
            w.add_scalar("lr", rec.lr, rec.epoch)
        last = history[-1].epoch if history else 0
        for k, v in final_metrics(metrics).items():
            w.add_scalar(f"final/{k}", v, last)
    finally:
        w.close()
    return d


def track_run(cfg, run_dir: Optional[Path], config: dict, history: list, metrics: dict) -> list[str]:
    """Log a finished run where ``cfg.output`` asks; the warnings of whatever failed (never raises for it)."""
    out = cfg.output
    warnings: list[str] = []
    if run_dir is None:
        return warnings
    # TensorBoard first: its event files are then among the run's artifacts in MLflow.
    if out.tensorboard:
        try:
            log_tensorboard(run_dir, history, metrics)
        except Exception as exc:  # (any failure of an optional logger: the run is kept, with a warning)
            warnings.append(f"TensorBoard event files could not be written ({type(exc).__name__}: {exc}); "
                            f"the run is complete in {run_dir}; pip install tensorboard, or set output.tensorboard: false")
    if out.mlflow is not None:
        try:
            log_mlflow(out.mlflow, out.dir, cfg.name, run_dir, config, history, metrics)
        except Exception as exc:  # (the client's own errors have many types: none may lose the run)
            uri = out.mlflow.tracking_uri or "the default store"
            fix = ("pip install mlflow-skinny (gradfit[tracking])" if isinstance(exc, ImportError)
                   else "check output.mlflow.tracking_uri")
            warnings.append(f"MLflow tracking failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}) "
                            f"with tracking_uri {uri}; the run is complete in {run_dir}; {fix}")
    return warnings


def track_finished(run, config: dict) -> None:
    """``track_run`` for a run whose directory is written; a failure's warning joins metrics.json (rewritten)."""
    from gradfit.results.rundir import write_json  # (imported here for start-up time)

    out = run.config.output
    if run.run_dir is None or (out.mlflow is None and not out.tensorboard):
        return
    warnings = track_run(run.config, run.run_dir, config, run.result.history, run.metrics)
    if warnings:
        run.metrics["warnings"] = [*run.metrics.get("warnings", []), *warnings]
        write_json(run.run_dir / "metrics.json", run.metrics)

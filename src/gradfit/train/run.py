"""Training as one library call: config -> data -> model -> loop -> run directory.

``train`` is what ``gradfit train`` calls; it returns a ``RunResult`` and never prints.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from gradfit import parallel
from gradfit.config.loading import dump_yaml
from gradfit.config.schema import Config
from gradfit.data.columns import read_columns
from gradfit.data.resolve import resolve_config
from gradfit.data.sources import MemoryRows, RowSource
from gradfit.data.split import STREAM_BATCH, STREAM_INIT, STREAM_PLOT, Dataset, Split, generator, row_sets, split_rows
from gradfit.data.tables import load_dataset
from gradfit.data.weights import check_total
from gradfit.data.wilkinson import resolve_wilkinson
from gradfit.errors import Aborted, ConfigError, DataError, signal_name
from gradfit.files import WriteError
from gradfit.models import losses
from gradfit.models.build import build_model
from gradfit.models.regression import DESIGN_CHUNK_ROWS, RegressionModel
from gradfit.optim import plan as optim
from gradfit.optim.steppers import facts
from gradfit.parallel import resolve_device
from gradfit.results import diagnostics, inference, plots
from gradfit.results.checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from gradfit.results.exact import exact_fit
from gradfit.results.metrics import evaluate_sets, predict_rows, target_variance
from gradfit.results.rundir import RUN_FILES, claim_run_dir, write_history, write_json, write_text
from gradfit.results.splitfile import write_split
from gradfit.results.uncertainty import standard_errors
from gradfit.threads import passes_on_one_thread, prefetch
from gradfit.train import resume as rs
from gradfit.train import shards, streamed
from gradfit.train.exact_route import solve_exact, uncertified_warnings
from gradfit.train.loop import Callbacks, EpochRecord, LoopSettings, StartFrom, TrainData, TrainResult, TrainRows, fit
from gradfit.train.prepared import Prepared
from gradfit.train.resources import check_memory
from gradfit.train.starts import choose_start
from gradfit.train.stopping import StopState
from gradfit.train.tracking import track_finished


@dataclass
class RunResult:
    run_dir: Optional[Path]
    metrics: dict
    coefficients: dict
    config: Config
    result: TrainResult
    model: RegressionModel
    notes: list[str] = field(default_factory=list)
    lr_rule: str = ""
    summary: Optional[dict] = None  # summary.json's sums (results/inference.py), for linear/polynomial MSE runs


def resolved_config_dict(cfg: Config) -> dict:
    """The config as written to the run directory: data.path made absolute so the run repeats from anywhere."""
    d = cfg.to_dict()
    p = cfg.resolved_data_path()
    if p is not None:
        d["data"]["path"] = str(p.resolve())
    return d


def data_record(cfg: Config, ds: Dataset, rows: RowSource) -> dict:
    """What the checkpoint keeps about the data: enough to rebuild the held-out sets and check them."""
    return {
        "source": ds.source,
        "features": ds.feature_names,
        "target": ds.target_name,
        "n_rows": rows.n_rows_global,  # distributed/streamed: all rows, not this rank's
        "split": {"val": cfg.data.split.val, "test": cfg.data.split.test},
        "seed": cfg.seed,
        "dropna": cfg.data.dropna,
    }


@passes_on_one_thread()  # (threads.passes_on_one_thread: many chunk-sized ops, which a busy core stalls)
def prepare(cfg: Config, split: Optional[Split] = None) -> Prepared:
    """Read the data, split it, build the model and the training design, resolve the step size.

    ``split``: explicit row indices of each set (cross-validation's folds, train/cv.py)
    instead of the seeded fractions of ``data.split``; in-memory data only."""
    t0 = time.perf_counter()
    check_memory(cfg)  # (before anything is allocated: huge data, designs or models are refused in words)
    device = resolve_device(cfg.device)
    if cfg.model.kind == "formula":
        cfg = resolve_config(cfg)  # target and input columns from the formula, checked against the data
    elif cfg.model.kind == "linear" and cfg.model.formula:
        cfg = resolve_wilkinson(cfg, read_columns(cfg.resolved_data_path(), cfg.data.sep) if cfg.data.path else [])
    dist = parallel.setup(device)  # SINGLE without torchrun
    # Where the rows live, decided here once (Prepared.rows, data/sources.py): streamed from
    # Parquet, each torchrun rank its shard, or all of them in this process's memory.
    if cfg.data.streaming:
        return streamed.prepare(cfg, dist, dist.device or device, t0)
    if dist.enabled and cfg.data.weights is not None:
        raise ConfigError(f"data.weights ({cfg.data.weights!r}) is not supported under torchrun yet (each rank's shard)",
                          hint="train in one process (without torchrun), or remove data.weights")
    if dist.enabled:
        return shards.prepare(cfg, dist, device, t0)
    ds = load_dataset(cfg)
    if split is None:
        split = split_rows(ds.n_rows, cfg.data.split.val, cfg.data.split.test, cfg.seed)
    rows = MemoryRows(ds.X, ds.y, split, ds.w)
    by_columns = _column_major(cfg, device, split)  # (never for formula models)
    init = generator(cfg.seed, STREAM_INIT)
    y_tr = ds.y[split.train]
    if cfg.model.kind != "formula" and split.train.numel() > DESIGN_CHUNK_ROWS:
        # Many rows: no copy of the training rows; the statistics and the design are made
        # chunk by chunk from the rows the split indexes (see bench/README.md, memory).
        model = build_model(cfg, ds.feature_names, ds.target_name, None, y_tr, device, init, summarize=rows.summarizer())
        data = TrainData(model.design(ds.X, rows=split.train, column_major=by_columns), model.scaled_target(y_tr))
    else:
        X_tr = ds.X[split.train]  # (a formula model checks its start on these rows)
        model = build_model(cfg, ds.feature_names, ds.target_name, X_tr, y_tr, device, init, summarize=rows.summarizer())
        data = TrainData(model.design(X_tr, column_major=by_columns), model.scaled_target(y_tr))
    if rows.has_val:
        # (the validation loss of such a run is one pass of the same kind, loss only)
        data.Z_val = model.design(ds.X, rows=split.val, column_major=by_columns)
        data.y_val = model.scaled_target(ds.y[split.val])
    if ds.w is not None:  # (data.weights: each set's row weights, in the design's dtype and place)
        check_total(ds.w[split.train], ds.source.get("path"), cfg.data.weights)
        check_total(ds.w[split.val], ds.source.get("path"), cfg.data.weights, "validation")  # (its loss would be 0/0)
        data.w = ds.w[split.train].to(data.Z.device, data.Z.dtype)
        data.w_val = ds.w[split.val].to(data.Z.device, data.Z.dtype) if rows.has_val else None
    plan = optim.plan(cfg, data.Z)
    loss = losses.from_config(cfg, y_tr)  # (the training target resolves Huber's default delta)
    if diagnostics.gradient_test_applies(cfg, model):
        plan.start_grad = diagnostics.gradient_max(model.head, data.Z, data.y, data.training_loss(loss, float(model.y_scale)))
    return Prepared(cfg, device, ds, split, model, data, loss, plan, time.perf_counter() - t0, rows)


def _column_major(cfg: Config, device: torch.device, split: Split) -> bool:
    """Whether the training design is stored column by column: a linear head trained on mse over
    the whole design on the CPU, whose one-pass gradient reads that layout fastest (models.passes.LinearMSE)."""
    bs = cfg.train.batch_size
    return (
        device.type == "cpu"
        and cfg.model.kind in ("linear", "polynomial")
        and cfg.loss.kind == "mse"
        and (bs is None or bs >= split.train.numel() or facts(cfg.optimizer.kind).whole_design)
    )


def train(
    cfg: Config,
    *,
    out: str | Path | None = None,
    force: bool = False,
    write: bool = True,
    on_epoch: Optional[Callable[[EpochRecord], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    on_start: Optional[Callable[["Prepared"], None]] = None,
    split: Optional[Split] = None,
) -> RunResult:
    """Train the experiment and (with ``write``) write its run directory (``split``: see ``prepare``)."""
    if cfg.loss.kind == "mse" and cfg.model.kind != "mlp":  # (the summary at the end needs scipy.special)
        prefetch("scipy.special")
    starts = None
    if cfg.train.starts > 1:  # formula models: the best of N starts (train/starts.py), then the run from it
        cfg, starts = choose_start(cfg, lambda c: train(c, write=False, split=split))
    prep = prepare(cfg, split)
    prep.starts = starts
    try:
        # Distributed: rank 0 alone writes the run directory (the others agree on its errors).
        claim = prep.dist.agree(lambda: claim_run_dir(cfg.output.dir, cfg.name, out, force) if write and prep.dist.is_main else None)
        run = _train_prepared(prep, claim.path if claim is not None else None, claim, None, None, on_epoch, should_stop, on_start)
        if claim is not None:
            claim.release()
        return run
    finally:
        prep.dist.close()


def resume(
    run_dir: str | Path,
    overrides=(),
    *,
    on_epoch: Optional[Callable[[EpochRecord], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    on_start: Optional[Callable[["Prepared"], None]] = None,
) -> RunResult:
    """Continue the run in ``run_dir`` from its saved training state (``gradfit train --resume``).

    Only ``train.*`` settings may be overridden (e.g. ``train.epochs=5000``). For a
    full-batch run, stopping and resuming gives the same weights as never stopping.
    Under torchrun every rank reads the run directory (a shared file system) and
    continues from the same state; rank 0 alone writes.
    """

    run_dir = Path(run_dir)
    cfg, state, history = rs.load_run(run_dir, overrides)
    prep = prepare(cfg)

    def same_data() -> None:  # rank 0 holds the fingerprint; every rank hears of a change
        if not (run_dir / CHECKPOINT_NAME).is_file():
            return
        was = read_checkpoint(run_dir).data.get("source", {}).get("fingerprint")
        now = prep.ds.source.get("fingerprint")
        if was is not None and now is not None and was != now:
            raise DataError(
                f"the data changed since the run in {run_dir} started ({prep.ds.source.get('path', 'synthetic data')})",
                hint="resuming would continue on other rows; start a new run instead",
            )

    try:
        prep.dist.agree(same_data)
        return _train_prepared(prep, run_dir if prep.dist.is_main else None, None, state, history,
                               on_epoch, should_stop, on_start)
    finally:
        prep.dist.close()


def _train_prepared(prep: Prepared, run_dir, claim, state, history, on_epoch, should_stop, on_start) -> RunResult:
    """The loop and the run directory, for a new run (``claim``: the directory it claimed) or a
    resumed one (``state`` and ``history``)."""
    cfg = prep.cfg
    model, data, loss = prep.model, prep.data, prep.loss
    y_scale = float(model.y_scale)
    records: list[EpochRecord] = list(history or [])
    saved = []  # epochs saved by train.checkpoint_every
    final: dict = {}
    try:
        if on_start is not None:
            on_start(prep)
        if cfg.optimizer.kind == "exact":  # (solved from the Gram matrix, not by the loop)
            result, check, uncertainty = solve_exact(prep)
            note = on_epoch if on_epoch is not None else (lambda rec: None)
            note(result.history[0])
            return finish(prep, result, run_dir, exact_check=check, exact_uncertainty=uncertainty)
        opt = optim.make_optimizer(cfg, model.head.parameters(), prep.plan.lr, prep.device, prep.plan.iters_per_epoch)
        gen = generator(cfg.seed, STREAM_BATCH)
        # The stopping rules' memory (early stopping's best epoch and weights, L-BFGS's gradient
        # record): saved with the training state, so that a resumed run stops where it would have.
        stop_state = (state.stop if state is not None else None) or StopState()
        if state is not None:
            rs.restore(state, model.head, opt, gen)
        if run_dir is not None:
            plots.prepare()  # import matplotlib now (it is needed at the end): an interrupt then saves quickly

        def note_epoch(rec: EpochRecord) -> None:
            records.append(rec)
            if on_epoch is not None:
                on_epoch(rec)

        def save_progress(epoch: int) -> None:
            save_partial_run(prep, run_dir, records, rs.capture(model.head, opt, gen, epoch, cfg.optimizer.kind, stop_state))
            saved.append(epoch)

        def keep_state(epoch: int) -> None:
            final["state"] = rs.capture(model.head, opt, gen, epoch, cfg.optimizer.kind, stop_state)

        kind = cfg.optimizer.kind
        settings = LoopSettings(kind, cfg.train.epochs, cfg.train.batch_size, cfg.train.tol, y_scale ** loss.unit_power,
                                prep.plan.lr, gen, loss.unit_power, cfg.train.early_stopping, cfg.train.checkpoint_every)
        callbacks = Callbacks(note_epoch, prep.dist.wrap_stop(should_stop), save_progress if run_dir is not None else None,
                              keep_state if run_dir is not None else None)
        start = StartFrom(state.epoch if state is not None else 0, history, stop_state)
        # (Levenberg-Marquardt reduces its sums over the ranks itself: no DDP, no gradient hooks)
        head = prep.dist.wrap(model.head) if facts(kind).under_ddp else model.head
        rows = TrainRows(data, prep.rows)
        settings.val_loss_fn = data.validation_loss(loss, y_scale)  # (None: the training loss's function)
        result = fit(head, rows, prep.dist.wrap_loss(data.training_loss(loss, y_scale)), opt, settings, callbacks, start)
        if run_dir is not None and "state" in final:
            # The config and the history first: a training state without them could not be resumed.
            _write_resume_files(prep, run_dir, records)
            rs.save_state(run_dir / rs.RESUME_NAME, final["state"])
        run = finish(prep, result, run_dir)
    except WriteError as err:
        # The disk refused a file: what was written stays (nothing is deleted for a failed write).
        if run_dir is not None:
            _say_what_is_kept(err, run_dir, claim, prep, records)
        raise
    except BaseException as exc:
        # Nothing half-written: a new run that failed before saving anything removes the files it
        # wrote (and its directory, if it made it); one with a periodic checkpoint, or whose training
        # ended and whose state is saved (a second Ctrl-C while the run is written), keeps them, to be resumed.
        if claim is not None and (saved or rs.RESUME_NAME in claim.written()):
            claim.release()
            _keep_resumable(prep, run_dir, records)
        elif claim is not None:
            claim.clean_up()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Aborted) and run_dir is not None:
            raise Aborted(what_is_kept(Path(run_dir), claim), signal_name(exc)) from None
        raise
    return run


def what_is_kept(run_dir: Path, claim) -> str:
    """After an abort: what ``run_dir`` holds now (the words the CLI prints), and how to go on."""
    if not run_dir.is_dir():
        return f"nothing had been saved; {run_dir} was removed (this run had made it)"
    kept = sorted(n for n in RUN_FILES if (run_dir / n).is_file() and (claim is None or n not in claim.before))
    if claim is None or all((run_dir / n).is_file() for n in ("config.yaml", "history.csv", rs.RESUME_NAME)):
        return (f"{run_dir} keeps {', '.join(kept) or 'its saved files'}; continue it with: "
                f"gradfit train --resume {run_dir}")
    if not kept:
        return f"nothing had been saved; this run's files were removed from {run_dir} (the directory was there before)"
    return f"{run_dir} keeps {', '.join(kept)} (not enough to resume); run the training again"


def _write_resume_files(prep: Prepared, run_dir: Path, records: list[EpochRecord], missing_only: bool = False) -> None:
    """config.yaml and history.csv, what ``--resume`` reads besides the training state (``missing_only``:
    those not there yet)."""
    for name, write in (("config.yaml", lambda p: write_text(p, dump_yaml(resolved_config_dict(prep.cfg)))),
                        ("history.csv", lambda p: write_history(p, records))):
        if not (missing_only and (run_dir / name).is_file()):
            write(run_dir / name)


def _keep_resumable(prep: Prepared, run_dir: Path, records: list[EpochRecord]) -> None:
    """With the training state written, write the config and the history too if they are missing
    and the disk allows (then the run resumes); a file that cannot be written is left out."""
    if (run_dir / rs.RESUME_NAME).is_file():
        with contextlib.suppress(WriteError):
            _write_resume_files(prep, run_dir, records, missing_only=True)


def _say_what_is_kept(err: WriteError, run_dir: Path, claim, prep: Prepared, records: list[EpochRecord]) -> None:
    """Add to a write error what the run directory keeps (nothing is deleted), and how to finish the run."""
    if claim is not None and not claim.written():
        claim.clean_up()  # nothing written: the directory goes too, if this run made it
        err.hint = "; ".join(filter(None, [err.hint, "no files were written"]))
        return
    _keep_resumable(prep, run_dir, records)
    resumable = all((run_dir / n).is_file() for n in ("config.yaml", "history.csv", rs.RESUME_NAME))
    if claim is not None and not resumable:  # (neither complete nor resumable: this run's files go, the user's stay)
        claim.clean_up()
        err.hint = "; ".join(filter(None, [err.hint, "the files this run had written were removed (not enough to "
                                                      "resume); once there is space, run the training again"]))
        return
    if claim is not None:
        claim.release()
    kept = sorted(n for n in RUN_FILES if (run_dir / n).is_file())
    then = "run the training again" + (
        f", or train further from the kept state: gradfit train --resume {run_dir} --set train.epochs=N" if resumable else "")
    err.hint = (f"{err.hint}; the run is not complete (no metrics.json): {run_dir} keeps "
                f"{', '.join(kept) if kept else 'no files'}; once the files can be written, {then}")


def save_partial_run(prep: Prepared, run_dir: Path, history: list[EpochRecord], state) -> None:
    """train.checkpoint_every: config, history so far, checkpoint and training state, each atomic.

    The training state goes last: ``--resume`` trusts its epoch and ignores later history
    rows, so a crash between two of these writes still leaves a run that resumes.
    """

    cfg, ds, model = prep.cfg, prep.ds, prep.model
    cfg_dict = resolved_config_dict(cfg)
    write_text(run_dir / "config.yaml", dump_yaml(cfg_dict))
    write_history(run_dir / "history.csv", history)
    save_checkpoint(
        run_dir / CHECKPOINT_NAME,
        model,
        config=cfg_dict,
        data=data_record(cfg, ds, prep.rows),
        extra={"epochs": state.epoch, "in_progress": True},
    )
    rs.save_state(run_dir / rs.RESUME_NAME, state)
    # metrics.json says a run is complete; this one is in progress (again, when resumed).
    (run_dir / "metrics.json").unlink(missing_ok=True)


@passes_on_one_thread()
def finish(prep: Prepared, result: TrainResult, run_dir: Optional[Path], exact_check: Optional[dict] = None,
           exact_uncertainty: Optional[dict] = None) -> RunResult:
    """Metrics, exact check, coefficients, and the files of the run directory.

    ``exact_check``: a penalized fit's optimality test (train/exact_route.py), which replaces the
    least-squares check; ``exact_uncertainty``: its standard errors (poisson: the Fisher information's)."""
    cfg, model, ds, rows, loss = prep.cfg, prep.model, prep.ds, prep.rows, prep.loss
    model.head.eval()
    sets = evaluate_sets(model, rows, loss)
    metrics = {
        **sets,
        "epochs": result.epochs,
        "stop_reason": result.stop_reason,
        "converged": result.converged,  # (the optimality test's verdict, below)
        "warnings": [],
        "seconds": result.seconds,
        "load_seconds": prep.load_seconds,
        "device": str(prep.device),
        "lr": prep.plan.lr,
    }
    if result.best_epoch is not None:
        metrics["best_epoch"] = result.best_epoch
    if cfg.data.weights is not None:  # (each set's metrics are then weighted means: "weighted": true in them)
        metrics["weights"] = {"column": cfg.data.weights, "are": cfg.data.weights_are}
    if getattr(prep, "starts", None) is not None:
        metrics["starts"] = prep.starts
    mse = cfg.loss.kind == "mse"
    fit = exact_fit(model, rows, prep.training_design()) if mse and model.linear_in_parameters and exact_check is None else None
    if exact_check is not None:
        metrics["exact"] = exact_check
    train_mse = sets["train"]["mse"]
    if fit is not None:
        var = target_variance(rows)
        metrics["exact"] = {"loss": fit["loss"], "gap": (train_mse - fit["loss"]) / var if var > 0 else train_mse - fit["loss"]}
    gap = metrics["exact"]["gap"] if fit is not None else None
    grads = None
    if prep.plan.start_grad is not None and fit is None:  # (the relative gradient test: one pass more)
        grads = (prep.plan.start_grad, diagnostics.gradient_max(model.head, prep.data.Z, prep.data.y,
                                                                prep.data.training_loss(loss, float(model.y_scale))))
    converged, warnings = diagnostics.assess(cfg, model, result, rows, fit, gap, getattr(prep.data, "Z", None), grads)
    # (an exact solver's own findings, e.g. the Huber IRLS's; an mae/quantile fit by the loop is not certified)
    warnings += (exact_check.pop("warnings", []) if exact_check is not None else []) + uncertified_warnings(cfg)
    metrics["converged"] = converged
    coefficients = model.coefficients()
    if exact_check is not None and "kkt" in exact_check:
        warnings.append(diagnostics.PENALIZED_SE_WARNING)
    elif exact_uncertainty:
        coefficients.update(exact_uncertainty)
    elif mse and model.has_standard_errors:
        # (a linear model's from the exact check's Gram matrix and the training metrics' residuals)
        coefficients.update(standard_errors(model, rows, fit, train_mse * rows.count("train"), absolute=cfg.data.absolute_sigma))
        if "std_errors" in coefficients:
            coefficients["std_errors_reliable"] = converged
        warnings += diagnostics.standard_error_warning(model, rows.count("train"), converged, "std_errors" in coefficients)
    metrics["warnings"] = list(dict.fromkeys(warnings))  # (in order, each once)
    run = RunResult(run_dir, metrics, coefficients, cfg, result, model, list(ds.notes), prep.plan.lr_rule)
    if inference.summary_supported(cfg, model) is None:  # (every rank: the sums are reduced over the ranks)
        run.summary = inference.summary_sums(model, rows, prep.training_design(), fit["gram"] if fit is not None else None)
    if run_dir is not None:
        write_run(run, prep)
        track_finished(run, resolved_config_dict(cfg))  # (output.mlflow, output.tensorboard: off by default)
    return run


def write_run(run: RunResult, prep: Prepared) -> None:
    """Every file of the run directory, each written atomically."""
    cfg, ds, split, model = prep.cfg, prep.ds, prep.split, prep.model
    d = run.run_dir

    # The figures first: a helper process (plots.start_helper) draws them while the other files are written.
    if run.result.history:
        best = run.metrics.get("best_epoch") if run.metrics["stop_reason"] == "early_stopping" else None
        plots.loss_plot(d / "loss.png", run.result.history, cfg.loss.kind, f"{cfg.name}: {cfg.loss.kind} loss per epoch", best)
    is_train = torch.zeros(ds.n_rows, dtype=torch.bool)
    is_train[split.train] = True
    title = run.coefficients.get("equation") or run.coefficients.get("formula") or f"{cfg.model.kind} model of {ds.target_name}"
    if len(ds.feature_names) == 1:
        predict = lambda x: model.predict(x).numpy()  # noqa: E731
        # A scatter of millions of points says no more than a few thousand and takes seconds to draw.
        # The rows of the smallest and largest x stay, so that the curve spans all the data.
        ends = torch.stack([ds.X[:, 0].argmin(), ds.X[:, 0].argmax()])
        rows = torch.cat([_plot_rows(torch.arange(ds.n_rows), cfg.seed), ends]).unique()
        plots.fit_plot(d / "fit.png", ds.X[rows, 0].numpy(), ds.y[rows].numpy(), is_train[rows].numpy(), predict,
                       ds.feature_names[0], ds.target_name, _short(title), band=inference.confidence_band(run.summary, model))
    else:
        idx = _plot_rows(split.val if split.val.numel() else split.train, cfg.seed)
        plots.parity_plot(d / "fit.png", ds.y[idx].numpy(), predict_rows(model, ds.X, idx).numpy(), ds.target_name,
                          f"{cfg.name}: predicted vs actual, {'validation' if split.val.numel() else 'training'} rows")
    cfg_dict = resolved_config_dict(cfg)
    write_text(d / "config.yaml", dump_yaml(cfg_dict))
    write_history(d / "history.csv", run.result.history)
    write_json(d / "coefficients.json", run.coefficients)
    if run.summary is not None:
        write_json(d / inference.SUMMARY_NAME, run.summary)
    if type(prep.rows) is MemoryRows:  # (one process holding every row: shards and streams have no file-row map)
        write_split(d, row_sets(ds, split))
    save_checkpoint(
        d / CHECKPOINT_NAME,
        model,
        config=cfg_dict,
        data=data_record(cfg, ds, prep.rows),
        extra={"metrics": {k: run.metrics[k] for k in ("train", "val", "test")}, "epochs": run.result.epochs,
               "loss_delta": prep.loss.delta,  # (huber: the delta of the fit, also where loss.delta was left out)
               # the fit's standard errors need the training rows: kept, so the checkpoint alone gives them
               "uncertainty": {k: run.coefficients[k] for k in ("std_errors", "ci95", "residual_sd", "dof", "std_errors_reliable")
                               if k in run.coefficients}},
    )
    plots.wait()  # the figures drawn by a helper process (plots.start_helper) are written
    # metrics.json last: its presence says the run is complete.
    write_json(d / "metrics.json", run.metrics)


# The most points a figure scatters; larger data is drawn from a seeded sample of its rows.
PLOT_POINTS = 5000


def _plot_rows(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """At most PLOT_POINTS of ``rows`` (a seeded sample, in order), all of them when fewer."""
    if rows.numel() <= PLOT_POINTS:
        return rows
    pick = torch.randperm(rows.numel(), generator=generator(seed, STREAM_PLOT))[:PLOT_POINTS].sort().values
    return rows[pick]


def _short(s: str, n: int = 70) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."

"""gradfit train CONFIG"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from gradfit.cli.common import app, ignore_signals, imports_done, interrupted, stderr_console, stdout_console, user_errors

# gradfit train --strict: the exit code of a run that trained and was written but has warnings
# (distinct from 1, a failure, and 2, usage: docs/errors.md)
STRICT_EXIT = 3


def fmt(v, digits: int = 6) -> str:
    """A number with sensible significant digits; '-' for missing."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def metrics_table(metrics: dict):
    """A rich table: one row per set, one column per metric."""
    from rich.table import Table  # (imported here for start-up time)

    from gradfit.results.metrics import METRIC_KEYS  # (imported here for start-up time)

    table = Table(title=None, show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("set")
    for k in METRIC_KEYS:
        table.add_column(k, justify="right")
    for name in ("train", "val", "test"):
        m = metrics.get(name)
        if m:
            table.add_row(name, *(fmt_r2(m[k]) if k == "r2" else fmt(m[k], 5) for k in METRIC_KEYS))
    return table


def fmt_r2(v) -> str:
    """R^2 to 5 significant digits, trailing zeros kept: 0.999999999997 shows as 1.0000, not as a bare 1."""
    return fmt(v) if not isinstance(v, float) else f"{v:#.5g}"


def wrap_equation(eq: str, width: int = 80, max_lines: int = 8) -> list[str]:
    """An equation cut into lines of at most ``width`` between its terms (before ' + ' and ' - ').

    Continuation lines are indented under the first term; past ``max_lines`` the rest is
    counted, not shown (coefficients.json has every term).
    """
    import re  # (imported here for start-up time)

    head, sep, rhs = eq.partition(" = ")
    if not sep:
        return [eq]
    terms = re.split(r" (?=[+-] )", rhs)
    indent = " " * (len(head) + 3 if len(head) + 3 <= width // 2 else 4)
    lines = [f"{head} = {terms[0]}"]
    for i, term in enumerate(terms[1:], start=1):
        if len(lines[-1]) + 1 + len(term) <= width:
            lines[-1] += " " + term
        elif len(lines) == max_lines:
            lines.append(f"{indent}... and {len(terms) - i} more terms (coefficients.json has them all)")
            break
        else:
            lines.append(indent + term)
    return lines


class Progress:
    """A rich progress bar on a terminal; plain lines every so often otherwise; nothing with --quiet."""

    def __init__(self, total: int, quiet: bool):
        self.total = total
        self.quiet = quiet
        self.console = None if quiet else stderr_console()  # rich is not imported for a quiet run
        self.bar = None
        self.task = None
        self.every = max(1, total // 10)

    def __enter__(self):
        if not self.quiet and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn  # (imported here for start-up time)
            from rich.progress import Progress as RP  # (imported here for start-up time)

            self.bar = RP(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, loss="-")
        return self

    def __call__(self, rec) -> None:
        if self.bar is not None:
            text = fmt(rec.train_loss, 4) + ("" if rec.val_loss is None else f"  val {fmt(rec.val_loss, 4)}")
            self.bar.update(self.task, completed=rec.epoch, loss=text)
        elif not self.quiet and (rec.epoch % self.every == 0 or rec.epoch == 1):
            val = "" if rec.val_loss is None else f" val_loss={fmt(rec.val_loss)}"
            self.console.print(f"epoch {rec.epoch}/{self.total} train_loss={fmt(rec.train_loss)}{val}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


class StopOnSignal:
    """SIGINT/SIGTERM during training: the first asks the loop to stop (it saves the run),
    a second aborts at once. Installed only while training runs; callable as ``should_stop``."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.received: Optional[str] = None
        self._old: dict = {}

    def __call__(self) -> bool:
        return self.received is not None

    def install(self, *_args) -> None:
        import signal  # (imported here for start-up time)
        import threading  # (imported here for start-up time)

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        import signal  # (imported here for start-up time)

        if self.received is not None:
            self.restore()
            raise KeyboardInterrupt(signal.Signals(signum).name)  # the second signal: abort now
        self.received = signal.Signals(signum).name
        stderr_console().print(
            f"[yellow]{self.received}:[/] stopping after this epoch and saving the run (again to abort)"
        )

    def restore(self) -> None:
        import signal  # (imported here for start-up time)

        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


@app.command()
@user_errors
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML experiment file.", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the run here instead of OUTPUT_DIR/NAME."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: KEY=VALUE (dotted path).", metavar="KEY=VALUE"),
    force: bool = typer.Option(False, "--force", help="Write into an existing non-empty --out directory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary; only the run directory."),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json plus the run directory as one JSON object."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last saved state (with --set train.* only).",
        metavar="RUN_DIR",
    ),
    strict: bool = typer.Option(
        False, "--strict", help=f"Exit with code {STRICT_EXIT} when the run has any warning (not converged, collinear terms...)."
    ),
) -> None:
    """Train a model from a YAML experiment and write a run directory.

    Ctrl-C (or SIGTERM) stops after the current epoch, saves the run with
    stop_reason "interrupted" and exits with code 130; --resume RUN_DIR continues it.
    """
    from gradfit.errors import Interrupted  # (imported here for start-up time)

    if (config is None) == (resume is None):
        raise typer.BadParameter(
            "give a CONFIG file to start a run, or --resume RUN_DIR to continue one (not both)", param_hint="CONFIG"
        )
    if resume is not None and (out is not None or force):
        raise typer.BadParameter("--resume continues in the run's own directory; drop --out/--force", param_hint="--resume")
    from gradfit.train.distributed import is_follower  # (imported here for start-up time)

    if is_follower():  # under torchrun: ranks other than 0 train in step with rank 0 and print nothing
        return _follower(config, set_, out, force, resume)
    from gradfit.results import plots  # (imported here for start-up time)

    plots.start_helper()  # matplotlib loads on another core while torch loads here (see gradfit.results.plots)
    stop = StopOnSignal()
    try:
        run = _run(config, set_, out, force, resume, quiet or json_out, stop)
    except KeyboardInterrupt as exc:
        from gradfit.errors import Aborted, signal_name  # (imported here for start-up time)

        stop.restore()
        ignore_signals()  # (a further signal while this is said and the process exits: no death by SIGINT)
        if isinstance(exc, Aborted):  # the run itself says what its directory keeps
            raise interrupted(exc) from None
        if stop.received is None:  # before training began (reading the data): nothing was written
            what = "before training started; nothing was written"
        else:
            what = "(a second interrupt); the run directory keeps only what was saved"
        stderr_console().print(f"[bold red]aborted[/] by {signal_name(exc)} {what}")
        raise typer.Exit(130) from None
    finally:
        stop.restore()
        plots.stop_helper()  # a run that failed: no figures to wait for
        from gradfit.data import arrow  # (imported here for start-up time)

        arrow.drop()  # (a read the run never took, e.g. a config refused before its load)
    if json_out:
        from gradfit.results.rundir import to_json  # (imported here for start-up time)

        sys.stdout.write(to_json({**run.metrics, "run_dir": str(run.run_dir)}))
    elif quiet:
        typer.echo(str(run.run_dir))
    else:
        render_summary(stdout_console(), run)
    print_warnings(run.metrics.get("warnings", []))  # (stderr, whatever --quiet/--json: scripts see them too)
    if stop.received is not None and run.metrics["stop_reason"] != "interrupted":
        raise Interrupted(f"{stop.received} arrived after training had ended; the run finished and is saved "
                          f"complete in {run.run_dir}")
    if run.metrics["stop_reason"] == "interrupted":
        raise Interrupted(
            f"interrupted by {stop.received or 'a stop request'} after {run.metrics['epochs']} epochs; "
            f"the run is saved in {run.run_dir}",
            hint=f"continue it with: gradfit train --resume {run.run_dir}",
        )
    if strict and run.metrics.get("warnings"):
        raise typer.Exit(STRICT_EXIT)



def print_warnings(warnings: list) -> None:
    """Each warning of metrics.json as a line on stderr."""
    if warnings:
        from rich.markup import escape  # (imported here for start-up time)

        for w in warnings:
            stderr_console().print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)


def _run(config, set_, out, force, resume, quiet: bool, stop: StopOnSignal):
    """A new run (or ``resume``'s) trained with a progress bar; the Run."""
    if resume is None:
        from gradfit.config.loading import load_config  # (imported here for start-up time)
        from gradfit.data.arrow import prefetch_config  # (imported here for start-up time)

        cfg = load_config(config, set_)
        prefetch_config(cfg)  # (a Parquet file is read on threads while torch is imported)
    from gradfit.train import run as api  # (imported here for start-up time)

    imports_done()
    if resume is not None:
        from gradfit.train.resume import load_run  # (imported here for start-up time)

        total = load_run(resume, set_)[0].train.epochs
        with Progress(total, quiet) as progress:
            return api.resume(resume, set_, on_epoch=progress, should_stop=stop, on_start=stop.install)
    with Progress(cfg.train.epochs, quiet) as progress:
        return api.train(cfg, out=out, force=force, on_epoch=progress, should_stop=stop, on_start=stop.install)


def render_summary(console, run) -> None:
    """The end-of-training summary: how it ended, metrics, the equation, where the files are."""
    from gradfit.optim.steppers import facts  # (torch is loaded by now: the run has trained)

    m = run.metrics
    for note in run.notes:
        stderr_console().print(f"[yellow]note:[/] {note}")
    reason = m["stop_reason"].replace("_", " ")
    console.print(
        f"[bold]{run.config.name}[/]: {run.config.model.kind} model, {run.config.loss.kind} loss, "
        f"{run.config.optimizer.kind}"
        + (f" (lr {fmt(m['lr'], 4)})" if facts(run.config.optimizer.kind).has_lr else "")
        + f" on {m['device']}"
    )
    if m.get("best_epoch") is not None and m["stop_reason"] == "early_stopping":
        reason += f", best epoch {m['best_epoch']}"
    chosen = run.config.auto_chosen()
    if chosen:
        console.print("auto chose: " + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    console.print(f"stopped after {m['epochs']} epochs ({reason}) in {m['seconds']:.2f} s")
    if not m.get("converged", True):
        console.print("[bold yellow]not converged[/] (see the warnings)")
    console.print(metrics_table(m))
    if "kkt" in m.get("exact", {}):  # (a penalized fit: its optimality test)
        x = m["exact"]
        console.print(f"penalized least squares: objective {fmt(x['objective'], 8)}, KKT violation {x['kkt']:.2e}, "
                      f"{x['zeros']} coefficients exactly 0")
    elif "solver" in m.get("exact", {}):  # (quantile: a linear program; poisson: Newton's method)
        x = m["exact"]
        robust = (f", scale {fmt(x['scale'], 6)} ({'MAD, estimated' if x['scale_estimated'] else 'fixed'}), "
                  f"delta {fmt(x['delta'], 6)}") if "delta" in x else ""  # (huber: the IRLS's scale and delta)
        console.print(f"solved exactly ({x['solver']}): {run.config.loss.kind} loss {fmt(x['objective'], 8)}{robust}")
    elif "exact" in m:
        console.print(f"exact least squares: mse {fmt(m['exact']['loss'], 6)}, gap {m['exact']['gap']:.2e}")
    eq = run.coefficients.get("equation")
    if eq:
        from rich.markup import escape  # (imported here for start-up time)

        for line in wrap_equation(eq, max(40, console.width)):
            console.print(f"[bold]{escape(line)}[/]", soft_wrap=True)
    elif run.coefficients.get("model") == "mlp":
        console.print(f"MLP with {run.coefficients['parameters']} parameters")
    elif run.coefficients.get("model") == "formula":
        console.print(f"[bold]{run.coefficients['formula']}[/]", soft_wrap=True)
    if "std_errors" in run.coefficients or run.coefficients.get("model") == "formula":
        table, notes = coefficient_table(run.coefficients)
        console.print(table)
        for line in notes:
            console.print(line, soft_wrap=True)
    short = inference_line(run)
    if short:
        console.print(short, soft_wrap=True)
    console.print(f"run directory: {run.run_dir}", soft_wrap=True)


def inference_line(run) -> str:
    """The summary's short form (results.inference.short_summary), pointing at 'gradfit summary' ('' without one)."""
    from gradfit.results.inference import short_summary  # (imported here for start-up time)

    s = short_summary(getattr(run, "summary", None))
    if s is None:
        return ""
    where = f"gradfit summary {run.run_dir}" if run.run_dir is not None else "gradfit summary RUN"
    if s.get("model") == "formula":
        head = f"nonlinear least squares: AIC {fmt(s['aic'])}, BIC {fmt(s['bic'])}"
    else:
        p = "nan" if s["f_pvalue"] is None else f"{s['f_pvalue']:.3g}"
        head = f"R^2 {fmt(s['r2'])}, adj. R^2 {fmt(s['adj_r2'])}, F {fmt(s['f_stat'])} (p {p})"
    return f"{head}, {s['nobs']:.0f} rows\nthe full table: {where}"


def coefficient_table(c: dict):
    """Each coefficient (or formula parameter) with its standard error and 95% interval, when known,
    and the lines printed under the table, left-aligned (a rich caption is centred)."""
    from rich.markup import escape  # (imported here for start-up time)
    from rich.table import Table  # (imported here for start-up time)

    values = dict(c["parameters"]) if c.get("model") == "formula" else {
        **({"intercept": c["intercept"]} if "intercept" in c else {}), **c["coefficients"]}
    # A fit that did not converge: its standard errors describe a point that is not the optimum (withheld here;
    # coefficients.json keeps them, marked std_errors_reliable: false).
    reliable = c.get("std_errors_reliable", True)
    se, ci = (c.get("std_errors", {}), c.get("ci95", {})) if reliable else ({}, {})
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("coefficient", "value", "std error", "95% interval"):
        table.add_column(col, justify="left" if col == "coefficient" else "right")
    notes = []
    for i, (k, v) in enumerate(values.items()):
        if i == MAX_COEFFICIENT_ROWS:
            notes.append(f"... and {len(values) - i} more coefficients in coefficients.json")
            break
        interval = fmt_interval(*ci[k]) if k in ci else "-"
        table.add_row(escape(k), fmt(v, 10), fmt(se.get(k), 5), interval)  # (a term date[days] is no markup)
    if not reliable:
        notes.append("standard errors and intervals withheld: the fit did not converge (unreliable)")
    if "residual_sd" in c:
        notes.append(f"residual sd {fmt(c['residual_sd'])} on {c['dof']} degrees of freedom")
    return table, notes


def fmt_interval(low, high) -> str:
    """[low, high] to the fewest significant digits (6 to 12) whose last place is no wider than
    the interval, each end rounded outward: what is printed contains the computed interval."""
    import math  # (imported here for start-up time)
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal  # (imported here for start-up time)

    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or not high > low:
        return f"[{fmt(low)}, {fmt(high)}]"
    lead = math.floor(math.log10(max(abs(low), abs(high))))
    for digits in range(6, 13):
        if 10.0 ** (lead - digits + 1) <= high - low:
            break
    step = Decimal(1).scaleb(lead - digits + 1)
    ends = [float(Decimal(repr(v)).quantize(step, rounding)) for v, rounding in ((low, ROUND_FLOOR), (high, ROUND_CEILING))]
    places = digits - lead - 1
    if -4 <= lead < 12:  # fixed point (1.234567e+07 would hide the places that differ)
        lo, hi = (f"{v:.{max(0, places)}f}" for v in ends)
        if digits == 6 and places > 0:  # a wide interval: no trailing zeros (a narrow one keeps them, aligned)
            lo, hi = (t.rstrip("0").rstrip(".") for t in (lo, hi))
    else:
        lo, hi = (f"{v:{'' if digits == 6 else '#'}.{digits}g}" for v in ends)
    return f"[{lo}, {hi}]"


MAX_COEFFICIENT_ROWS = 20  # the summary's coefficient table; coefficients.json has them all


class _QuietStop(StopOnSignal):
    """StopOnSignal for ranks other than 0: rank 0 says what is happening."""

    def _handle(self, signum, frame) -> None:
        import signal  # (imported here for start-up time)

        if self.received is not None:
            self.restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name


def _follower(config, set_, out, force, resume) -> None:
    """A rank other than 0 (gradfit.train.distributed.follow): no output; its outcome as the exit code."""
    from gradfit.train import distributed, run  # noqa: F401 (run: loaded before the collector is back on, see imports_done)

    imports_done()
    stop = _QuietStop()
    try:
        outcome = distributed.follow(config, set_, out=out, force=force, resume=resume, should_stop=stop,
                                     on_start=stop.install)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        stop.restore()
    if outcome == distributed.INTERRUPTED:
        raise typer.Exit(130)
    if outcome == distributed.LEFT_TO_RANK_0:
        raise typer.Exit(0)

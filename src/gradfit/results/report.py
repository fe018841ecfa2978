"""One self-contained HTML report of one or more run directories: what ``gradfit report`` writes.

The report reads only the run directory's files (config.yaml, metrics.json,
coefficients.json and the figures, *.png): no model is rebuilt and nothing is
trained. Everything is inside the one file: the CSS inline, the figures as base64
``data:`` URIs, no script and no link to anything on the network, so it opens the
same way offline, on a phone (viewport meta, a max-width page, tables that scroll
sideways instead of overflowing) and on paper (print CSS: no scroll boxes, no
clipped config, a run per page). Several runs come side by side: one table of the
metrics per set across runs, then one column per run (stacked on a narrow screen).
Every piece of text from the run directory is escaped (``html.escape``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gradfit.errors import ReportError

METRIC_KEYS = ("loss", "mse", "rmse", "mae", "r2")
SETS = ("train", "val", "test")
FIGURES = ("fit.png", "loss.png")  # what train/run.py writes (results/plots.py); any other *.png follows
MAX_FIGURE_BYTES = 20_000_000

CSS = """
:root { color-scheme: light; --ink: #1d2733; --muted: #5b6775; --line: #d8dee6; --band: #f3f6f9; --warn: #8a5300; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: .2rem 0 .3rem; }
h2 { font-size: 1.2rem; margin: 1.2rem 0 .4rem; border-bottom: 2px solid var(--line); padding-bottom: .2rem; }
h3 { font-size: 1rem; margin: 1rem 0 .3rem; }
.meta { color: var(--muted); margin: 0 0 .8rem; overflow-wrap: anywhere; }
.runs { display: grid; gap: 1.2rem; grid-template-columns: repeat(auto-fit, minmax(min(100%, 30rem), 1fr)); }
.run { min-width: 0; border: 1px solid var(--line); border-radius: 6px; padding: .2rem .9rem .9rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; max-width: 100%; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .2rem 0; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: var(--band); }
.warnings { color: var(--warn); padding-left: 1.2rem; overflow-wrap: anywhere; }
.eq { font-family: ui-monospace, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
figure { margin: .6rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .85rem; }
pre { background: var(--band); padding: .6rem; overflow: auto; max-height: 24rem; font-size: .8rem; }
@media print {
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  .runs { display: block; }
  .run { border: none; padding: 0; break-before: page; }
  .scroll, pre { overflow: visible; max-height: none; }
  pre { white-space: pre-wrap; overflow-wrap: anywhere; }
  table, figure { break-inside: avoid; }
  th, td { white-space: normal; }
}
"""


@dataclass
class Run:
    """What the report shows of one run directory."""

    path: Path
    name: str
    config_text: str
    metrics: dict
    coefficients: dict
    figures: list  # [(file name, base64 PNG)]
    summary: Optional[dict] = None  # read_summary's numbers where the run wrote summary.json


@dataclass
class Report:
    """What ``write_report`` wrote."""

    path: Path
    runs: list
    figures: int


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, (int, float)):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)


def e(text) -> str:
    return html.escape(str(text), quote=True)


def read_run(path: str | Path) -> Run:
    """The files of a run directory the report shows; ReportError when it is not one."""
    p = Path(path)
    if not p.is_dir():
        raise ReportError(f"run directory not found: {p}" if not p.exists() else f"{p} is not a directory",
                          hint="give the run directory that 'gradfit train' printed")
    mfile = p / "metrics.json"
    if not mfile.is_file():
        raise ReportError(f"{p} has no metrics.json, so it is not a finished gradfit run directory",
                          hint="give the run directory that 'gradfit train' printed")
    metrics = _read_json(mfile)
    coefs = _read_json(p / "coefficients.json") if (p / "coefficients.json").is_file() else {}
    cfile = p / "config.yaml"
    config_text = cfile.read_text(encoding="utf-8", errors="replace") if cfile.is_file() else ""
    name = _config_name(config_text) or p.name
    pngs = [p / f for f in FIGURES if (p / f).is_file()]
    pngs += sorted(f for f in p.glob("*.png") if f.name not in FIGURES and f.is_file())
    figures = []
    for f in pngs:
        data = f.read_bytes()
        if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) <= MAX_FIGURE_BYTES:
            figures.append((f.name, base64.b64encode(data).decode("ascii")))
    return Run(p, name, config_text, metrics, coefs, figures, _summary(p))


def _summary(p: Path) -> Optional[dict]:
    """The statsmodels-style summary of the run, or None when it has no readable summary.json."""
    if not (p / "summary.json").is_file():
        return None
    from gradfit.results.inference import SummaryError, read_summary  # (imported here for start-up time)

    try:
        return read_summary(p)
    except SummaryError:
        return None


SUMMARY_KEYS = ("nobs", "df_model", "df_resid", "r2", "adj_r2", "f_stat", "f_pvalue", "log_likelihood", "aic", "bic",
                "omnibus", "omnibus_p", "jarque_bera", "jarque_bera_p", "skew", "kurtosis", "durbin_watson", "cond_no")


def summary_html(s: dict) -> str:
    """The summary's coefficient table (estimate, std err, t, p, interval) and its fit statistics."""
    level = f"{100 * (1 - s.get('alpha', 0.05)):g}%"
    rows = [[name, *(_num(c.get(k)) for k in ("coef", "std_err", "t", "p", "ci_low", "ci_high"))]
            for name, c in (s.get("coefficients") or {}).items()]
    out = _table(["term", "coef", "std err", "t", "P>|t|", f"{level} low", f"{level} high"], rows,
                 caption=f"covariance: {s.get('cov_type', 'nonrobust')}")
    out += _table(["statistic", "value"], [[k, _num(s.get(k))] for k in SUMMARY_KEYS if k in s])
    notes = [n for n in (s.get("notes") or []) if isinstance(n, str)]
    return out + ("".join(f'<p class="meta">{e(n)}</p>' for n in notes))


def _read_json(f: Path) -> dict:
    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{f} cannot be read as JSON ({exc})", hint="a damaged run directory: train it again") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{f} is not a JSON object", hint="a damaged run directory: train it again")
    return obj


def _config_name(text: str) -> Optional[str]:
    import yaml  # (imported here for start-up time)

    try:
        cfg = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None
    return str(cfg["name"]) if isinstance(cfg, dict) and cfg.get("name") else None


# ---------------------------------------------------------------- HTML


def _table(head: list, rows: list, caption: str = "") -> str:
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    th = "".join(f"<th scope=\"col\">{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _sets(m: dict) -> list[str]:
    return [s for s in m if isinstance(m.get(s), dict) and "mse" in m[s]]


def metrics_table(run: Run) -> str:
    m = run.metrics
    return _table(["set", *METRIC_KEYS], [[s, *(_num(m[s].get(k)) for k in METRIC_KEYS)] for s in _sets(m)])


def comparison_table(runs: list[Run]) -> str:
    """One row per set and metric, one column per run."""
    sets = [s for s in SETS if any(s in _sets(r.metrics) for r in runs)]
    rows = [[f"{s} {k}", *(_num((r.metrics.get(s) or {}).get(k)) if s in r.metrics else "" for r in runs)]
            for s in sets for k in METRIC_KEYS]
    rows += [[k, *(_num(r.metrics.get(k)) for r in runs)] for k in ("epochs", "stop_reason", "converged", "seconds")]
    return _table(["", *(r.name for r in runs)], rows)


def coefficients_html(c: dict) -> str:
    """The coefficients (intercept first) with standard errors and 95% intervals where recorded."""
    if c.get("model") == "mlp":
        rows = [[i, lay.get("type"), lay.get("in", ""), lay.get("out", ""), lay.get("name", "")]
                for i, lay in enumerate(c.get("layers") or [])]
        return (f"<p>{e(_num(c.get('parameters')))} parameters</p>"
                + _table(["layer", "type", "in", "out", "activation"], rows))
    values = dict(c.get("parameters") or {})  # formula models
    if not values:
        if "intercept" in c:
            values["intercept"] = c["intercept"]
        values.update(c.get("coefficients") or {})
    if not values:
        return "<p>no coefficients recorded</p>"
    se, ci = c.get("std_errors") or {}, c.get("ci95") or {}
    rows = []
    for name, v in values.items():
        lo, hi = (ci.get(name) or ["", ""])[:2]
        rows.append([name, _num(v), _num(se.get(name, "")), _num(lo), _num(hi)])
    out = ""
    if c.get("equation") or c.get("formula"):
        out += f'<p class="eq">{e(c.get("equation") or c.get("formula"))}</p>'
    out += _table(["term", "estimate", "std err", "ci95 low", "ci95 high"], rows)
    if se and c.get("std_errors_reliable") is False:
        out += '<p class="warnings">standard errors marked unreliable (the fit did not converge)</p>'
    notes = [f"{k} {_num(c[k])}" for k in ("residual_sd", "dof") if k in c]
    return out + (f'<p class="meta">{e(", ".join(notes))}</p>' if notes else "")


def run_html(run: Run) -> str:
    m, c = run.metrics, run.coefficients
    what = f"{c.get('model', '?')} model of {c.get('target', '?')}" if c else "model"
    status = ", ".join(f"{k} {_num(m[k])}" for k in ("epochs", "stop_reason", "converged") if k in m)
    parts = [f'<section class="run"><h2>{e(run.name)}</h2>',
             f'<p class="meta">{e(what)} &middot; {e(status)}<br>{e(run.path)}</p>']
    warnings = [w for w in (m.get("warnings") or []) if isinstance(w, str)]
    parts.append("<h3>Warnings</h3>" + ('<ul class="warnings">' + "".join(f"<li>{e(w)}</li>" for w in warnings)
                                        + "</ul>" if warnings else "<p>none</p>"))
    parts.append("<h3>Metrics per set</h3>" + metrics_table(run))
    parts.append("<h3>Coefficients</h3>" + coefficients_html(c))
    if run.summary:
        parts.append("<h3>Summary</h3>" + summary_html(run.summary))
    if run.figures:
        parts.append("<h3>Figures</h3>")
        for fname, b64 in run.figures:
            parts.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{e(run.name)}: {e(fname)}">'
                         f"<figcaption>{e(fname)}</figcaption></figure>")
    parts.append(f"<h3>Config</h3><pre>{e(run.config_text) or 'config.yaml missing'}</pre></section>")
    return "\n".join(parts)


def render(runs: list[Run], generated: Optional[str] = None) -> str:
    """The report of these runs as one HTML document."""
    from gradfit import __version__  # (imported here for start-up time)

    title = "gradfit report: " + ", ".join(r.name for r in runs)
    when = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    compare = f"<h2>Side by side</h2>{comparison_table(runs)}" if len(runs) > 1 else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">\n'
        f"<title>{e(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main><h1>{e(title)}</h1>"
        f'<p class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""} &middot; gradfit {e(__version__)} &middot; {e(when)}</p>\n'
        f'{compare}<div class="runs">\n' + "\n".join(run_html(r) for r in runs) + "\n</div></main></body></html>\n"
    )


def write_report(runs: list, out: str | Path | None = None) -> Report:
    """Write the report of these run directories to ``out`` (default: RUN/report.html for one run, ./report.html)."""
    if not runs:
        raise ReportError("no run directory given", hint="gradfit report RUN [RUN2 ...]")
    read = [read_run(r) for r in runs]
    path = Path(out) if out is not None else (read[0].path / "report.html" if len(read) == 1 else Path("report.html"))
    if path.is_dir():
        raise ReportError(f"--out {path} is a directory", hint=f"give a file name, e.g. {path / 'report.html'}")
    from gradfit.files import write_text  # (imported here for start-up time)

    write_text(path, render(read))
    return Report(path, read, sum(len(r.figures) for r in read))

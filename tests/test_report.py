"""gradfit report: one self-contained, escaped HTML file; rendered by headless Chromium where installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import CONFIGS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from typer.testing import CliRunner

    from gradfit.cli import app

    base = tmp_path_factory.mktemp("report")
    for name, cfg, sets in [("lin", "multi.yaml", ["optimizer.kind=lbfgs"]), ("frm", "misra1a.yaml", [])]:
        args = ["train", str(CONFIGS / cfg), "--out", str(base / name), "-q"]
        for s in sets:
            args += ["--set", s]
        res = CliRunner().invoke(app, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
    return base / "lin", base / "frm"


def test_one_run_self_contained(runs, cli):
    lin = runs[0]
    res = cli("report", lin)
    assert res.exit_code == 0, res.output
    text = (lin / "report.html").read_text(encoding="utf-8")
    assert '<meta name="viewport"' in text and "@media print" in text
    assert "<title>gradfit report: multi</title>" in text
    # No network: every image is a data URI, nothing is fetched (no http(s) src/href, no script).
    assert re.findall(r'src="([^"]{0,22})', text) == ["data:image/png;base64,"] * 2
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script" not in text
    coefs = json.loads((lin / "coefficients.json").read_text())
    for name in ["intercept", *coefs["coefficients"]]:
        assert f"<td>{name}</td>" in text
    lo, hi = coefs["ci95"]["size_m2"]
    assert f"<td>{lo:.6g}</td><td>{hi:.6g}</td>" in text
    m = json.loads((lin / "metrics.json").read_text())
    assert f"<td>{m['test']['rmse']:.6g}</td>" in text
    # The statsmodels-style summary (from summary.json): t, p and the fit statistics, as 'gradfit summary' gives them.
    from gradfit.results.inference import read_summary

    s = read_summary(lin)
    assert "<h3>Summary</h3>" in text and "<th scope=\"col\">P&gt;|t|</th>" in text
    assert f"<td>{s['coefficients']['size_m2']['t']:.6g}</td>" in text
    assert f"<td>adj_r2</td><td>{s['adj_r2']:.6g}</td>" in text


def test_side_by_side_and_escaping(runs, cli, tmp_path):
    lin, frm = runs
    odd = tmp_path / "odd"
    shutil.copytree(lin, odd)
    (odd / "config.yaml").write_text((odd / "config.yaml").read_text().replace("name: multi", 'name: "<b>x</b>&"', 1))
    m = json.loads((odd / "metrics.json").read_text())
    m["warnings"] = ["<script>alert(1)</script>"]
    (odd / "metrics.json").write_text(json.dumps(m))
    res = cli("report", odd, frm, "--out", tmp_path / "two.html")
    assert res.exit_code == 0, res.output
    assert "2 runs (4 figures)" in res.stderr
    text = (tmp_path / "two.html").read_text(encoding="utf-8")
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;x&lt;/b&gt;&amp;" in text and "<b>x</b>" not in text
    assert "Side by side" in text and text.count('<section class="run">') == 2
    assert "y = b1 * (1 - exp(-b2 * x))" in text  # the formula, with its parameters' intervals
    assert "<td>b1</td>" in text and "<td>b2</td>" in text


def test_refusals(cli, tmp_path, runs):
    res = cli("report", tmp_path / "none")
    assert res.exit_code == 1 and "run directory not found" in " ".join(res.stderr.split())
    (tmp_path / "empty").mkdir()
    res = cli("report", tmp_path / "empty")
    assert res.exit_code == 1 and "has no metrics.json" in " ".join(res.stderr.split())
    res = cli("report", runs[0], "--out", tmp_path)
    assert res.exit_code == 1 and "is a directory" in " ".join(res.stderr.split())


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_chromium_renders_it(runs, cli, tmp_path):
    from PIL import Image, ImageStat

    out = tmp_path / "r.html"
    assert cli("report", *runs, "--out", out).exit_code == 0
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<title>gradfit report: multi, misra1a</title>" in dom
    assert dom.count("<table>") >= 5 and dom.count('<img src="data:image/png;base64,') == 4
    for width, name in [(1280, "wide.png"), (390, "phone.png")]:
        shot = tmp_path / name
        subprocess.run([*base, f"--screenshot={shot}", f"--window-size={width},1400", out.as_uri()],
                       capture_output=True, timeout=120)
        img = Image.open(shot).convert("L")
        assert img.size == (width, 1400)
        stat = ImageStat.Stat(img)
        assert stat.stddev[0] > 20  # text, tables and figures, not a blank page
        assert img.getextrema()[0] < 100  # dark text on the page

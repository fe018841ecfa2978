"""The end-of-training summary and progress: 80 columns, significant digits, names, NO_COLOR, --quiet."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from gradfit.cli.train import Progress, fmt_interval, fmt_r2, render_summary, wrap_equation
from gradfit.train.loop import EpochRecord

COLOR_SGR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|4[0-9]|9[0-7])[0-9;]*m")  # colour, not bold or cursor moves


def records(n):
    return [EpochRecord(epoch=i, train_loss=1.0 / i, val_loss=2.0 / i, lr=0.1, seconds=0.01 * i) for i in range(1, n + 1)]


def test_wrap_equation_cuts_between_terms_within_width():
    eq = "price_k = 49.3921 + 2.50258*size_m2 - 1.18364*age_years + 7.99613*rooms - 2.99353*distance_km"
    lines = wrap_equation(eq, 80)
    assert lines == ["price_k = 49.3921 + 2.50258*size_m2 - 1.18364*age_years + 7.99613*rooms",
                     "          - 2.99353*distance_km"]
    assert wrap_equation("y = 3 + 2*x + 1*x^2", 80) == ["y = 3 + 2*x + 1*x^2"]


def test_wrap_equation_counts_what_it_leaves_out():
    eq = "y = 1 + " + " + ".join(f"{i}.5*x{i}" for i in range(1, 301))
    lines = wrap_equation(eq, 80, max_lines=4)
    assert len(lines) == 5 and all(len(line) <= 80 for line in lines)
    shown = sum(line.count("*x") for line in lines[:-1])
    assert lines[-1].strip() == f"... and {300 - shown} more terms (coefficients.json has them all)"


def test_numbers_keep_the_digits_that_matter():
    assert fmt_r2(0.999999999997) == "1.0000" and fmt_r2(0.99832) == "0.99832" and fmt_r2(None) == "-"
    assert fmt_interval(233.044, 244.84) == "[233.044, 244.84]"
    assert fmt_interval(2.99999991, 3.00000000) == "[2.99999991, 3.00000000]"  # not [3, 3]
    # Rounded outward, to a last place no wider than the interval: it contains the computed one
    # ([2.999999, 3.000000] would claim ten times the width and 3 inside).
    assert fmt_interval(2.99999947, 2.99999964) == "[2.9999994, 2.9999997]"
    assert fmt_interval(-5.5, -1.25) == "[-5.5, -1.25]"
    assert fmt_interval(12345678.9, 12345690.1) == "[12345670, 12345700]"
    assert fmt_interval(1.2e-9, 3.4e-9) == "[1.2e-09, 3.4e-09]"
    for lo, hi in [(0.1234567, 0.1234569), (-7.77777, 9.99999), (1e5 + 0.3, 1e5 + 0.9)]:
        a, b = (float(t) for t in fmt_interval(lo, hi).strip("[]").split(", "))
        assert a <= lo < hi <= b


def test_summary_fits_80_columns_and_names_the_features(tmp_path):
    from conftest import CONFIGS
    from gradfit.config.loading import load_config
    from gradfit.train.run import train

    run = train(load_config(CONFIGS / "multi.yaml"), out=tmp_path / "multi")
    buf = io.StringIO()
    render_summary(Console(file=buf, width=80, no_color=True, highlight=False), run)
    lines = buf.getvalue().splitlines()
    # every line but those ending in the run directory's path (printed whole, so it can be copied)
    whole = ("run directory: ", "the full table: gradfit summary ")
    assert max(len(line) for line in lines if not line.startswith(whole)) <= 80
    text = buf.getvalue()
    for name in ("size_m2", "age_years", "rooms", "distance_km"):
        assert f"*{name}" in text
    assert lines[0].startswith("multi: linear model, mse loss, adam")
    assert re.search(r"^val .* 0\.99\d{3}$", text, flags=re.M)  # R^2 to 5 significant digits
    sd = [line for line in lines if line.startswith("residual sd ")]
    assert sd and sd[0] == sd[0].rstrip()  # left-aligned, not a centred caption


def _stderr_progress(monkeypatch, capsys, *, terminal, quiet=False, n=50):
    if terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats the captured stderr as a terminal
    else:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
    with Progress(n, quiet) as progress:
        for rec in records(n):
            progress(rec)
    return capsys.readouterr()


def test_progress_plain_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("TERM", "dumb")
    out = _stderr_progress(monkeypatch, capsys, terminal=False)
    lines = out.err.splitlines()
    assert lines[0] == "epoch 1/50 train_loss=1 val_loss=2"
    assert lines[-1] == "epoch 50/50 train_loss=0.02 val_loss=0.04"
    assert len(lines) == 11 and "\x1b" not in out.err and out.out == ""


def test_progress_nothing_when_quiet(monkeypatch, capsys):
    out = _stderr_progress(monkeypatch, capsys, terminal=True, quiet=True)
    assert out.err == "" and out.out == ""


@pytest.mark.parametrize("no_color", [False, True])
def test_progress_bar_on_a_terminal_respects_no_color(monkeypatch, capsys, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    out = _stderr_progress(monkeypatch, capsys, terminal=True)
    assert "epoch 1/50" not in out.err  # a bar, not plain lines
    assert bool(COLOR_SGR.search(out.err)) is not no_color

"""bench/speed.py runs end to end at a tiny size (no timing is asserted: only that it works)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[1] / "bench" / "speed.py"


def _speed():
    spec = importlib.util.spec_from_file_location("bench_speed", SPEED)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_in_process_sections_report_every_figure(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "speed.json"
    assert _speed().main(["--tiny", "--repeats", "1", "--only", "epoch,linear,mlp", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# gradfit speed benchmark\nmachine: ")
    for name in ("epoch", "linear", "mlp"):
        assert f"## {name}" in text
    doc = json.loads(out.read_text())
    assert [r["section"] for r in doc["results"]] == ["epoch", "linear", "mlp"]
    for r in doc["results"]:
        assert r["ratio"] > 0 and r["command"] and r["gradfit"] and r["references"]
    linear = doc["results"][1]
    assert "exact.gap" in linear["gradfit"] and "(<= 1e-6)" in linear["gradfit"]  # gradfit reached the gap
    assert "within 0.005" in doc["results"][2]["gradfit"] or "NOT within" in doc["results"][2]["gradfit"]


def test_unknown_section_is_a_usage_error():
    out = subprocess.run([sys.executable, str(SPEED), "--only", "nope"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown section" in out.stderr


@pytest.mark.slow
def test_subprocess_sections_run(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SPEED), "--tiny", "--repeats", "1", "--only", "startup,memory", "--json", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [r["section"] for r in doc["results"]] == ["startup", "memory"]
    assert any("gradfit --help" in r and "imports torch: False" in r for r in doc["results"][0]["references"])


def test_linear_pass_benchmark_runs_and_reports_each_way(capsys):
    path = SPEED.parent / "linear_pass.py"
    spec = importlib.util.spec_from_file_location("bench_linear_pass", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 5,000 x 6")]
    assert len(rows) == 2 and all(line.count("x (") >= 2 for line in rows)
    from gradfit.models import passes as fastopt

    if fastopt._fused is not None:
        assert "compiled kernel: built" in out and all("n/a" not in line for line in rows)


def test_whole_run_benchmark_runs_and_prints_the_ratios(capsys):
    """bench/whole_run.py at its tiny size: each process runs and the table has both ratios."""
    pytest.importorskip("sklearn")
    path = SPEED.parent / "whole_run.py"
    spec = importlib.util.spec_from_file_location("bench_whole_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--tiny"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2000x4 |")]
    assert len(rows) == 1 and rows[0].count(" s |") == 4 and len(rows[0].split("|")) == 9


def test_pass_counter_counts_reads_that_do_not_grow_with_the_epochs_on_the_gram_route():
    """bench/passes.py at a small size: the streamed Gram run reads the file as often for 2 epochs as for 5,
    the streamed run on the rows more often; the table has a row per run."""
    out = subprocess.run([sys.executable, str(SPEED.parent / "passes.py"), "--rows", "100000", "--tiny"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.stdout.splitlines() if line.startswith("| streamed")]
    reads = {(r[0], int(r[1])): int(r[2]) for r in rows}
    assert reads[("streamed, Gram route", 2)] == reads[("streamed, Gram route", 5)]
    assert reads[("streamed, on the rows", 5)] > reads[("streamed, on the rows", 2)]

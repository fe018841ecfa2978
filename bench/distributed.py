"""Distributed and streaming training: rows per second on 1 and 2 processes, peak memory.

    python bench/distributed.py                  # 10M rows x 16 float64 features (1.3 GB Parquet)
    python bench/distributed.py --rows 1000000   # a quicker look

Writes the Parquet file once (in --dir, default /tmp/gradfit-bench), then trains a
linear model on it with ``data.streaming: true`` in one process (``gradfit train``) and
in two (``torchrun --nproc-per-node 2 -m gradfit train``), and, for comparison, in memory
on a synthetic set that fits (``--memory-rows``). Each run is a separate process tree;
its peak resident memory is the largest ``ru_maxrss`` among its processes (per process,
not summed). Rows per second = epochs x training rows / metrics.json's ``seconds`` (the
training loop alone: the statistics pass, loading and the final metrics are excluded;
``wall`` is the whole command). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WRAP = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:], stdout=open(sys.argv[1] + '.out', 'w'), stderr=open(sys.argv[1] + '.err', 'w'))
open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024) + ' ' + str(rc))
"""


def make_parquet(path: Path, rows: int, features: int, group: int, seed: int = 0) -> list[float]:
    """y = 1 + X @ coef + 0.1 noise, X standard normal; written in row groups of ``group`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    coef = np.round(rng.normal(size=features) * 2, 2)
    names = [f"x{i + 1}" for i in range(features)]
    schema = pa.schema([(n, pa.float64()) for n in names] + [("y", pa.float64())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema, compression="snappy") as w:
        for start in range(0, rows, group):
            n = min(group, rows - start)
            X = rng.normal(size=(n, features))
            y = 1.0 + X @ coef + 0.1 * rng.normal(size=n)
            w.write_table(pa.table({**{nm: X[:, i] for i, nm in enumerate(names)}, "y": y}, schema=schema), row_group_size=group)
    tmp.rename(path)
    return [1.0, *coef.tolist()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], work: Path, tag: str) -> dict:
    """Run a command tree; its metrics.json (from --json), wall time and peak RSS of its largest process."""
    probe = work / f"{tag}.rss"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WRAP, str(probe), *cmd], check=True, env=env)
    wall = time.perf_counter() - t0
    peak, rc = (int(v) for v in probe.read_text().split())
    if rc != 0:
        raise SystemExit(f"{tag} failed (exit {rc}):\n" + Path(str(probe) + ".err").read_text()[-3000:])
    metrics = json.loads(Path(str(probe) + ".out").read_text())
    return {"metrics": metrics, "wall": wall, "peak_rss": peak}


def gradfit_cmd(nproc: int, cfg: Path, out: Path) -> list[str]:
    base = ["-m", "gradfit", "train", str(cfg), "--out", str(out), "--force", "--json"]
    if nproc == 1:
        return [sys.executable, *base]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *base]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--row-group", type=int, default=500_000)
    ap.add_argument("--batch-size", type=int, default=65_536)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--memory-rows", type=int, default=2_000_000, help="rows of the in-memory comparison (0: skip)")
    ap.add_argument("--memory-epochs", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/gradfit-bench"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import yaml

    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"rows{args.rows}_f{args.features}_g{args.row_group}.parquet"
    truth_file = data.with_suffix(".truth.json")
    if not data.exists():
        t0 = time.perf_counter()
        truth_file.write_text(json.dumps(make_parquet(data, args.rows, args.features, args.row_group)))
        print(f"wrote {data} ({data.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    truth = json.loads(truth_file.read_text())
    results: dict = {"rows": args.rows, "features": args.features, "file_bytes": data.stat().st_size,
                     "row_group": args.row_group, "batch_size": args.batch_size, "cpus": os.cpu_count(), "runs": []}

    stream_cfg = work / "stream.yaml"
    stream_cfg.write_text(yaml.safe_dump({
        "name": "stream", "seed": 0, "device": "cpu", "dtype": "float64",
        "data": {"path": str(data), "streaming": True, "split": {"val": 0.0}},
        "model": {"kind": "linear"}, "optimizer": {"kind": "adam", "lr": 0.01},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "tol": 0.0},
    }))
    runs = [("streaming", n, stream_cfg, args.epochs, args.rows) for n in (1, 2)]
    if args.memory_rows:
        mem_cfg = work / "memory.yaml"
        mem_cfg.write_text(yaml.safe_dump({
            "name": "memory", "seed": 0, "device": "cpu", "dtype": "float64",
            "data": {"synthetic": {"kind": "linear", "n_features": args.features, "n_samples": args.memory_rows,
                                   "noise": 0.1, "bias": 1.0}, "split": {"val": 0.0}},
            "model": {"kind": "linear"}, "optimizer": {"kind": "sgd", "lr": "auto"},
            "train": {"epochs": args.memory_epochs, "tol": 0.0},
        }))
        runs += [("in memory, full batch", n, mem_cfg, args.memory_epochs, args.memory_rows) for n in (1, 2)]
    for kind, nproc, cfg, _epochs, rows in runs:
        tag = f"{kind.split(',')[0].replace(' ', '_')}_{nproc}"
        r = run(gradfit_cmd(nproc, cfg, work / f"run_{tag}"), work, tag)
        m = r["metrics"]
        row = {"kind": kind, "processes": nproc, "rows": rows, "epochs": m["epochs"],
               "train_seconds": m["seconds"], "wall_seconds": r["wall"],
               "rows_per_second": m["epochs"] * rows / m["seconds"], "peak_rss_bytes": r["peak_rss"],
               "train_mse": m["train"]["mse"], "exact_gap": m.get("exact", {}).get("gap")}
        if kind == "streaming":
            c = json.loads((work / f"run_{tag}" / "coefficients.json").read_text())
            got = [c["intercept"], *c["coefficients"].values()]
            row["max_abs_coef_error"] = float(np.max(np.abs(np.array(got) - truth)))
        results["runs"].append(row)
        if not args.json:
            print(f"{kind:24s} {nproc} proc  {row['rows_per_second']:>12,.0f} rows/s  train {m['seconds']:7.1f} s  "
                  f"wall {r['wall']:7.1f} s  peak RSS {r['peak_rss'] / 2**20:7.0f} MiB  mse {m['train']['mse']:.5g}",
                  flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""How many times a run reads its rows: streamed from Parquet, and in memory, with and without the Gram route.

A linear MSE run, full batch, plain sgd, ``epochs`` E in {5, 50}: the streamed run's reads of the file
(every pass of data/stream.py's reader, counted) and its peak memory; the in-memory run's passes over
the training design made by the training itself (the Gram route's statistics and refinement,
models.gram, or one pass an epoch on the rows, models.passes.LinearMSE). Each run is its own process.

    python bench/passes.py                        # 10,000,000 x 16 (a 700 MB file; a few minutes)
    python bench/passes.py --rows 200000 --tiny   # a check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_parquet(path: Path, n: int, d: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    coef = np.round(rng.standard_normal(d), 2)
    with pq.ParquetWriter(path, pa.schema([(f"x{j + 1}", pa.float32()) for j in range(d)] + [("y", pa.float32())])) as w:
        for start in range(0, n, 1 << 20):
            k = min(1 << 20, n - start)
            X = rng.standard_normal((k, d)).astype(np.float32)
            y = (1.5 + X @ coef + 0.1 * rng.standard_normal(k)).astype(np.float32)
            w.write_table(pa.table({**{f"x{j + 1}": X[:, j] for j in range(d)}, "y": y}), row_group_size=1 << 18)


def child(path: str, epochs: int, streamed: bool, gram: bool) -> dict:
    from gradfit.config.loading import config_from_dict
    from gradfit.data import stream as streaming
    from gradfit.models import gram as gram_mod
    from gradfit.models import passes
    from gradfit.optim import steppers
    from gradfit.train import run as api

    counts = {"file_reads": 0, "gram_passes": 0, "row_passes": 0}
    real_slices = streaming.StreamRows._slices

    def slices(self, *a, **k):
        counts["file_reads"] += 1
        return real_slices(self, *a, **k)

    streaming.StreamRows._slices = slices
    real_gram, real_at = gram_mod.RowSums.gram, gram_mod.RowSums.at

    def gram_pass(self, *a, **k):
        counts["gram_passes"] += 1
        return real_gram(self, *a, **k)

    def at_pass(self, *a, **k):
        counts["gram_passes"] += 1
        return real_at(self, *a, **k)

    gram_mod.RowSums.gram, gram_mod.RowSums.at = gram_pass, at_pass
    real_residuals = passes.LinearMSE.residuals

    def residuals(self, *a, **k):
        counts["row_passes"] += 1
        return real_residuals(self, *a, **k)

    passes.LinearMSE.residuals = residuals
    real_kernel = passes.LinearMSE._kernel_pass

    def kernel_pass(self, *a, **k):
        counts["row_passes"] += 1
        return real_kernel(self, *a, **k)

    passes.LinearMSE._kernel_pass = kernel_pass
    if not gram:
        steppers._gram_route = lambda *a, **k: None
    cfg = config_from_dict({
        "name": "p", "seed": 0, "dtype": "float32",
        "data": {"path": path, "target": "y", "streaming": streamed, "split": {"val": 0.1, "test": 0.1}},
        "model": {"kind": "linear"}, "optimizer": {"kind": "sgd", "lr": 0.1}, "train": {"epochs": epochs, "tol": 0.0},
    })
    t = time.perf_counter()
    run = api.train(cfg, write=False)
    counts["seconds"] = time.perf_counter() - t
    counts["epochs"] = run.metrics["epochs"]
    counts["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="epochs 2 and 5 only, streamed and in memory")
    ap.add_argument("--child", nargs=4, metavar=("PATH", "EPOCHS", "STREAMED", "GRAM"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        path, epochs, streamed, gram = args.child
        print(json.dumps(child(path, int(epochs), streamed == "1", gram == "1")))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="gradfit-passes-"))
    data = tmp / f"lin_{args.rows}x{args.features}.parquet"
    make_parquet(data, args.rows, args.features)
    size = data.stat().st_size / 2**20
    print(f"{args.rows:,} x {args.features} float32 Parquet ({size:.0f} MiB); linear, mse, sgd full batch, val 0.1, test 0.1\n")
    print("| run | epochs | file reads | training passes over the rows | peak memory | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    epochs = (2, 5) if args.tiny else (5, 50)
    env = dict(os.environ, MPLBACKEND="Agg")
    for streamed, gram, label in ((True, True, "streamed, Gram route"), (True, False, "streamed, on the rows"),
                                  (False, True, "in memory, Gram route"), (False, False, "in memory, on the rows")):
        if not streamed and args.rows * args.features > 64_000_000 and not args.tiny:
            continue  # (10M x 16 in memory: 1.3 GB of float64 X; the in-memory rows are counted at smaller sizes)
        for e in epochs:
            if not gram and streamed and e > 5 and not args.tiny:
                continue  # (a read per epoch and one more for the validation loss: 50 epochs take long)
            out = subprocess.run([sys.executable, __file__, "--child", str(data), str(e), str(int(streamed)), str(int(gram))],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            c = json.loads(out.stdout.strip().splitlines()[-1])
            # (a stream trained on the rows reads the file for each epoch's passes: the file reads say it)
            passes = c["gram_passes"] if gram else ("-" if streamed else c["row_passes"])
            print(f"| {label} | {c['epochs']} | {c['file_reads'] if streamed else '-'} | {passes} | "
                  f"{c['peak_mib']:.0f} MiB | {c['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

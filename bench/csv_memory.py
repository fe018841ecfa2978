"""Peak memory of loading a large CSV with gradfit's loader (``gradfit.data.load_dataset``).

The contract (issue 7): a 1 GB CSV loads with peak memory at most 3x the size of its
numbers as float64. This script writes such a file (once; it is kept for reruns),
then loads it in a fresh interpreter and reports the peak resident memory that the
load added, against two yardsticks:

- ``numbers``: every numeric value in the file, as float64 (the contract's measure);
- ``used``: only the columns the config uses (target and features), as float64.

The file has 10 numeric columns and one text column; the config uses 8 of the numeric
ones, so reading only the needed columns matters.

    python bench/csv_memory.py                 # 1 GB (about a minute to write the file)
    python bench/csv_memory.py --gb 0.1        # quicker
    python bench/csv_memory.py --json          # one JSON object on stdout

Peak = ru_maxrss after the load minus the resident size just before it (after every
import), so import-time memory is not counted against the loader.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_NUMERIC = 10  # x1..x9 and y
FEATURES = [f"x{i}" for i in range(1, 8)]  # 7 features + the target = 8 used columns


def write_csv(path: Path, gb: float, seed: int = 0) -> int:
    """Write about ``gb`` GB of CSV; return the number of data rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    block_rows = 50_000
    X = rng.normal(size=(block_rows, N_NUMERIC - 1)) * rng.uniform(0.1, 1000, size=N_NUMERIC - 1)
    y = X[:, :7] @ rng.normal(size=7) + 3.0
    lines = []
    for i in range(block_rows):
        nums = ",".join(f"{v:.10g}" for v in X[i])
        lines.append(f"{nums},{y[i]:.12g},row{i % 97}\n")
    block = "".join(lines).encode()
    header = (",".join([f"x{i}" for i in range(1, N_NUMERIC)] + ["y", "note"]) + "\n").encode()
    target = int(gb * 1e9)
    n_blocks = max(1, round((target - len(header)) / len(block)))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        for _ in range(n_blocks):  # the same rows repeated: their values do not matter here
            f.write(block)
    os.replace(tmp, path)
    return n_blocks * block_rows


MEASURE = r"""
import json, resource, sys, time
import gradfit.data, gradfit.config, pandas, numpy, torch  # imports before the baseline
from gradfit.config import config_from_dict
path, features = sys.argv[1], json.loads(sys.argv[2])
cfg = config_from_dict({"name": "bench", "device": "cpu",
    "data": {"path": path, "target": "y", "features": features, "split": {"val": 0.0}},
    "model": {"kind": "linear"}})
page = resource.getpagesize()
rss_before = int(open("/proc/self/statm").read().split()[1]) * page
t0 = time.perf_counter()
ds = gradfit.data.load_dataset(cfg)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"rows": ds.n_rows, "seconds": seconds, "rss_before": rss_before, "peak": peak}))
"""


def measure(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), json.dumps(FEATURES)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the CSV in GB (default 1)")
    ap.add_argument("--path", type=Path, default=None, help="where to keep the CSV (default: the temp dir)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    path = args.path or Path(tempfile.gettempdir()) / f"gradfit_bench_{args.gb:g}gb.csv"
    if not path.exists():
        t0 = time.perf_counter()
        write_csv(path, args.gb)
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    size = path.stat().st_size
    r = measure(path)
    rows = r["rows"]
    added = r["peak"] - r["rss_before"]
    numbers = rows * N_NUMERIC * 8
    used = rows * (len(FEATURES) + 1) * 8
    result = {
        "file_bytes": size,
        "rows": rows,
        "numbers_float64_bytes": numbers,
        "used_float64_bytes": used,
        "peak_added_bytes": added,
        "ratio_to_numbers": added / numbers,
        "ratio_to_used": added / used,
        "load_seconds": r["seconds"],
        "within_contract": added <= 3 * numbers,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mb = 1e6
    print(f"file            {size / mb:10.1f} MB, {rows:,} rows, {N_NUMERIC} numeric columns + 1 text")
    print(f"numbers float64 {numbers / mb:10.1f} MB (all numeric columns)")
    print(f"used float64    {used / mb:10.1f} MB ({len(FEATURES)} features + target)")
    print(f"peak added      {added / mb:10.1f} MB = {result['ratio_to_numbers']:.2f}x numbers, "
          f"{result['ratio_to_used']:.2f}x used columns")
    print(f"load time       {r['seconds']:10.1f} s")
    print("within contract (<= 3x numbers):", "yes" if result["within_contract"] else "NO")


if __name__ == "__main__":
    main()

"""Whole processes side by side: `gradfit train` of a linear config naming only the data and the
model, against the scripts users would write instead, each reading the same float32 Parquet file.

- sklearn float64: pandas reads the file, casts to float64, LinearRegression fits (the accurate peer);
- sklearn float32: the same on the float32 columns as read (fast; R^2 can be off in the 3rd digit);
- numpy lstsq: pandas, float64, ``np.linalg.lstsq`` with a column of ones.

Each command runs as its own process, in rounds that alternate the commands; the figure is the
minimum wall time over the rounds. ``--busy`` runs the same with one competing busy process
(a Python loop) on the machine. Prints one table per condition and the ratios
gradfit / sklearn float64 and gradfit / sklearn float32.

    python bench/whole_run.py                          # 10k x 16, 1M x 16, 1M x 32, 4M x 16; idle and busy
    python bench/whole_run.py --sizes 1000000x32 --rounds 3 --no-busy
    python bench/whole_run.py --tiny                   # proves the script works
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKLEARN = """import sys, numpy as np, pandas as pd
from sklearn.linear_model import LinearRegression
f = pd.read_parquet(sys.argv[1]); y = f.pop("y").to_numpy({cast}); X = f.to_numpy({cast})
m = LinearRegression().fit(X, y); print(m.score(X, y))
"""
LSTSQ = """import sys, numpy as np, pandas as pd
f = pd.read_parquet(sys.argv[1]); y = f.pop("y").to_numpy(np.float64); X = f.to_numpy(np.float64)
A = np.column_stack([np.ones(len(y)), X]); b = np.linalg.lstsq(A, y, rcond=None)[0]; print(b[0])
"""


def make_data(path: Path, n: int, d: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)  # correlated columns, as real ones are
    cols = {}
    coef = np.round(rng.standard_normal(d) * 2, 2)
    y = np.full(n, 1.5)
    for start in range(0, n, 1 << 20):  # in blocks: no full float64 copy of X at 4M rows
        Xb = rng.standard_normal((min(1 << 20, n - start), d)) @ A
        y[start:start + Xb.shape[0]] += Xb @ coef
        for j in range(d):
            cols.setdefault(j, []).append(Xb[:, j].astype(np.float32))
    y += 0.1 * rng.standard_normal(n)
    frame = pd.DataFrame({f"x{j + 1}": np.concatenate(cols[j]) for j in range(d)})
    frame["y"] = y.astype(np.float32)
    frame.to_parquet(path, index=False)


def wall(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr}")
    return seconds


def measure(tmp: Path, n: int, d: int, rounds: int) -> dict:
    data = tmp / f"lin_{n}x{d}.parquet"
    if not data.exists():
        make_data(data, n, d)
    cfg = tmp / f"lin_{n}x{d}.yaml"
    cfg.write_text(f"name: lin\ndata: {{path: {data}, target: y}}\nmodel: {{kind: linear}}\n")
    scripts = {}
    for name, text in (("sklearn float64", SKLEARN.format(cast="np.float64")),
                       ("sklearn float32", SKLEARN.format(cast="")), ("numpy lstsq", LSTSQ)):
        p = tmp / (name.replace(" ", "_") + ".py")
        p.write_text(text)
        scripts[name] = [sys.executable, str(p), str(data)]
    env = dict(os.environ, MPLBACKEND="Agg")
    best: dict[str, float] = {}
    for _ in range(rounds):
        out = Path(tempfile.mkdtemp(prefix=f"run_{n}x{d}_", dir=tmp)) / "run"  # (a fresh --out each time)
        cmds = {"gradfit": [sys.executable, "-m", "gradfit", "train", str(cfg), "--out", str(out), "--quiet"], **scripts}
        for name, cmd in cmds.items():
            best[name] = min(best.get(name, float("inf")), wall(cmd, env))
    return best


def table(title: str, results: dict) -> None:
    print(f"\n{title}\n")
    print("| rows x features | gradfit | sklearn float64 | sklearn float32 | numpy lstsq | gradfit / sk64 | gradfit / sk32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, b in results.items():
        print(f"| {size} | {b['gradfit']:.2f} s | {b['sklearn float64']:.2f} s | {b['sklearn float32']:.2f} s | "
              f"{b['numpy lstsq']:.2f} s | {b['gradfit'] / b['sklearn float64']:.2f} | {b['gradfit'] / b['sklearn float32']:.2f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000x16,1000000x16,1000000x32,4000000x16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-busy", action="store_true", help="skip the runs with a competing busy process")
    ap.add_argument("--tiny", action="store_true", help="one small size, one round (a check that it runs)")
    args = ap.parse_args(argv)
    sizes = ["2000x4"] if args.tiny else args.sizes.split(",")
    rounds = 1 if args.tiny else args.rounds
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        conditions = [("idle", False)] + ([] if args.no_busy or args.tiny else [("one busy core", True)])
        for title, busy in conditions:
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                results = {s: measure(tmp, *map(int, s.split("x")), rounds) for s in sizes}
            finally:
                if hog is not None:
                    hog.kill()
            table(f"whole process, min of {rounds} rounds, {title} ({os.cpu_count()} cores)", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

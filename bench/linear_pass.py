"""The one-pass linear MSE gradient (fastopt.LinearMSE) against one read of the design.

For each shape and dtype, three ways are timed in rounds, each right after a read of the
design (``Z.sum()``), so that all of them see the same machine: the compiled kernel
(``gradfit._fused``, where it was built), torch's matrix-vector products on row chunks
(what runs without the kernel), and, for reference, autograd's forward and backward
(``mse_loss(Z @ w + b, y).backward()``: two reads). Each figure is the median over the
rounds of (time of the pass) / (time of the read just before it).

    python bench/linear_pass.py                      # 1,000,000 x 64 and x 32 float32, x 64 float64
    python bench/linear_pass.py --rows 200000 --cols 16 --dtype float32 --rounds 50
    python bench/linear_pass.py --tiny               # proves the script works (tests)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from gradfit.data import batches


def _passes(n: int, m: int, dtype, rounds: int) -> dict:
    import torch
    import torch.nn.functional as F

    from gradfit.models import passes as fastopt
    from gradfit.models.heads import LinearHead

    g = torch.Generator().manual_seed(0)
    Z = batches.empty_design(n, m, dtype, "cpu", column_major=True)
    for i in range(0, n, 1 << 16):  # filled in blocks: no second full-size copy
        Z[i : i + (1 << 16)] = torch.randn(min(1 << 16, n - i), m, generator=g, dtype=dtype)
    y = (Z @ torch.linspace(-1, 1, m, dtype=dtype)).contiguous()
    y += 0.1 * torch.randn(n, generator=g, dtype=dtype)
    head = LinearHead(m, True, dtype)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(1, -1, m, dtype=dtype))

    def autograd():
        head.zero_grad(set_to_none=True)
        F.mse_loss(head(Z), y).backward()

    ways = {}
    if fastopt.kernel_applies(Z, y):
        ways["kernel"] = fastopt.LinearMSE(head, Z, y, remember=False, kernel=True)
    ways["torch products"] = fastopt.LinearMSE(head, Z, y, remember=False, kernel=False)
    ways["autograd"] = autograd
    ratios: dict = {k: [] for k in ways}
    reads, seconds = [], {k: [] for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            Z.sum()
            t1 = time.perf_counter()
            fn()
            t2 = time.perf_counter()
            reads.append(t1 - t0)
            seconds[name].append(t2 - t1)
            ratios[name].append((t2 - t1) / (t1 - t0))
    return {
        "read_ms": statistics.median(reads) * 1e3,
        "ways": {k: (statistics.median(ratios[k]), statistics.median(seconds[k]) * 1e3) for k in ways},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, help="rows of the design (default: 1,000,000)")
    ap.add_argument("--cols", type=int, help="columns (default: 64 and 32)")
    ap.add_argument("--dtype", choices=["float32", "float64"], help="default: both")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--tiny", action="store_true", help="small sizes, 3 rounds")
    args = ap.parse_args(argv)

    import torch

    from gradfit.models import passes as fastopt

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if args.tiny:
        cases = [(5000, 6, torch.float32), (5000, 6, torch.float64)]
        args.rounds = 3
    elif args.rows or args.cols or args.dtype:
        cases = [(args.rows or 1_000_000, args.cols or 64, dtypes[args.dtype or "float32"])]
    else:
        cases = [(1_000_000, 64, torch.float32), (1_000_000, 32, torch.float32), (1_000_000, 64, torch.float64)]
    try:
        load = "load average %.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        load = "load average n/a"
    print("# one-pass linear MSE gradient against one read of the design")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, compiled kernel: "
          f"{'built' if fastopt._fused is not None else 'not built (no C compiler at install)'}; {load}")
    print("ratio = median over the rounds of (pass time / time of the read just before it)")
    print()
    print("| design | read | kernel | torch products | autograd (2 reads) |")
    print("|---|---:|---:|---:|---:|")
    for n, m, dtype in cases:
        res = _passes(n, m, dtype, args.rounds)
        cells = []
        for name in ("kernel", "torch products", "autograd"):
            if name in res["ways"]:
                ratio, ms = res["ways"][name]
                cells.append(f"{ratio:.2f}x ({ms:.1f} ms)")
            else:
                cells.append("n/a")
        print(f"| {n:,} x {m} {str(dtype).replace('torch.', '')} | {res['read_ms']:.1f} ms | " + " | ".join(cells) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

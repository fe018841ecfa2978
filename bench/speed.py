"""Speed: gradfit beside the tools people would use instead, measured in the same run.

Sections (issue 6), each printing the machine, the command, gradfit's figure, the
references' figures and the ratio against its target:

- ``startup``: ``gradfit train`` on the 200-row quadratic (Adam, 1000 epochs) against a
  plain torch script doing the same loop, run alternately; ``gradfit --help`` alone.
- ``epoch``: a full-batch linear epoch on 1,000,000 x 64 float32 through gradfit's loop,
  against one read of X, in the same process; the naive autograd epoch beside it.
- ``linear``: linear MSE on 1,000,000 x 32 from Parquet: gradfit's training time to
  ``exact.gap <= 1e-6`` against scikit-learn ``LinearRegression`` and ``SGDRegressor``.
- ``mlp``: Friedman #1 (100,000 training rows), (64, 64) ReLU, Adam 1e-3, batch 256,
  10 epochs: gradfit against ``MLPRegressor`` and a plain eager torch loop; held-out R^2.
- ``memory``: peak resident memory of the 1,000,000 x 64 run against the data's size.

    python bench/speed.py                       # everything, full size (a few minutes)
    python bench/speed.py --only startup,mlp    # some sections
    python bench/speed.py --device cuda         # gradfit and the torch references on a GPU
    python bench/speed.py --tiny                # small sizes: proves the script works (tests)
    python bench/speed.py --json out.json       # also write the results as JSON

Timings are medians of ``--repeats`` runs (wall clock, ``time.perf_counter``); on a
shared machine the load average printed with each section says how much to trust them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gradfit.data import batches
from gradfit.optim import first_order

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("startup", "epoch", "linear", "mlp", "memory")
TARGETS = {  # ratio gradfit / reference must be at most this
    "startup": 0.75,
    "epoch": 1.5,
    "linear": 0.5,
    "mlp": 0.5,
    "memory": 2.5,
}


# ---------------------------------------------------------------- helpers


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, device {device}{gpu}"
    )


def load() -> str:
    try:
        return "load average %.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median_time(fn, repeats: int, device: str = "cpu", warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run_wall(cmd: list[str], cwd=None, env=None) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return wall


def run_timed(cmd: list[str], env=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and every process it waited for: user + system)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run_wall(cmd, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def report(name: str, command: str, gradfit: str, refs: list[str], ratio: float, note: str = "") -> dict:
    target = TARGETS[name]
    ok = ratio <= target
    print(f"\n## {name}  ({load()})")
    print(f"command:   {command}")
    print(f"gradfit:   {gradfit}")
    for r in refs:
        print(f"reference: {r}")
    print(f"ratio:     {ratio:.3f} (target <= {target}) {'ok' if ok else 'MISSED'}")
    if note:
        print(f"note:      {note}")
    sys.stdout.flush()
    return {"section": name, "command": command, "gradfit": gradfit, "references": refs, "ratio": ratio,
            "target": target, "ok": ok, "note": note, "load": load()}


def gradfit_train(cfg_dict: dict):
    """Train through the library (what ``gradfit train`` calls), no run directory."""
    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    return train(config_from_dict(cfg_dict), write=False)


# ---------------------------------------------------------------- start-up

PLAIN_SCRIPT = """\
import sys
import torch
from torch import nn
device = sys.argv[1]
torch.manual_seed(0)
x = torch.linspace(-3, 3, 200, device=device).unsqueeze(1)
y = x**2 + 2 * x + 3
feats = torch.cat([x, x**2], dim=1)
model = nn.Linear(2, 1).to(device)
opt = torch.optim.Adam(model.parameters(), lr=0.05)
loss_fn = nn.MSELoss()
for step in range(int(sys.argv[2])):
    opt.zero_grad()
    loss = loss_fn(model(feats), y)
    loss.backward()
    opt.step()
print(model.weight.tolist(), model.bias.tolist(), loss.item())
"""


def section_startup(args) -> dict:
    epochs = 50 if args.tiny else 1000
    repeats = 1 if args.tiny else args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="gradfit-bench-"))
    script = tmp / "plain.py"
    script.write_text(PLAIN_SCRIPT)
    cfg = ROOT / "configs" / "quadratic.yaml"
    gradfit_cmd = [sys.executable, "-m", "gradfit", "train", str(cfg), "--out", str(tmp / "run"), "--force", "-q",
                   "--set", f"train.epochs={epochs}", "--set", "train.tol=0", "--set", f"device={args.device}"]
    plain_cmd = [sys.executable, str(script), args.device, str(epochs)]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    # gradfit's modules from their bytecode cache (src/gradfit/__pycache__, git-ignored), as after any
    # installation; torch's come from site-packages' caches. Where PYTHONDONTWRITEBYTECODE is set, an
    # editable install otherwise compiles gradfit's sources at every start (0.1 to 0.15 s here): the
    # cache is written once here, and the runs without it are timed too (each .pyc is removed again).
    import compileall
    import importlib.util

    sources = sorted((ROOT / "src" / "gradfit").rglob("*.py"))
    fresh = [Path(importlib.util.cache_from_source(str(f))) for f in sources]
    fresh = [c for c in fresh if not c.exists()]
    g, p, u, gc, pc = [], [], [], [], []
    try:
        compileall.compile_dir(str(ROOT / "src" / "gradfit"), quiet=1)
        for _ in range(repeats):  # alternately, so that all see the same machine
            p.append(run_timed(plain_cmd, env=env))
            g.append(run_timed(gradfit_cmd, env=env))
            for c in fresh:
                c.rename(c.with_suffix(".hidden"))
            try:
                u.append(run_timed(gradfit_cmd, env=env))
            finally:
                for c in fresh:
                    c.with_suffix(".hidden").rename(c)
    finally:
        for c in fresh:
            c.unlink(missing_ok=True)
    (p, pc), (g, gc), u = zip(*p), zip(*g), [w for w, _ in u]
    help_cmd = [sys.executable, "-m", "gradfit", "--help"]
    h = [run_wall(help_cmd, env=env) for _ in range(repeats)]
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv=['gradfit','--help']\nfrom gradfit.cli import app\n"
         "try:\n    app(prog_name='gradfit')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"],
        capture_output=True, text=True)
    torch_imported = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else "?"
    gm, pm, hm, um = statistics.median(g), statistics.median(p), statistics.median(h), statistics.median(u)
    return report(
        "startup",
        " ".join(["gradfit"] + gradfit_cmd[3:]),
        f"{gm:.2f} s wall (median of {repeats}: {', '.join(f'{v:.2f}' for v in g)}); "
        f"CPU {statistics.median(gc):.2f} s (its figure-drawing helper included)",
        [(f"plain torch script, same loop ({epochs} Adam steps): {pm:.2f} s "
          f"(runs: {', '.join(f'{v:.2f}' for v in p)}); CPU {statistics.median(pc):.2f} s"),
         f"gradfit without a bytecode cache for its own modules: {um:.2f} s (ratio {um / pm:.3f})",
         f"gradfit --help: {hm:.2f} s, imports torch: {torch_imported} (target < 0.3 s, no torch)"],
        gm / pm,
        note="wall times include interpreter start-up and imports; gradfit also writes the run directory "
        "(checkpoint, plots: drawn by a helper process on the other core while torch loads, see gradfit.results.plots); "
        "with every core busy the helper cannot overlap, and the wall time tends to the CPU time",
    )


# ---------------------------------------------------------------- epoch cost


def _interleaved_epochs(fit_once, Z, epochs: int, device: str):
    """Epoch times of ``fit_once(on_epoch)``, with one read of Z (``Z.sum()``) timed between epochs.

    Reads and epochs alternate in the same process, so both see the same machine (the cores
    are shared): each epoch's time runs from the end of the read before it to its record.
    """
    stamps, reads = [], []

    def on_epoch(rec):
        sync(device)
        t_in = time.perf_counter()
        Z.sum()
        sync(device)
        t_out = time.perf_counter()
        stamps.append((t_in, t_out))
        reads.append(t_out - t_in)

    fit_once(on_epoch)
    epoch_times = [b[0] - a[1] for a, b in zip(stamps, stamps[1:])]
    return epoch_times, reads


def section_epoch(args) -> dict:
    import torch
    import torch.nn.functional as F

    from gradfit.models import passes as fastopt
    from gradfit.models.heads import LinearHead
    from gradfit.train.loop import Callbacks, LoopSettings, TrainData, TrainRows, fit

    n, m = (20_000, 16) if args.tiny else (1_000_000, 64)
    epochs = 3 if args.tiny else 40
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    Zr = torch.randn(n, m, generator=g).to(dev)  # row-major, as a user's tensor would be
    y = (Zr @ torch.linspace(-1, 1, m, device=dev) + 0.1 * torch.randn(n, generator=g).to(dev)).contiguous()
    # The design as gradfit builds it for a full-batch linear run (column by column on the CPU,
    # see fastopt.LinearMSE); the same numbers.
    Z = batches.empty_design(n, m, torch.float32, dev, column_major=dev.type == "cpu")
    Z.copy_(Zr)

    def run(design, k):
        def fit_once(on_epoch):
            head = LinearHead(m, True, torch.float32).to(dev)
            opt = first_order.SGD(head.parameters(), lr=0.1)
            settings = LoopSettings("sgd", k, None, 0.0, 1.0, 0.1, torch.Generator().manual_seed(0))
            fit(head, TrainRows(TrainData(design, y)), F.mse_loss, opt, settings, Callbacks(on_epoch=on_epoch))
        return fit_once

    kernel = fastopt.kernel_applies(Z, y)  # the compiled one-pass kernel (gradfit._fused) takes this design
    ep, reads = _interleaved_epochs(run(Z, epochs), Z, epochs, args.device)
    epoch, read = statistics.median(ep), statistics.median(reads)
    torch_path = None
    if kernel:  # the same epochs through torch's matrix-vector products (what runs where the kernel was not built)
        built, fastopt._fused = fastopt._fused, None
        try:
            ep_t, reads_t = _interleaved_epochs(run(Z, max(3, epochs // 2)), Z, epochs, args.device)
        finally:
            fastopt._fused = built
        torch_path = statistics.median(ep_t) / statistics.median(reads_t)
    ep_row, reads_row = _interleaved_epochs(run(Zr, max(3, epochs // 4)), Zr, epochs, args.device)
    row_ratio = statistics.median(ep_row) / statistics.median(reads_row)
    torch_threads = torch.get_num_threads()

    lin = torch.nn.Linear(m, 1).to(dev)
    topt = torch.optim.SGD(lin.parameters(), lr=0.1)

    def naive():
        topt.zero_grad()
        loss = F.mse_loss(lin(Zr).squeeze(-1), y)
        loss.backward()
        topt.step()
        loss.item()

    naive_t = median_time(naive, max(3, args.repeats * 2), args.device)

    # Mini-batch epochs (4096 rows): gradfit's loop against permutation slicing by hand.
    bs = 4096 if not args.tiny else 1024
    head = LinearHead(m, True, torch.float32).to(dev)
    opt = first_order.SGD(head.parameters(), lr=0.01)
    settings = LoopSettings("sgd", 2 if args.tiny else 4, bs, 0.0, 1.0, 0.01, torch.Generator().manual_seed(0))
    res_mb = fit(head, TrainRows(TrainData(Zr, y)), F.mse_loss, opt, settings)
    mb = statistics.median(r.seconds for r in res_mb.history[:1]) if len(res_mb.history) < 2 else statistics.median(
        b.seconds - a.seconds for a, b in zip(res_mb.history, res_mb.history[1:]))

    def sliced():
        perm = torch.randperm(n, device=dev)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            topt.zero_grad()
            F.mse_loss(lin(Zr[idx]).squeeze(-1), y[idx]).backward()
            topt.step()

    sliced_t = median_time(sliced, 1 if args.tiny else 2, args.device)
    return report(
        "epoch",
        f"in-process: gradfit.train.loop.fit(LinearHead, full batch, sgd) on {n:,} x {m} float32, {epochs} epochs, "
        f"a read of X timed between epochs ({torch_threads} torch threads)",
        f"{epoch * 1e3:.1f} ms per full-batch epoch (median; loss, gradient, step, loss read back; "
        f"range {min(ep) * 1e3:.1f} to {max(ep) * 1e3:.1f})",
        [f"one read of X (X.sum(), between the epochs): {read * 1e3:.1f} ms (range {min(reads) * 1e3:.1f} to "
         f"{max(reads) * 1e3:.1f})",
         f"one-pass gradient: {'compiled kernel (gradfit._fused)' if kernel else 'torch matrix-vector products'}"
         + (f"; the torch products instead: {torch_path:.2f}x a read" if torch_path is not None else ""),
         f"gradfit on a row-major design: {statistics.median(ep_row) * 1e3:.1f} ms ({row_ratio:.2f}x a read)",
         f"naive nn.Linear + MSE + torch.optim.SGD step (autograd): {naive_t * 1e3:.1f} ms ({naive_t / read:.2f}x a read)",
         f"mini-batch epoch, batch {bs}: gradfit {mb * 1e3:.0f} ms, permutation slicing by hand {sliced_t * 1e3:.0f} ms"],
        epoch / read,
        note="ratio = median epoch / median read, both sampled alternately; the design is column-major, as "
        "gradfit builds it for full-batch linear runs",
    )


# ---------------------------------------------------------------- linear least squares


def _linear_data(tmp: Path, n: int, d: int) -> tuple[Path, np.ndarray, np.ndarray]:
    import pandas as pd

    rng = np.random.default_rng(0)
    # Correlated features (a random mixing), as real columns are; float64 in the file.
    A = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    X = rng.standard_normal((n, d)) @ A
    coef = np.round(rng.standard_normal(d) * 2, 2)
    y = 1.5 + X @ coef + 0.1 * rng.standard_normal(n)
    path = tmp / f"linear_{n}x{d}.parquet"
    cols = {f"x{i + 1}": X[:, i] for i in range(d)}
    cols["y"] = y
    pd.DataFrame(cols).to_parquet(path, index=False)
    return path, X, y


def section_linear(args) -> dict:
    from sklearn.linear_model import LinearRegression, SGDRegressor

    n, d = (20_000, 8) if args.tiny else (1_000_000, 32)
    tmp = Path(tempfile.mkdtemp(prefix="gradfit-bench-"))
    path, X, y = _linear_data(tmp, n, d)
    var = float(y.var())

    # scikit-learn on the same rows, read from the same file (reading not timed).
    import pandas as pd

    frame = pd.read_parquet(path)
    Xs, ys = frame[[f"x{i + 1}" for i in range(d)]].to_numpy(), frame["y"].to_numpy()
    lr_times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ref = LinearRegression().fit(Xs, ys)
        lr_times.append(time.perf_counter() - t)
    lr_t = statistics.median(lr_times)
    exact_mse = float(np.mean((ref.predict(Xs) - ys) ** 2))

    sgd = SGDRegressor(random_state=0, tol=None)
    t = time.perf_counter()
    sgd_epochs, sgd_gap = 0, float("inf")
    for _ in range(1, (3 if args.tiny else 30) + 1):
        sgd.partial_fit(Xs, ys)
        sgd_gap = (float(np.mean((sgd.predict(Xs) - ys) ** 2)) - exact_mse) / var
        if sgd_gap <= 1e-6:
            break
    sgd_t = time.perf_counter() - t  # includes its loss checks (a predict per epoch)

    cfg = {
        "name": "bench-linear", "seed": 0, "device": args.device, "dtype": "float32",
        "data": {"path": str(path), "target": "y", "split": {"val": 0.0}},
        "model": {"kind": "linear"}, "loss": {"kind": "mse"},
        "optimizer": {"kind": args.linear_optimizer, "lr": "auto"},
        "train": {"epochs": 200, "tol": 1e-9},
        "output": {"dir": str(tmp)},
    }
    runs = [gradfit_train(cfg) for _ in range(args.repeats)]
    secs = statistics.median(r.metrics["seconds"] for r in runs)
    m = runs[0].metrics
    gap = m["exact"]["gap"]

    def reached(run):  # wall time of the first epoch within 1e-6 of the exact fit (SGDRegressor's rule above)
        ex, v = run.metrics["exact"]["loss"], var
        return next((r.seconds for r in run.result.history if (r.train_loss - ex) / v <= 1e-6), float("nan"))

    reach = statistics.median(reached(r) for r in runs)
    return report(
        "linear",
        f"gradfit.train.run.train: linear, mse, optimizer {args.linear_optimizer} lr auto, float32, {n:,} x {d} from Parquet",
        f"{secs:.2f} s training (metrics.json seconds; load_seconds {m['load_seconds']:.2f}), "
        f"{m['epochs']} epochs, exact.gap {gap:.1e} ({'<=' if gap <= 1e-6 else 'ABOVE'} 1e-6); "
        f"first epoch within 1e-6 at {reach:.2f} s ({reach / lr_t:.2f}x LinearRegression)",
        [f"sklearn LinearRegression.fit (float64): {lr_t:.2f} s",
         f"sklearn SGDRegressor (defaults): {sgd_t:.2f} s for {sgd_epochs} epochs, gap {sgd_gap:.1e} "
         f"({'reached' if sgd_gap <= 1e-6 else 'did not reach'} 1e-6)"],
        secs / lr_t,
        note="the ratio is metrics.json seconds (the whole run, its stopping rule included) over LinearRegression; "
        "gradfit must also beat SGDRegressor to the same gap",
    )


# ---------------------------------------------------------------- MLP


def _plain_torch_mlp(Xtr, ytr, device, epochs, seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    dev = torch.device(device)
    X = torch.tensor((Xtr - Xtr.mean(0)) / Xtr.std(0), dtype=torch.float32, device=dev)
    y = torch.tensor(ytr, dtype=torch.float32, device=dev)
    net = nn.Sequential(nn.Linear(X.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    opt.zero_grad()
    nn.functional.mse_loss(net(X[:2]).squeeze(-1), y[:2]).backward()  # first-use imports, not timed
    opt.zero_grad()
    t = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], device=dev)
        for i in range(0, X.shape[0], 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            nn.functional.mse_loss(net(X[idx]).squeeze(-1), y[idx]).backward()
            opt.step()
    sync(device)
    return time.perf_counter() - t


def section_mlp(args) -> dict:
    import warnings

    from sklearn.datasets import make_friedman1
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    n_train, n_test = (5_000, 2_000) if args.tiny else (100_000, 25_000)
    epochs = 2 if args.tiny else 10
    X, y = make_friedman1(n_samples=n_train + n_test, n_features=10, noise=1.0, random_state=0)
    Xtr, ytr, Xte, yte = X[:n_train], y[:n_train], X[n_train:], y[n_train:]

    def sk_fit():
        sc = StandardScaler().fit(Xtr)
        mlp = MLPRegressor(hidden_layer_sizes=(64, 64), activation="relu", solver="adam", learning_rate_init=1e-3,
                           batch_size=256, max_iter=epochs, shuffle=True, random_state=0, tol=0.0,
                           n_iter_no_change=10**9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            mlp.fit(sc.transform(Xtr), ytr)
            dt = time.perf_counter() - t
        return dt, r2_score(yte, mlp.predict(sc.transform(Xte)))

    sk_default = [sk_fit() for _ in range(args.repeats)]
    sk_t = statistics.median(t for t, _ in sk_default)
    sk_r2 = sk_default[0][1]
    sk_one = None
    try:  # scikit-learn's BLAS on one thread: often faster on a busy 2-core machine; the faster counts
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            sk_one = statistics.median(sk_fit()[0] for _ in range(args.repeats))
    except ImportError:
        pass
    sk_best = min(sk_t, sk_one) if sk_one is not None else sk_t
    plain_t = statistics.median(_plain_torch_mlp(Xtr, ytr, args.device, epochs) for _ in range(args.repeats))

    import pandas as pd

    tmp = Path(tempfile.mkdtemp(prefix="gradfit-bench-"))
    path = tmp / "friedman1_train.parquet"
    frame = pd.DataFrame({f"x{i + 1}": Xtr[:, i] for i in range(10)})
    frame["y"] = ytr
    frame.to_parquet(path, index=False)
    cfg = {
        "name": "bench-mlp", "seed": 0, "device": args.device, "dtype": "float32",
        "data": {"path": str(path), "target": "y", "split": {"val": 0.0}},
        "model": {"kind": "mlp", "hidden": [64, 64], "activation": "relu"},
        "loss": {"kind": "mse"}, "optimizer": {"kind": "adam", "lr": 0.001},
        "train": {"epochs": epochs, "batch_size": 256, "tol": 0.0},
        "output": {"dir": str(tmp)},
    }
    runs = [gradfit_train(cfg) for _ in range(args.repeats)]
    secs = statistics.median(r.metrics["seconds"] for r in runs)
    g_r2 = r2_score(yte, runs[0].model.predict(Xte).numpy())
    return report(
        "mlp",
        f"gradfit.train.run.train: mlp (64, 64) relu, adam 1e-3, batch 256, {epochs} epochs, {n_train:,} Friedman #1 rows",
        f"{secs:.2f} s training (metrics.json seconds), held-out R^2 {g_r2:.4f} "
        f"({'within' if g_r2 >= sk_r2 - 0.005 else 'NOT within'} 0.005 of MLPRegressor's)",
        [f"sklearn MLPRegressor: {sk_t:.2f} s (its BLAS on 1 thread: "
         f"{'n/a' if sk_one is None else f'{sk_one:.2f} s'}), held-out R^2 {sk_r2:.4f}",
         f"plain eager torch loop (torch.optim.Adam, permutation slicing): {plain_t:.2f} s"],
        secs / sk_best,
        note="ratio against the faster of MLPRegressor's two timings; target: gradfit at least 2x faster",
    )


# ---------------------------------------------------------------- memory

MEMORY_PROBE = """\
import json, sys
from gradfit.train.run import train
from gradfit.config import config_from_dict
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * __import__('os').sysconf('SC_PAGE_SIZE')
cfg = config_from_dict(json.loads(sys.argv[1]))
import torch, gradfit.train.loop, gradfit.results.exact, gradfit.results.metrics  # imports before the baseline
base = rss()
run = train(cfg, write=False)
# VmHWM: this process's own peak (ru_maxrss keeps the parent's high-water mark across fork and exec).
peak = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(json.dumps({"base": base, "peak": peak, "seconds": run.metrics["seconds"], "epochs": run.metrics["epochs"]}))
"""


def section_memory(args) -> dict:
    n, d = (20_000, 16) if args.tiny else (1_000_000, 64)
    cfg = {
        "name": "bench-memory", "seed": 0, "device": args.device, "dtype": "float32",
        "data": {"synthetic": {"kind": "linear", "n_features": d, "n_samples": n, "noise": 0.1},
                 "split": {"val": 0.2}},
        "model": {"kind": "linear"}, "loss": {"kind": "mse"}, "optimizer": {"kind": "sgd", "lr": "auto"},
        "train": {"epochs": 5, "tol": 0.0},
        "output": {"dir": tempfile.mkdtemp(prefix="gradfit-bench-")},
    }
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    added = r["peak"] - r["base"]
    data64 = n * (d + 1) * 8  # the rows as gradfit holds them (float64), as in a float64 Parquet/CSV
    data32 = n * (d + 1) * 4
    mib = 2**20
    return report(
        "memory",
        f"gradfit.train.run.train (subprocess): synthetic linear {n:,} x {d}, val 0.2, float32 run, sgd, 5 epochs",
        f"peak RSS {r['peak'] / mib:.0f} MiB, of which {added / mib:.0f} MiB above the process after its imports",
        [f"data: {data64 / mib:.0f} MiB as float64 values (as loaded), {data32 / mib:.0f} MiB as float32",
         f"added / float32 data: {added / data32:.2f}x"],
        added / data64,
        note="ratio = memory the run added / the data's float64 size (gradfit keeps the rows in float64 "
        "for its exact checks and reporting, and trains on a float32 design)",
    )


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (gradfit and the torch references)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per timing (median)")
    ap.add_argument("--tiny", action="store_true", help="small sizes, to check that the script works")
    ap.add_argument("--linear-optimizer", default="lbfgs", choices=["lbfgs", "sgd", "adam"])
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error(f"--device {args.device}: CUDA is not available here")
    print(f"# gradfit speed benchmark\nmachine: {machine(args.device)}\n{load()}")
    results = []
    for name in SECTIONS:
        if name in only:
            results.append(globals()[f"section_{name}"](args))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(args.device), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GEM fit time and peak memory against N: does the cost grow linearly, is memory bounded?

Data: the synthetic cone of benchmarks/clustering.py (24 Zipf clusters, d = 384, float32), generated
once at the largest N and saved; each N fits its first N rows. Every fit runs in a fresh process (so
its peak RSS is its own), with K = 64, the default balance, a fixed number of MM iterations (tol = 0)
and the default memory budget (512 MiB for the (N, K) work matrices: the resident path up to
N = 524,288 at K = 64, the streamed path beyond). The largest N is also fitted with the resident
path forced (a 4 GiB budget) for comparison.

Columns: N, path, MM iterations, seconds per iteration (median), microseconds per document and
iteration (flat if the growth is linear), the initialization (k-means++ seeding, first M- and
E-step), the whole fit, peak RSS of the process, the input's size (N x d float32) and the fit's own
memory: peak RSS minus the input minus the process before the data was loaded (Python + torch). The
reading under the table gives the log-log slope of seconds per iteration against N.

Usage:  python benchmarks/gem_scaling.py [--sizes 10000,30000,100000,300000,1000000] [--iters 8]
                                         [--write docs/scaling.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

D, K, THREADS = 384, 64, 2


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_rows(path: str, n: int) -> np.ndarray:
    """The first n rows of a saved (N, d) float32 array, read into fresh memory (a memory map would
    add the file's pages to the process's RSS)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
        return np.fromfile(f, dtype=np.float32, count=n * shape[1]).reshape(n, shape[1])


def child(path: str, n: int, iters: int, budget: int) -> dict:
    """Fit GEM on the first n rows of the saved data; returns the measurements (run in a fresh process)."""
    import torch

    from gem_assets.lib.teacher.gem import GEM

    torch.set_num_threads(THREADS)
    base_mb = peak_rss_mb()   # interpreter + torch, before the data
    X = read_rows(path, n)                                             # (n, d) float32, the only copy
    t0 = time.perf_counter()
    model = GEM(K, max_iter=iters, tol=0.0, random_state=0, memory_budget=budget).fit(X)
    fit_s = time.perf_counter() - t0
    per_iter = [h["seconds"] for h in model.history_[1:]]
    return {"n": n, "streamed": model.streamed_, "iters": model.n_iter_, "fit_s": fit_s,
            "s_per_iter": float(np.median(per_iter)) if per_iter else float("nan"),
            "init_s": model.history_[0]["seconds"],
            "peak_rss_mb": peak_rss_mb(),
            "data_mb": X.nbytes / 2**20, "base_mb": base_mb, "effective_k": model.history_[-1]["effective_k"]}


def run_child(path: Path, n: int, iters: int, budget: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--n", str(n), "--iters", str(iters),
                          "--budget", str(budget)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| N | path | iters | s/iter | us per doc-iter | init s | fit s | peak RSS MiB | input MiB | fit's own MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        path = ("streamed" if r["streamed"] else "resident") + (" (forced)" if r.get("forced") else "")
        lines.append(f"| {r['n']:,} | {path} | {r['iters']} | {r['s_per_iter']:.3f} | "
                     f"{1e6 * r['s_per_iter'] / r['n']:.2f} | {r['init_s']:.2f} | {r['fit_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['data_mb']:.0f} | {r['peak_rss_mb'] - r['data_mb'] - r['base_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,100000,300000,1000000")
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--budget", type=int, default=512 * 2**20)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--write", type=Path, default=None, help="replace the gem_scaling section of this Markdown file")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.iters, args.budget)))
        return

    import torch

    from _report import load_average
    from clustering import gemm_peak

    load = load_average()
    from gem_assets.lib.teacher.synthetic import make_cone_clusters

    torch.set_num_threads(THREADS)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cone.npy"
        t0 = time.perf_counter()
        X, _, _ = make_cone_clusters(max(sizes), D, 24, exponent=1.1, random_state=0)
        np.save(path, X.astype(np.float32))
        del X
        print(f"data: {max(sizes):,} x {D} in {time.perf_counter() - t0:.1f} s", flush=True)
        peak_before = gemm_peak()
        rows = []
        for n in sizes:
            rows.append(run_child(path, n, args.iters, args.budget))
            print(json.dumps(rows[-1]), flush=True)
        forced = run_child(path, max(sizes), args.iters, 4 * 2**30)
        forced["forced"] = True
        print(json.dumps(forced), flush=True)
        peak_after = gemm_peak()
    rows.append(forced)
    plain = [r for r in rows if not r.get("forced")]
    slope = float(np.polyfit(np.log([r["n"] for r in plain]), np.log([r["s_per_iter"] for r in plain]), 1)[0])
    ratio = plain[-1]["s_per_iter"] / plain[0]["s_per_iter"]
    from _report import machine, section, write_section

    streamed = [r for r in plain if r.get("streamed")]
    big = streamed[-1] if streamed else plain[-1]
    own = big["peak_rss_mb"] - big["data_mb"] - big["base_mb"]
    forced_own = forced["peak_rss_mb"] - forced["data_mb"] - forced["base_mb"]
    reading = (
        f"Reading: K = {K}, d = {D}, float32, default balance, memory budget {args.budget / 2**20:.0f} MiB, "
        f"{args.iters} MM iterations per fit, each fit in a fresh process. The cost per MM iteration grows "
        f"{'linearly in N' if 0.9 <= slope <= 1.1 else 'with N'}: the log-log slope of seconds per iteration against N from {plain[0]['n']:,} to "
        f"{plain[-1]['n']:,} is **{slope:.2f}** (1.00 = linear; N grew {plain[-1]['n'] / plain[0]['n']:.0f}x, seconds "
        f"per iteration {ratio:.1f}x; the smallest sizes carry fixed per-iteration overheads). "
        + (f"At N = {big['n']:,} the (N, K) work matrices would exceed the budget, so the fit streams X in row "
           f"chunks: its own memory is {own:,.0f} MiB on top of the {big['data_mb']:,.0f} MiB input, against "
           f"{forced_own:,.0f} MiB with the resident path forced, at {big['s_per_iter'] / forced['s_per_iter']:.1f}x "
           f"the seconds per iteration (one scores GEMM per evaluation of the dual instead of one per iteration). "
           if streamed else "Every size fitted the budget (resident path). ")
        + f"float32 GEMM peak before / after the fits: {peak_before:.0f} / {peak_after:.0f} GFLOP/s."
    )
    text = section(table(rows), reading, on=machine(load=load, extra=f"torch {torch.__version__}, {THREADS} threads"))
    print(text)
    if args.write:
        write_section(args.write, "gem_scaling", text, "GEM fit time and memory against N (`benchmarks/gem_scaling.py`)")


if __name__ == "__main__":
    main()

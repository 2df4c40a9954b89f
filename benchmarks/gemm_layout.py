"""The two GEMMs of a GEM iteration in two memory layouts each, timed against each other.

An MM iteration of GEM (resident path) runs two N x d x K matrix products:

- scores   S = X W^T       (N, d) x (d, K) -> (N, K); W (K, d) = kappa_k mu_k,
- moments  R = Q^T X       (K, N) x (N, d) -> (K, d).

The same products can be laid out differently: W^T stored contiguous (d, K) instead of a transposed
view of W, and R computed as (X^T Q)^T, a product with a (d, K) output. BLAS libraries partition
the work by the output's shape, so with several threads the layouts need not run at the same speed.
This script times each variant in torch (MKL on x86) and, as the peer, in numpy (OpenBLAS),
interleaved in rounds (each variant's fastest and median round), and prints the ratios.

    python benchmarks/gemm_layout.py [--n 100000] [--k 64] [--threads 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    N, d, K = args.n, args.d, args.k
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, d), dtype=np.float32)
    W = rng.standard_normal((K, d), dtype=np.float32)
    Q = rng.random((N, K), dtype=np.float32)
    Xt, Wt, Qt = (torch.from_numpy(a) for a in (X, W, Q))
    WTt, WT = Wt.T.contiguous(), np.ascontiguousarray(W.T)
    variants = {
        "scores  torch  X @ W.T (view)": lambda: Xt @ Wt.T,
        "scores  torch  X @ WT (contiguous)": lambda: Xt @ WTt,
        "scores  numpy  X @ W.T (view)": lambda: X @ W.T,
        "scores  numpy  X @ WT (contiguous)": lambda: X @ WT,
        "moments torch  Q.T @ X": lambda: Qt.T @ Xt,
        "moments torch  (X.T @ Q).T": lambda: (Xt.T @ Qt).T,
        "moments numpy  Q.T @ X": lambda: Q.T @ X,
        "moments numpy  (X.T @ Q).T": lambda: (X.T @ Q).T,
    }
    times = {k: [] for k in variants}
    # torch's and numpy's variants in separate loops: OpenBLAS's threads keep spinning for a while
    # after a call and slow down a torch call that follows at once (which first made the torch
    # variant run after a numpy one look 2x slower); within a library, the order rotates each round
    for lib in ("torch", "numpy"):
        names = [n for n in variants if f" {lib} " in n]
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - t)
    flop = 2.0 * N * d * K
    print(f"N={N:,} d={d} K={K}, {args.threads} threads (torch {torch.__version__}, numpy {np.__version__}), "
          f"{args.rounds} interleaved rounds, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| product | fastest ms | median ms | GFLOP/s (fastest) |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts) * 1e3:.1f} | {np.median(ts) * 1e3:.1f} | {flop / min(ts) / 1e9:.1f} |")
    for lib in ("torch", "numpy"):
        s = [np.median(times[f"scores  {lib}  X @ W.T (view)"]), np.median(times[f"scores  {lib}  X @ WT (contiguous)"])]
        m = [np.median(times[f"moments {lib}  Q.T @ X"]), np.median(times[f"moments {lib}  (X.T @ Q).T"])]
        print(f"{lib}: scores view/contiguous {s[0] / s[1]:.2f}x, moments Q.T@X / (X.T@Q).T {m[0] / m[1]:.2f}x (medians)")


if __name__ == "__main__":
    main()

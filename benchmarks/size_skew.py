"""NMI against the truth as the true domain sizes grow unequal: where balance helps and where it costs.

The clustering benchmark's target "GEM's NMI at least the best baseline's" is unmet on the Zipf-sized
synthetic cone (docs/benchmarks.md). This benchmark shows why, by varying the one thing that decides it:
how unequal the true cluster sizes are. Data: the synthetic cone of `benchmarks/clustering.py` (24 true vMF
clusters, kappa 600, d = 384) with cluster sizes proportional to rank^-exponent, exponent from 0
(equal sizes) to 1.4; K = 24 (the true number). Every method starts from the same spherical
k-means++ centres per (data, seed); NMI is averaged over the seeds. Quality only: no timings.

Also printed per exponent: the NMI of the *oracle* (the true means, argmax_k mu_k.x: 1.0 means the
clusters are separable), and, for GEM at balance 0 (decoupled uniform prior), the objective J/N of
its fit from k-means++ against the same fit started from the true means: when the truth's J is
higher, the gap to NMI 1 is the optimizer's (local optima), not the objective's.

    python benchmarks/size_skew.py [--n 30000] [--seeds 0,1,2] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gem_assets.lib.util import metrics as M  # noqa: E402
from gem_assets.lib.teacher.baselines import SphericalKMeans, VMFMixtureEM  # noqa: E402
from gem_assets.lib.teacher.gem import DEFAULT_BALANCE, GEM  # noqa: E402
from gem_assets.lib.teacher.seeding import kmeans_plusplus  # noqa: E402
from gem_assets.lib.teacher.synthetic import make_cone_clusters  # noqa: E402

EXPONENTS = (0.0, 0.5, 0.8, 1.1, 1.4)
K = 24


def methods():
    """(name, factory(init) -> fitted estimator with labels_)."""
    return [
        (f"GEM balance={DEFAULT_BALANCE:g} (default)", lambda X, C0: GEM(K, init=C0).fit(X)),
        ("GEM balance=0", lambda X, C0: GEM(K, balance=0.0, init=C0).fit(X)),
        ("spherical k-means", lambda X, C0: SphericalKMeans(K, init=C0).fit(X)),
        ("vMF-EM learned weights", lambda X, C0: VMFMixtureEM(K, init=C0).fit(X)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None, help="replace the size_skew section of this Markdown file")
    args = ap.parse_args()
    from _report import machine, section, write_section

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [m[0] for m in methods()]
    nmi = {name: {} for name in names}
    dead = {name: {} for name in names}
    max_share = {name: {} for name in names}
    oracle, j_fit, j_truth = {}, {}, {}
    for e in EXPONENTS:
        X, y, means = make_cone_clusters(args.n, 384, K, exponent=e, random_state=0)
        oracle[e] = M.nmi(y, np.argmax(X @ means.T, axis=1))
        j_truth[e] = GEM(K, balance=0.0, init=means).fit(X).objective_ / args.n
        js = []
        for name, fit in methods():
            vals, deads, maxs = [], [], []
            for s in seeds:
                C0 = kmeans_plusplus(torch.from_numpy(X), K, np.random.default_rng(s), spherical=True).numpy()
                est = fit(X, C0)
                shares = M.shares_from_labels(est.labels_, K)
                vals.append(M.nmi(y, est.labels_))
                deads.append(M.dead_domains(shares))
                maxs.append(M.max_share(shares))
                if name == "GEM balance=0":
                    js.append(est.objective_ / args.n)
            nmi[name][e], dead[name][e], max_share[name][e] = float(np.mean(vals)), float(np.mean(deads)), float(np.mean(maxs))
            print(f"exponent {e}: {name}: NMI {nmi[name][e]:.4f} dead {dead[name][e]:.1f} max share "
                  f"{max_share[name][e]:.3f}", flush=True)
        j_fit[e] = float(np.mean(js))
    cols = " | ".join(f"{e:g}" for e in EXPONENTS)
    lines = [f"| NMI against the truth, by size exponent | {cols} |", "|---|" + "---:|" * len(EXPONENTS)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{nmi[name][e]:.4f}" for e in EXPONENTS) + " |")
    lines.append("| oracle (true means, argmax mu_k.x) | " + " | ".join(f"{oracle[e]:.4f}" for e in EXPONENTS) + " |")
    lines += ["", f"| dead domains (share < 1/(10K)), mean over seeds | {cols} |", "|---|" + "---:|" * len(EXPONENTS)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{dead[name][e]:.1f}" for e in EXPONENTS) + " |")
    lines += ["", f"| largest share, mean over seeds | {cols} |", "|---|" + "---:|" * len(EXPONENTS)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{max_share[name][e]:.3f}" for e in EXPONENTS) + " |")
    lines += ["", f"| GEM balance=0, J/N | {cols} |", "|---|" + "---:|" * len(EXPONENTS),
              "| fitted from k-means++ (mean over seeds) | " + " | ".join(f"{j_fit[e]:.3f}" for e in EXPONENTS) + " |",
              "| fitted from the true means | " + " | ".join(f"{j_truth[e]:.3f}" for e in EXPONENTS) + " |"]
    text = section("\n".join(lines), reading(args, names, nmi, dead, max_share, oracle, j_fit, j_truth),
                   on=machine(extra=f"{args.threads} torch thread(s)"))
    print(text)
    if args.write:
        write_section(args.write, "size_skew", text, "NMI against unequal true sizes (`benchmarks/size_skew.py`)")


def reading(args, names, nmi, dead, max_share, oracle, j_fit, j_truth) -> str:
    """What the tables say, from their numbers: where GEM leads on NMI, where learned weights do, at what cost."""
    gem, vmf = names[0], "vMF-EM learned weights"
    lead = [e for e in EXPONENTS if max(names, key=lambda n: nmi[n][e]) == gem]
    behind = [e for e in EXPONENTS if e not in lead]
    ratio = ", ".join(f"{24 ** e:.0f}x at {e:g}" for e in EXPONENTS)
    out = [f"Reading: synthetic cone, N = {args.n:,}, d = 384, 24 true clusters (kappa 600) with sizes proportional "
           f"to rank^-exponent, K = 24; mean over seeds {args.seeds} of the shared k-means++ seeding; largest / "
           f"smallest true cluster {ratio}.", ""]
    if lead:
        out.append("- GEM at its default balance has the highest NMI of the four methods at exponent(s) "
                   + ", ".join(f"{e:g}" for e in lead) + " ("
                   + "; ".join(f"{nmi[gem][e]:.3f} against {max(nmi[n][e] for n in names if n != gem):.3f}"
                               for e in lead) + ").")
    if behind:
        best = {e: max((n for n in names if n != gem), key=lambda n: nmi[n][e]) for e in behind}
        out.append("- It is behind at exponent(s) " + ", ".join(f"{e:g}" for e in behind) + " ("
                   + "; ".join(f"{best[e]} {nmi[best[e]][e]:.3f} against {nmi[gem][e]:.3f}" for e in behind) + ").")
    out.append(f"- The price of learned weights: {vmf} averages "
               + ", ".join(f"{dead[vmf][e]:.1f}" for e in EXPONENTS) + " dead domains and a largest share of "
               + ", ".join(f"{max_share[vmf][e]:.1%}" for e in EXPONENTS) + " across the exponents; GEM "
               + ", ".join(f"{dead[gem][e]:.1f}" for e in EXPONENTS) + " and "
               + ", ".join(f"{max_share[gem][e]:.1%}" for e in EXPONENTS) + ".")
    better = all(j_truth[e] > j_fit[e] for e in EXPONENTS)
    if better:
        why = ("at balance 0 the fit started from the true means reaches a higher J than the fits from k-means++ at "
               "every exponent: the distance from NMI 1 is mostly local optima of k-means++-seeded ascent, not the "
               "objective")
    else:
        why = ("at balance 0 the fit started from the true means does not reach a higher J than the fits from "
               "k-means++ at every exponent: there the objective itself, not only the optimizer, departs from the "
               "truth")
    out.append(f"- The clusters are separable (oracle NMI >= {min(oracle.values()):.4f}), and {why}. With balanced "
               "truth the balance term pulls the fit towards the truth; with unequal truth it pulls away from it.")
    return "\n".join(out)


if __name__ == "__main__":
    main()

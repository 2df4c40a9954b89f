"""Accuracy of the vMF numerics (``gem_assets/lib/teacher/vmf.py``) against mpmath at 50 digits.

    python benchmarks/vmf_accuracy.py [--write docs/method.md]

Measures, on fixed grids:

- each asymptotic expansion alone beyond where the code uses it (Debye at orders 8 to 20, Hankel from a
  lower threshold), which is what sets the thresholds;
- log I_nu(x) by regime (Debye, power series, Hankel, the closed form at nu = 1/2): the largest relative
  error where |log I| >= 1 and the largest absolute error where |log I| < 1; orders nu in
  {0, 0.5, ..., 30} and {35, 40, 50, 63.5, 100, 191, 191.5, 383, 511, 1023, 2047, 2047.5, 2048}, arguments
  x in logspace(-3, 6, 73);
- log C_d(kappa), A_d(kappa) = I_{d/2} / I_{d/2-1} and 1 - A_d(kappa) for 21 dimensions d from 2 to 4096
  and 70 concentrations in logspace(-3, 6): largest relative error (and absolute error of log C);
- ``kappa_mle``: A_d(kappa_mle(rbar)) against rbar over 100,001 values of rbar in [0, 1] for
  d in {2, 3, 16, 384, 768, 4096} (largest absolute error of A, relative error of 1 - A, seconds per
  call), and Banerjee's approximation against the MLE for d in {384, 768}, rbar in [0.05, 0.95].

``--write FILE`` replaces the section ``vmf_accuracy`` of FILE (docs/method.md, section 6). mpmath is a
dev dependency; a few points at large orders take about a second each, the whole run under a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gem_assets.lib.teacher import vmf  # noqa: E402

NUS = [k / 2 for k in range(61)] + [35, 40, 50, 63.5, 100, 191, 191.5, 383, 511, 1023, 2047, 2047.5, 2048]
XS = np.logspace(-3, 6, 73)
DIMS = [2, 3, 4, 5, 10, 16, 23, 24, 25, 26, 27, 50, 51, 64, 100, 384, 768, 1000, 1024, 2047, 4096]
KAPPAS = np.logspace(-3, 6, 70)
MLE_DIMS = [2, 3, 16, 384, 768, 4096]


def _mp():
    import mpmath as mp

    mp.mp.dps = 50
    return mp


def _besseli(mp, nu, x):
    try:
        return mp.besseli(mp.mpf(nu), mp.mpf(x))
    except mp.libmp.libhyper.NoConvergence:
        return mp.besseli(mp.mpf(nu), mp.mpf(x), maxterms=10**6)


def log_iv_table(mp) -> tuple[list[str], int]:
    nu = np.repeat(np.asarray(NUS, dtype=np.float64), XS.size)
    x = np.tile(XS, len(NUS))
    ours = vmf.log_bessel_iv(nu, x)
    ref = np.array([float(mp.log(_besseli(mp, a, b))) for a, b in zip(nu.tolist(), x.tolist())])
    err = np.abs(ours - ref)
    big = np.abs(ref) >= 1
    rows = ["| regime | points | max rel. error (\\|log I\\| >= 1) | max abs. error (\\|log I\\| < 1) |",
            "|---|---:|---:|---:|"]
    for name, mask in zip(("Debye", "series", "Hankel", "nu = 1/2"), vmf._regimes(nu, x)):
        rel = err[mask & big] / np.abs(ref[mask & big])
        ab = err[mask & ~big]
        rows.append(f"| {name} | {int(mask.sum()):,} | {rel.max() if rel.size else 0:.1e} | "
                    f"{ab.max() if ab.size else 0:.1e} |")
    return rows, int(nu.size)


def expansion_table(mp) -> list[str]:
    """Each asymptotic expansion alone, beyond the region the code uses it in: why the thresholds.

    Debye with its 16 terms at orders below and above DEBYE_NU_MIN; Hankel with its 40 terms for
    x > max(18, 0.2 nu^2), a lower threshold than the code's max(40, nu^2 / 2). The error measure is
    max |err| / (1 + |log I|) over the x of the grid.
    """
    rows = ["| expansion | order nu | x | max \\|err\\| / (1 + \\|log I\\|) |", "|---|---:|---|---:|"]
    for nu in (8.0, 10.0, 12.0, 14.0, 20.0):
        n = np.full(XS.size, nu)
        big_r, t, _, _, u = vmf._debye_parts(n, XS)
        ours = big_r - n * np.log(n + big_r) - 0.5 * np.log(2 * np.pi * big_r) + np.log(u) + n * np.log(XS)
        ref = np.array([float(mp.log(_besseli(mp, nu, x))) for x in XS.tolist()])
        rows.append(f"| Debye, {vmf.DEBYE_TERMS} terms | {nu:g} | all of the grid | "
                    f"{np.max(np.abs(ours - ref) / (1 + np.abs(ref))):.1e} |")
    worst = 0.0
    for nu in [k / 2 for k in range(61)]:
        x = XS[XS > max(18.0, 0.2 * nu * nu)]
        if not x.size:
            continue
        n = np.full(x.size, nu)
        terms = vmf._hankel_terms(n, x, 40)
        ours = x - 0.5 * np.log(2 * np.pi * x) + np.log(terms.sum(axis=0))
        ref = np.array([float(mp.log(_besseli(mp, nu, v))) for v in x.tolist()])
        worst = max(worst, float(np.max(np.abs(ours - ref) / (1 + np.abs(ref)))))
    rows.append(f"| Hankel, 40 terms | 0 to 30 | x > max(18, 0.2 nu^2) | {worst:.1e} |")
    return rows


def ratio_table(mp) -> list[str]:
    rel_c, abs_c, rel_a, rel_b = 0.0, 0.0, 0.0, 0.0
    where = {}
    for d in DIMS:
        nu = d / 2 - 1
        logc = vmf.log_normalizer(KAPPAS, d)
        a = vmf.bessel_ratio(KAPPAS, d)
        b = vmf.bessel_ratio_complement(KAPPAS, d)
        for i, k in enumerate(KAPPAS.tolist()):
            i0, i1 = _besseli(mp, nu, k), _besseli(mp, nu + 1, k)
            ref_c = float(mp.mpf(nu) * mp.log(k) - mp.mpf(d) / 2 * mp.log(2 * mp.pi) - mp.log(i0))
            ref_a = i1 / i0
            ra, rb = float(ref_a), float(1 - ref_a)
            e = abs(logc[i] - ref_c)
            abs_c = max(abs_c, e)
            if abs(ref_c) >= 1:
                rel_c = max(rel_c, e / abs(ref_c))
            ea, eb = abs(a[i] - ra) / ra, abs(b[i] - rb) / rb
            if ea > rel_a:
                rel_a, where["a"] = ea, d
            if eb > rel_b:
                rel_b, where["b"] = eb, d
    n = len(DIMS) * KAPPAS.size
    return [f"| quantity ({n:,} points: {len(DIMS)} dimensions x {KAPPAS.size} concentrations) | max rel. error "
            "(\\|ref\\| >= 1 for log C) | max abs. error |", "|---|---:|---:|",
            f"| log C_d(kappa) | {rel_c:.1e} | {abs_c:.1e} |",
            f"| A_d(kappa) | {rel_a:.1e} (at d = {where.get('a')}) | |",
            f"| 1 - A_d(kappa) | {rel_b:.1e} (at d = {where.get('b')}) | |"]


def mle_table() -> list[str]:
    rbar = np.linspace(0.0, 1.0, 100_001)
    rows = ["| d | max \\|A(kappa_mle(rbar)) - rbar\\| | max rel. error of 1 - A | seconds per call (100,001 values) |",
            "|---:|---:|---:|---:|"]
    for d in MLE_DIMS:
        t0 = time.perf_counter()
        k = vmf.kappa_mle(rbar, d)
        secs = time.perf_counter() - t0
        lo, hi = float(vmf.bessel_ratio(1e-3, d)), float(vmf.bessel_ratio(1e6, d))
        inside = (rbar > lo) & (rbar < hi)
        a = vmf.bessel_ratio(k[inside], d)
        c = vmf.bessel_ratio_complement(k[inside], d)
        r = rbar[inside]
        rel = np.abs(c - (1 - r)) / np.maximum(1 - r, 1e-300)
        rows.append(f"| {d} | {np.abs(a - r).max():.1e} | {rel.max():.1e} | {secs:.2f} |")
    ban = []
    for d in (384, 768):
        r = np.linspace(0.05, 0.95, 1001)
        ban.append(f"d = {d}: {np.max(np.abs(vmf.kappa_banerjee(r, d) / vmf.kappa_mle(r, d) - 1)):.3%}")
    return rows + ["", "Banerjee's approximation against the MLE, largest relative difference over rbar in "
                       "[0.05, 0.95]: " + ", ".join(ban) + "."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", type=Path, default=None, help="replace the vmf_accuracy section of this Markdown file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import machine, section, write_section

    mp = _mp()
    t0 = time.perf_counter()
    log_iv, n_iv = log_iv_table(mp)
    print("\n".join(log_iv), flush=True)
    expansions = expansion_table(mp)
    print("\n".join(expansions), flush=True)
    ratios = ratio_table(mp)
    print("\n".join(ratios), flush=True)
    mle = mle_table()
    print("\n".join(mle), flush=True)
    reading = (f"Reading: errors against mpmath at 50 digits ({n_iv:,} points of log I_nu; {time.perf_counter() - t0:.0f} s "
               "in all). The contract the tests check (`gem_assets_tests/test_vmf.py`) is |err| <= 1e-6 |ref| + 1e-9 "
               "for log C_d, with a tight check at 1e-11 |ref| + 1e-10; the absolute floor exists because log C_d "
               "changes sign, where a relative error is meaningless. The absolute errors of log C_d at large "
               "kappa are rounding of terms of size ~kappa.")
    text = section("log I_nu(x) by regime:\n\n" + "\n".join(log_iv),
                   "The expansions alone, beyond where the code uses them (why the thresholds):\n\n"
                   + "\n".join(expansions), "\n".join(ratios),
                   "The concentration MLE:\n\n" + "\n".join(mle), reading, on=machine())
    print(text)
    if args.write:
        write_section(args.write, "vmf_accuracy", text, "Measured accuracy (`benchmarks/vmf_accuracy.py`)")


if __name__ == "__main__":
    main()

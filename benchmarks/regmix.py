"""RegMix regressors on RegMix's released proxy runs, and the epoch cap of the proposed mixture.

    python benchmarks/regmix.py [--data ../shared/benchmarks/regmix] [--write docs/benchmarks.md]

Fits each regressor on the 512 training runs (1M-parameter models; target: Pile-CC validation
loss, ``metric/the_pile_pile_cc_val_loss``) and reports the Spearman rank correlation of its
predictions with the losses of the 1M, 60M and 1B test runs, and its fit time.

Epoch cap: the released files carry mixtures, not token counts. RegMix drew its mixtures from
Dirichlet(shares^0.5 * s), whose mean is shares^0.5 normalized, so the token shares are estimated
as the squared mean training mixture (normalized). With a budget equal to the corpus (one natural
epoch) and ``max_epochs`` = 4, domain k may take at most 4 * share_k of the mixture; the table
reports the largest ``w_k / share_k`` (epochs) of each proposal with and without the cap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_assets.lib.mixing.regmix import MixtureRegressor, propose_mixture  # noqa: E402

TARGET = "metric/the_pile_pile_cc_val_loss"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "regmix"


def load(data: Path, mixtures: str, losses: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    w = pl.read_csv(data / mixtures)
    y = pl.read_csv(data / losses).select("index", TARGET)
    joined = w.join(y, on="index", how="inner").sort("index")
    cols = [c for c in w.columns if c != "index"]
    return joined.select(cols).to_numpy().astype(np.float64), joined[TARGET].to_numpy().astype(np.float64), cols


class _Sklearn:
    """A scikit-learn or LightGBM estimator behind MixtureRegressor's fit/predict."""

    def __init__(self, make):
        self.make = make

    def fit(self, W, y):
        self.model = self.make().fit(W, y)
        return self

    def predict(self, W):
        return np.asarray(self.model.predict(W), dtype=np.float64)


def regressors() -> dict:
    from sklearn.ensemble import RandomForestRegressor

    out = {
        "OLS (MixtureRegressor kind='linear')": lambda: MixtureRegressor("linear"),
        "HistGradientBoosting, defaults (MixtureRegressor kind='hgb', the default)": lambda: MixtureRegressor("hgb"),
        "RandomForest (500 trees)": lambda: _Sklearn(lambda: RandomForestRegressor(500, random_state=0, n_jobs=1)),
    }
    try:  # RegMix's own choice, when installed (not a dependency of the project)
        import lightgbm as lgb

        out["LightGBM (RegMix's settings)"] = lambda: _Sklearn(lambda: lgb.LGBMRegressor(
            objective="regression", boosting_type="gbdt", num_leaves=31, learning_rate=0.05, n_estimators=1000,
            seed=42, verbose=-1))
    except ImportError:
        pass
    return out


def main() -> None:
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n-simulations", type=int, default=100_000)
    ap.add_argument("--max-epochs", type=float, default=4.0)
    ap.add_argument("--write", type=Path, default=None, help="replace the regmix section of this Markdown file")
    args = ap.parse_args()
    from _report import load_average, machine, section, write_section

    load_avg = load_average()
    W, y, cols = load(args.data, "train_mixture_1m.csv", "train_pile_loss_1m.csv")
    tests = {name: load(args.data, f"test_mixture_{name}.csv", f"test_pile_loss_{name}.csv")[:2]
             for name in ("1m", "60m", "1B")}
    mean = W.mean(0)
    shares = mean ** 2 / (mean ** 2).sum()
    rows, fitted = [], {}
    for name, make in regressors().items():
        t0 = time.perf_counter()
        reg = make().fit(W, y)
        secs = time.perf_counter() - t0
        fitted[name] = reg
        rho = {t: float(spearmanr(reg.predict(Wt), yt).statistic) for t, (Wt, yt) in tests.items()}
        rows.append((name, rho, secs))
        print(name, rho, f"{secs:.2f}s", flush=True)

    lines = ["| regressor | Spearman 1M | Spearman 60M | Spearman 1B | fit s |", "|---|---|---|---|---|"]
    for name, rho, secs in rows:
        lines.append(f"| {name} | {rho['1m']:.3f} | {rho['60m']:.3f} | {rho['1B']:.3f} | {secs:.2f} |")

    cap_lines = ["| regressor | epoch cap | max epochs of a domain | top domain (weight) | seconds |",
                 "|---|---|---|---|---|"]
    budget = 1e9
    tokens = shares * budget
    for name in (n for n in fitted if "OLS" in n or "kind='hgb'" in n):
        for capped in (False, True):
            t0 = time.perf_counter()
            w = propose_mixture(fitted[name], shares, n_simulations=args.n_simulations, top_k=128,
                                rng=np.random.default_rng(0), tokens_per_domain=tokens if capped else None,
                                budget_tokens=budget if capped else None, max_epochs=args.max_epochs)
            secs = time.perf_counter() - t0
            pos = shares > 0
            epochs = float((w[pos] / shares[pos]).max())
            top = int(np.argmax(w))
            cap_lines.append(f"| {name.split(' (')[0]} | {'<= %g' % args.max_epochs if capped else 'none'} | "
                             f"{epochs:.2f} | {cols[top].removeprefix('train_the_pile_')} ({w[top]:.3f}) | "
                             f"{secs:.1f} |")
            print(name, capped, epochs, cols[top], flush=True)
    best = max(rows, key=lambda r: r[1]["1m"])
    chosen = next(r for r in rows if "kind='hgb'" in r[0])
    verdict = (f"Reading: fit on RegMix's 512 training runs (1M parameters), target `{TARGET}`; Spearman on "
               f"the test runs (256 at 1M, 256 at 60M, 64 at 1B).\n\n"
               f"- Target: Spearman >= 0.95 on the 1M test set. The project's default regressor on many runs "
               f"(HistGradientBoosting) reaches **{chosen[1]['1m']:.3f}** -> "
               f"**{'met' if chosen[1]['1m'] >= 0.95 else 'not met'}**; the best here: {best[0]} "
               f"({best[1]['1m']:.3f}).\n"
               f"- Epoch cap: token shares estimated as the squared mean training mixture; budget = one natural "
               f"epoch, cap {args.max_epochs:g} epochs, {args.n_simulations:,} simulated mixtures, top 128 averaged. "
               f"Without the cap the proposal reads its top domain up to the 'max epochs' column's number of times.")
    text = section("\n".join(lines), "\n".join(cap_lines), verdict, on=machine(load=load_avg))
    print(text)
    if args.write:
        write_section(args.write, "regmix", text, "RegMix regressors (`benchmarks/regmix.py`)")


if __name__ == "__main__":
    main()

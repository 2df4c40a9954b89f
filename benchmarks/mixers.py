"""The mixers on n-gram proxies: RegMix's fit quality and proposal, DoReMi's stability across seeds, time.

    python benchmarks/mixers.py --home data                      # a GEM_HOME that `make run` finished
    python benchmarks/mixers.py --synthetic-k 64 --docs 30000    # K = 64 domains of a synthetic corpus
    ... [--runs 256] [--budget 1000000] [--write docs/benchmarks.md]

``--home``: the proxy corpus the mixing stage wrote (``work/proxy_corpus``: train, validation and target
streams of GEM's domains). ``--synthetic-k``: ``--docs`` documents of 150 words, each from one of K topics
whose sizes follow a Zipf law (so the epoch cap binds for the small ones), 10% of each topic held out for
validation, and a target of 20 kB of every topic.

Prints, with the same settings as the default profile's mixing stage (order 5, ``--runs`` proxies of
``--budget`` bytes, DoReMi 24 rounds): RegMix's runs (seconds, target bits per byte: min, median, max), the
regressor chosen and every candidate's 5-fold out-of-fold Spearman, the proposal (entropy, top weight,
seconds, capped at the corpus's size as the curated mixture is), and DoReMi with seeds 0 and 1 (weights'
L1 distance, top weight, seconds). RegMix's peer here is its own alternatives: the regressors are compared
on the same runs in the same process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gem_assets.lib.mixing.count_proxy import doremi_rounds, regmix_runs  # noqa: E402
from gem_assets.lib.mixing.regmix import fit_and_propose  # noqa: E402


def from_home(home: Path):
    from safetensors.numpy import load_file

    d = home / "work" / "proxy_corpus"
    if not (d / "train.safetensors").is_file():
        raise SystemExit(f"no proxy corpus under {d}: run `make run` with GEM_HOME={home} first")
    return load_file(d / "train.safetensors"), load_file(d / "valid.safetensors"), load_file(d / "target.safetensors")["target"]


def synthetic(k: int, n_docs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab = [bytes(rng.integers(97, 123, size=rng.integers(2, 9)).astype(np.uint8)) for _ in range(5000)]
    topics = [rng.choice(5000, 300) for _ in range(k)]
    sizes = 1.0 / np.arange(1, k + 1) ** 0.8
    labels = rng.choice(k, n_docs, p=sizes / sizes.sum())
    docs: dict[int, list[bytes]] = {t: [] for t in range(k)}
    for t in labels:
        docs[t].append(b" ".join(vocab[j] for j in rng.choice(topics[t], 150)))
    train, valid = {}, {}
    for t, ds in docs.items():
        if len(ds) < 2:
            continue
        cut = max(1, len(ds) // 10)
        valid[str(t)] = np.frombuffer(b"\x00".join(ds[:cut]) + b"\x00", np.uint8)
        train[str(t)] = np.frombuffer(b"\x00".join(ds[cut:]) + b"\x00", np.uint8)
    target = np.concatenate([v[:20_000] for v in valid.values()])
    return train, valid, target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--synthetic-k", type=int, default=0)
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=256)
    ap.add_argument("--budget", type=int, default=1_000_000)
    ap.add_argument("--write", type=Path, default=None, help="replace this case's section of this Markdown file")
    args = ap.parse_args()
    from _report import load_average, machine, section, write_section

    load = load_average()
    if bool(args.home) == bool(args.synthetic_k):
        raise SystemExit("pass --home or --synthetic-k")
    if args.home:
        train, valid, target = from_home(args.home)
        case, name = f"the GEM domains of a finished `GEM_HOME` (K = {len(train)})", "mixers_home"
        title = "Mixers on n-gram proxies: the pipeline's GEM domains (`benchmarks/mixers.py --home`)"
    else:
        train, valid, target = synthetic(args.synthetic_k, args.docs)
        case, name = f"a synthetic corpus, K = {len(train)}, {args.docs:,} documents", f"mixers_k{args.synthetic_k}"
        title = f"Mixers on n-gram proxies: K = {args.synthetic_k} (`benchmarks/mixers.py --synthetic-k`)"
    mb = sum(s.size for s in train.values()) / 1e6
    print(f"{case}: {mb:.1f} MB of training streams, target {target.size:,} bytes", flush=True)

    t0 = time.perf_counter()
    runs = regmix_runs(train, target, args.runs, args.budget, seed=0)
    t_runs = time.perf_counter() - t0
    y = runs["losses"]
    tokens = runs["tokens"]
    t0 = time.perf_counter()
    w, fit = fit_and_propose(runs["mixtures"], y, tokens, float(tokens.sum()), seed=0)
    t_fit = time.perf_counter() - t0
    entropy = float(-(w[w > 0] * np.log(w[w > 0])).sum())
    rows = [("RegMix runs", f"{args.runs} n-gram proxies of {args.budget:,} bytes in {t_runs:.1f} s (index "
                            f"{runs['index_seconds']:.1f} s)"),
            ("RegMix runs' target bits per byte", f"min {y.min():.3f}, median {np.median(y):.3f}, max {y.max():.3f}"),
            ("regressor chosen", fit["kind"]),
            ("out-of-fold Spearman", ", ".join(f"{k} {v:.3f}" for k, v in fit["spearman_cv_by_kind"].items())),
            ("proposal (capped at 4 passes of the corpus's size)",
             f"entropy {entropy:.2f} nats (uniform: {np.log(len(w)):.2f}), top weight {w.max():.3f}"),
            ("regressor choice, fit and proposal", f"{t_fit:.1f} s")]
    out = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        d = doremi_rounds(train, valid, args.budget, rounds=24, seed=seed)
        out.append((np.array([d.weights[k] for k in d.domains]), time.perf_counter() - t0, d))
    l1 = float(np.abs(out[0][0] - out[1][0]).sum())
    ex = out[0][2].excess.mean(0)
    rows += [("DoReMi (24 rounds), seeds 0 and 1", f"weights at L1 distance {l1:.3f}; top weight "
                                                  f"{out[0][0].max():.3f} / {out[1][0].max():.3f}"),
             ("DoReMi mean excess loss per domain", f"{ex.min():.3f}-{ex.max():.3f} nats"),
             ("DoReMi time", f"{out[0][1]:.1f} s a seed")]
    table = "\n".join(["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    best = fit["spearman_cv_by_kind"][fit["kind"]]
    reading = (f"Reading: {case}, {mb:.1f} MB of training streams, target {target.size:,} bytes; the default "
               f"profile's mixing settings (order 5, {args.runs} proxies, DoReMi 24 rounds). RegMix's regressor, "
               f"chosen by cross-validation, ranks the runs at an out-of-fold Spearman of {best:.2f} "
               f"({'above' if best >= 0.5 else 'below'} the 0.5 under which the best run's mixture is used "
               f"instead); DoReMi's weights move by an L1 distance of {l1:.3f} between two seeds.")
    text = section(table, reading, on=machine(load=load))
    print(text)
    if args.write:
        write_section(args.write, name, text, title)


if __name__ == "__main__":
    main()

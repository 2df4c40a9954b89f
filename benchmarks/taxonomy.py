"""Taxonomy benchmark: are GIS names more coherent and more distinctive than c-TF-IDF's on the same domains?

    python benchmarks/taxonomy.py [--k 8 16 32] [--write docs/benchmarks.md]

One process, one vocabulary, the same domains for every naming method:

- corpus: the 2,225 BBC News articles (``read_bbc_news()``) embedded by all-MiniLM-L6-v2
  (``$GEM_HOME/bench_cache/bbc_minilm.npz``, written by ``benchmarks/clustering.py``);
- domains: GEM (isotropy on, seed 0) refit at each K of ``--k``; every document labelled by the
  teacher's argmax, streamed in 5 batches of ~445 documents (as shards); plus, when ``make run`` has
  produced them under ``$GEM_HOME``, the pipeline's own teacher and student labels (row "pipeline");
- vocabulary: words and bigrams of ``lib/taxonomy/terms.py`` in at least 5 documents (stop words and numbers
  never), the same for every method;
- names: the top-10 terms of each domain by GIS (four term posteriors, ``lib/taxonomy/gis.py``: the default
  ``doc_posterior``, the first definition ``unit_direction``, ``mean_log_density`` and ``lift``) and by
  c-TF-IDF (BERTopic's ``ClassTfidfTransformer`` defaults, ``lib/taxonomy/ctfidf.py``);
- measures: mean over domains of the mean pairwise NPMI of the top-10 terms, from document
  co-occurrence on the whole corpus; distinctiveness = share of top-10 slots whose term is in no
  other domain's top 10. Target: GIS at least c-TF-IDF on both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MIN_DF = 5
N_TOP = 10


def _score(stats, geometry, texts_batches) -> tuple[dict, dict]:
    """NPMI and distinctiveness of every method's top-10 terms; and the names."""
    from gem_assets.lib.taxonomy import ctfidf
    from gem_assets.lib.taxonomy import gis
    from gem_assets.lib.taxonomy import build as tx

    tops = {}
    for method in gis.POSTERIORS:
        S = gis.gis_scores(stats, gis.term_posteriors(stats, geometry, method))
        tops[f"GIS ({method})"] = [[t for t, _ in row] for row in gis.top_terms(S, stats.vocabulary, N_TOP)]
    tops["c-TF-IDF"] = [[t for t, _ in row] for row in gis.top_terms(ctfidf.ctfidf(stats.term_freq),
                                                                     stats.vocabulary, N_TOP)]
    return tx.name_quality(tops, texts_batches), tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16, 32], help="numbers of GEM domains to refit")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args()
    from _report import load_average, machine, section, write_section

    load = load_average()

    from gem_assets.config import Settings
    from gem_assets.lib.taxonomy import gis
    from gem_assets.lib.taxonomy import build as tx
    from gem_assets.lib.corpus.bbc import read_bbc_news
    from gem_assets.lib.teacher.gem import GEM

    home = Path(os.environ.get("GEM_HOME", ROOT / "data"))
    cache = home / "bench_cache" / "bbc_minilm.npz"
    if not cache.is_file():
        raise SystemExit(f"{cache} is missing: run benchmarks/clustering.py first (it embeds the BBC articles)")
    df = read_bbc_news()
    ids, texts = df["id"].to_list(), df["text"].to_list()
    z = np.load(cache, allow_pickle=False)
    if list(z["ids"]) != ids:
        raise SystemExit(f"{cache} is not aligned with read_bbc_news(); delete it and run benchmarks/clustering.py")
    X = z["X"]
    cuts = np.array_split(np.arange(len(ids)), 5)

    def texts_batches():
        for idx in cuts:
            yield [texts[i] for i in idx]

    rows, names, timings = [], {}, []
    for k in args.k:
        teacher = GEM(k, isotropy=True, random_state=0).fit(X)
        labels = teacher.predict(X)
        geometry = gis.TeacherGeometry.from_gem(teacher)

        def batches(labels=labels):
            for idx in cuts:
                yield gis.TermBatch(ids=[ids[i] for i in idx], texts=[texts[i] for i in idx], domains=labels[idx],
                                    vectors=X[idx], vector_rows=np.arange(idx.size))
        t0 = time.perf_counter()
        stats = gis.collect_term_stats(batches, geometry, min_df=MIN_DF)
        seconds = time.perf_counter() - t0
        timings.append((k, stats.n_documents, seconds, len(stats.vocabulary)))
        quality, tops = _score(stats, geometry, texts_batches)
        rows.append((f"refit K={k}", quality))
        names[k] = tops
        print(f"K={k}: {len(stats.vocabulary)} terms, statistics in {seconds:.2f} s", flush=True)

    settings = Settings(home=str(home))
    layout = settings.layout
    keys = sorted(p.name[: -len(".parquet")] for p in (layout.outputs_dir / "assignments").glob("*.parquet"))
    pipeline_note = "no pipeline outputs under $GEM_HOME (run `make run` first)"
    if keys and layout.teacher_model_dir.is_dir():
        geometry = gis.TeacherGeometry.from_gem(GEM.load(layout.teacher_model_dir))
        stats = gis.collect_term_stats(lambda: tx.shard_batches(layout, keys), geometry, min_df=MIN_DF)
        quality, _ = _score(stats, geometry, lambda: tx.shard_texts(layout, keys))
        rows.append((f"pipeline K={geometry.k}", quality))
        pipeline_note = (f"`pipeline`: the teacher and the student's labels that `make run` wrote under $GEM_HOME "
                         f"({len(keys)} shards, {stats.n_documents} documents, {stats.n_embedded} embedded)")

    methods = list(rows[0][1])
    lines = ["| domains | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for label, q in rows:
        lines.append(f"| {label} NPMI | " + " | ".join(f"{q[m]['npmi']:.4f}" for m in methods) + " |")
        lines.append(f"| {label} distinct | " + " | ".join(f"{q[m]['distinctiveness']:.3f}" for m in methods) + " |")
    default = "GIS (doc_posterior)"
    verdict = []
    for label, q in rows:
        g, c = q[default], q["c-TF-IDF"]
        ok = g["npmi"] >= c["npmi"] and g["distinctiveness"] >= c["distinctiveness"]
        verdict.append(f"- {label}: GIS (default) NPMI {g['npmi']:.4f} vs c-TF-IDF {c['npmi']:.4f}, distinctiveness "
                       f"{g['distinctiveness']:.3f} vs {c['distinctiveness']:.3f} -> **{'met' if ok else 'not met'}**")
    k_show = 16 if 16 in names else args.k[0]
    ex = ["| domain | GIS (doc_posterior) | c-TF-IDF |", "|---|---|---|"]
    for d, (g, c) in enumerate(zip(names[k_show][default], names[k_show]["c-TF-IDF"])):
        ex.append(f"| {d} | {', '.join(g[:6])} | {', '.join(c[:6])} |")
    speed = ", ".join(f"K={k}: {n / s:,.0f} docs/s ({v:,} terms)" for k, n, s, v in timings)
    setup = (
        f"Setup: the {len(ids):,} BBC News articles, MiniLM embeddings; domains: GEM refit at each K (isotropy "
        f"on, seed 0, every article labelled by the teacher's argmax) and {pipeline_note}. Vocabulary: words and "
        f"bigrams in >= {MIN_DF} documents, stop words and numbers excluded, one vocabulary for every method. "
        f"Measures on the top-{N_TOP} terms: mean NPMI (document co-occurrence on the corpus) and distinctiveness "
        f"(share of top-{N_TOP} slots unique to one domain). GIS statistics (two streamed passes, 5 batches): "
        f"{speed}."
    )
    text = section("\n".join(lines), "Reading, against the target GIS >= c-TF-IDF on both measures:\n\n"
                   + "\n".join(verdict), setup,
                   f"Top terms at K={k_show} (first 6 of 10):\n\n" + "\n".join(ex), on=machine(load=load))
    print(text)
    if args.write:
        write_section(args.write, "taxonomy", text, "Taxonomy (`benchmarks/taxonomy.py`)")


if __name__ == "__main__":
    main()

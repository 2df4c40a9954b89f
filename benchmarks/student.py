"""Student benchmark: the distilled fastText-style student vs the fastText library, and vs the teacher.

    python benchmarks/student.py [--n-throughput 100000] [--write docs/benchmarks.md]

One process, same teacher labels, same held-out split for every model:

- teacher: GEM (K=16, isotropy on, seed 0) on the BBC News articles embedded by
  all-MiniLM-L6-v2 (``$GEM_HOME/bench_cache/bbc_minilm.npz``, arrays ``X`` and ``ids`` in
  ``read_bbc_news()`` order); its posterior is the student's soft target, its argmax the
  label everything is scored against;
- split: a seeded 80/20 split of the 2,225 articles;
- student: ``StudentClassifier`` with the default profile's parameters (KL on the posterior);
- fastText (PyPI ``fasttext``; ``fasttext-numpy2-wheel`` under NumPy 2): supervised, word bigrams,
  on the teacher's argmax, with its defaults (epoch 5, lr 0.1), epoch 25/lr 0.5 and epoch 50/lr 1.0
  (the better of the last two on the held-out set is the peer: a choice that favours fastText;
  its autotune found nothing on this data: score nan, agreement 0.07);
  its input is the student's own tokenization joined by spaces (fastText splits on whitespace
  only, so raw text would glue punctuation to words), prepared outside the timed region;
- throughput: labeling ``--n-throughput`` documents resampled from the articles, one process;
  the teacher's embedding throughput on a few hundred of the same articles (model load excluded);
- memory: peak RSS of a fresh process labeling 1 and 10 Parquet shards of 10,000 documents
  with ``label_parquet`` (streamed in batches).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

def _label_rss(model_dir: str, shards: list[str]) -> None:
    """Child process: label shards one after another, print the peak RSS in MiB."""
    from gem_assets.lib.student.classifier import StudentClassifier
    from gem_assets.lib.student.labeling import label_parquet

    model = StudentClassifier.load(model_dir)
    out = Path(tempfile.mkdtemp(prefix="labels-"))
    n = 0
    for i, path in enumerate(shards):
        n += label_parquet(model, path, out / f"{i}.parquet")["n"]
    # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's peak over exec)
    hwm = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")]
    mib = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} {mib:.1f}")


def _fasttext_train(texts, labels, **kw):
    import fasttext

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for t, y in zip(texts, labels):
            f.write(f"__label__{int(y)} {t}\n")
        path = f.name
    try:
        t0 = time.perf_counter()
        model = fasttext.train_supervised(input=path, wordNgrams=2, thread=2, seed=0, verbose=0, **kw)
        return model, time.perf_counter() - t0
    finally:
        os.unlink(path)


def _fasttext_predict(model, texts) -> np.ndarray:
    labels, _ = model.predict(list(texts), k=1)
    return np.array([int(lab[0][len("__label__"):]) for lab in labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-throughput", type=int, default=100_000)
    parser.add_argument("--n-teacher", type=int, default=300, help="documents the teacher embeds for its rate")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file")
    parser.add_argument("--label-rss", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.label_rss:
        _label_rss(args.label_rss[0], args.label_rss[1:])
        return

    import fasttext  # noqa: F401  (fail early when the bench extra is not installed)
    import polars as pl
    import torch

    from gem_assets.config import Settings
    from gem_assets.lib.corpus.bbc import read_bbc_news
    from gem_assets.lib.teacher.gem import GEM
    from gem_assets.lib.student.classifier import StudentClassifier
    from gem_assets.lib.student.features import tokenize

    home = Path(os.environ.get("GEM_HOME", ROOT / "data"))
    cache = home / "bench_cache" / "bbc_minilm.npz"
    df = read_bbc_news()
    texts = df["text"].to_list()
    z = np.load(cache, allow_pickle=False)
    if list(z["ids"]) != df["id"].to_list():
        raise SystemExit(f"{cache} is not aligned with read_bbc_news(); delete it and run benchmarks/clustering.py")
    X = z["X"]
    teacher = GEM(16, isotropy=True, random_state=0).fit(X)
    P = teacher.predict_proba(X)
    y = P.argmax(axis=1)
    n = len(texts)
    perm = np.random.default_rng(0).permutation(n)
    n_hold = int(round(0.2 * n))
    hold, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    tr_texts, ho_texts = [texts[i] for i in train], [texts[i] for i in hold]
    rows = []
    sp = Settings().student_params()

    # ---------------------------------------------------------------- student
    def fit_student(targets):
        """Train the default-profile student on ``targets``: (model, training seconds, held-out agreement)."""
        model = StudentClassifier(16, dim=sp["dim"], buckets=sp["buckets"], epochs=sp["epochs"],
                                  word_ngrams=sp["word_ngrams"], random_state=0)
        t0 = time.perf_counter()
        model.fit(tr_texts, targets)
        seconds = time.perf_counter() - t0
        return model, seconds, float(np.mean(model.predict(ho_texts) == y[hold]))

    student, st_train, st_agree = fit_student(P[train])          # soft targets: KL to the teacher
    _, hard_train, hard_agree = fit_student(y[train])             # hard labels: cross-entropy

    # ---------------------------------------------------------------- fastText
    ft_tr = [" ".join(tokenize(t)) for t in tr_texts]
    ft_ho = [" ".join(tokenize(t)) for t in ho_texts]
    ft_default, ft_default_s = _fasttext_train(ft_tr, y[train])
    ft_default_agree = float(np.mean(_fasttext_predict(ft_default, ft_ho) == y[hold]))
    ft_mid, ft_mid_s = _fasttext_train(ft_tr, y[train], epoch=25, lr=0.5)
    ft_mid_agree = float(np.mean(_fasttext_predict(ft_mid, ft_ho) == y[hold]))
    ft_long, ft_long_s = _fasttext_train(ft_tr, y[train], epoch=50, lr=1.0)
    ft_long_agree = float(np.mean(_fasttext_predict(ft_long, ft_ho) == y[hold]))
    # the best fastText on the held-out set itself (a selection that favours fastText) is the peer
    ft_tuned, ft_tuned_agree, ft_name = max(
        [(ft_mid, ft_mid_agree, "epoch=25, lr=0.5"), (ft_long, ft_long_agree, "epoch=50, lr=1.0")], key=lambda r: r[1])

    # ---------------------------------------------------------------- throughput
    rng = np.random.default_rng(1)
    big_idx = rng.integers(0, n, size=args.n_throughput)
    big = [texts[i] for i in big_idx]
    mean_chars = float(np.mean([len(t) for t in big]))
    t0 = time.perf_counter()
    ids, offsets = student.featurizer.transform(big[:20_000])
    feat_rate = 20_000 / (time.perf_counter() - t0)
    del ids, offsets
    t0 = time.perf_counter()
    student.predict(big)
    st_rate = len(big) / (time.perf_counter() - t0)
    tok_cache = {}
    big_ft = []
    for i in big_idx.tolist():  # fastText's input, prepared outside the timed region
        if i not in tok_cache:
            tok_cache[i] = " ".join(tokenize(texts[i]))
        big_ft.append(tok_cache[i])
    t0 = time.perf_counter()
    _fasttext_predict(ft_tuned, big_ft)
    ft_rate = len(big_ft) / (time.perf_counter() - t0)
    del big_ft, tok_cache

    from gem_assets.lib.teacher.embed import SentenceEncoder

    enc = SentenceEncoder(device="cpu").load()
    sample = [texts[i] for i in rng.choice(n, size=args.n_teacher, replace=False)]
    enc.encode(sample[:8], progress=False)  # warm-up
    t0 = time.perf_counter()
    enc.encode(sample, progress=False)
    teacher_rate = len(sample) / (time.perf_counter() - t0)

    # ---------------------------------------------------------------- peak RSS, 1 vs 10 shards
    tmp = Path(tempfile.mkdtemp(prefix="student-bench-"))
    student.save(tmp / "model")
    shards = []
    for s in range(10):
        idx = rng.integers(0, n, size=10_000)
        path = tmp / f"shard-{s}.parquet"
        pl.DataFrame({"id": [f"{s}-{j}" for j in range(idx.size)], "text": [texts[i] for i in idx]}).write_parquet(path)
        shards.append(str(path))
    rss = {}
    for k in (1, 10):
        out = subprocess.run([sys.executable, __file__, "--label-rss", str(tmp / "model"), *shards[:k]],
                             capture_output=True, text=True, check=True).stdout.split()
        rss[k] = (int(out[0]), float(out[1]))

    rows = [
        ("student (ours, KL on the teacher posterior)", st_agree, st_train, st_rate),
        ("student (ours, hard labels)", hard_agree, hard_train, None),
        ("fastText, defaults + wordNgrams=2", ft_default_agree, ft_default_s, None),
        ("fastText, epoch=25, lr=0.5, wordNgrams=2", ft_mid_agree, ft_mid_s, ft_rate if ft_tuned is ft_mid else None),
        ("fastText, epoch=50, lr=1.0, wordNgrams=2", ft_long_agree, ft_long_s,
         ft_rate if ft_tuned is ft_long else None),
        ("teacher (MiniLM embedding, max 256 tokens)", None, None, teacher_rate),
    ]
    lines = ["| model | held-out agreement | training s | labeling docs/s |", "|---|---|---|---|"]
    for name, agree, secs, rate in rows:
        lines.append(f"| {name} | {'' if agree is None else f'{agree:.4f}'} | "
                     f"{'' if secs is None else f'{secs:.1f}'} | {'' if rate is None else f'{rate:,.0f}'} |")
    targets = [
        f"- agreement, student vs the best fastText ({ft_name}): {st_agree:.4f} vs {ft_tuned_agree:.4f} "
        f"(target: at least fastText's) -> **{'met' if st_agree >= ft_tuned_agree else 'not met'}**",
        f"- labeling throughput, student / fastText predict ({ft_name}): **{st_rate / ft_rate:.2f}x** (target >= 0.5x) -> "
        f"**{'met' if st_rate >= 0.5 * ft_rate else 'not met'}**; the student's featurization alone: "
        f"{feat_rate:,.0f} docs/s",
        f"- student / teacher embedding throughput: **{st_rate / teacher_rate:,.0f}x** (target >= 100x) -> "
        f"**{'met' if st_rate >= 100 * teacher_rate else 'not met'}**",
        f"- peak RSS labeling 1 shard ({rss[1][0]:,} docs): {rss[1][1]:.0f} MiB; 10 shards ({rss[10][0]:,} docs): "
        f"{rss[10][1]:.0f} MiB (a fresh process each; shards streamed in batches of 8,192 rows)",
    ]
    from _report import machine, section, write_section

    setup = (
        f"Setup: teacher GEM K=16 (isotropy on, seed 0) on MiniLM embeddings of the 2,225 BBC articles; held out: "
        f"{n_hold} articles (seeded 80/20 split), scored against the teacher's argmax. Student: dim "
        f"{sp['dim']}, {sp['buckets']:,} buckets, {sp['epochs']} epochs, word bigrams (the default profile). "
        f"Throughput: {len(big):,} documents resampled from the articles (mean {mean_chars:,.0f} characters), "
        f"one process; fastText gets the student's tokenization joined by spaces, prepared outside its timing "
        f"(its real cost would be higher); the teacher embeds {len(sample)} of the articles (model load "
        f"excluded)."
    )
    on = machine(extra=f"torch {torch.__version__} ({torch.get_num_threads()} threads), fastText threads=2")
    text = section("\n".join(lines), "Reading:\n\n" + "\n".join(targets), setup, on=on)
    print(text)
    if args.write:
        write_section(args.write, "student", text, "Student (`benchmarks/student.py`)")


if __name__ == "__main__":
    main()

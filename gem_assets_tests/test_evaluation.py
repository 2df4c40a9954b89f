"""The mixture evaluation as a library: splits, statistics, bucketizations, document samples, the
experiment grid on real (small, order-3) n-gram target models, tables and picture."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import polars as pl
import pytest

from conftest import make_docs
from gem_assets.lib.evaluation import corpus_sample, experiment, reports, splits, statistics
from gem_assets.lib.evaluation.backends import MixerSettings, NGramTargets, sample_documents
from gem_assets.lib.evaluation.bucketize import MISSING_LABEL, Bucketization, from_domains, from_labels, kmeans_buckets
from gem_assets.lib.mixing.sampling import bottom_k_positions
from gem_assets.lib.util.metrics import nmi


def _config(**kw) -> experiment.EvaluationConfig:
    base = dict(budget_tokens=3000, seeds=(0, 1, 2), order=3,
                mixing=MixerSettings(proxy_tokens=2000, regmix_runs=8, doremi_rounds=3, budget_tokens=3000, order=3,
                                     n_simulations=2000, top_k=16))
    base.update(kw)
    return experiment.EvaluationConfig(**base)


class SpyTargets(NGramTargets):
    """The n-gram target models, recording every sample they train on."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.samples: list[np.ndarray] = []

    def fit(self, multiplicity, seed):
        self.samples.append(np.asarray(multiplicity).copy())
        return super().fit(multiplicity, seed)


def held_out_by_hand(keys, fraction: float, seed: int) -> list[bool]:
    """The hold-out rule, independently of the library: key k is held out when the BLAKE2b digest
    (8 bytes, little-endian) of ``"<seed>\\x1fevaluation/holdout\\x1f<k>"`` is below fraction * 2^64."""
    def u64(key) -> int:
        return int.from_bytes(hashlib.blake2b(f"{seed}\x1fevaluation/holdout\x1f{key}".encode(), digest_size=8).digest(),
                              "little")

    return [u64(k) < fraction * 2**64 for k in keys]


def _corpus(n=160):
    docs = make_docs(n, seed=5)
    keys = [f"s/{d['id']}" for d in docs]
    held = splits.holdout_split(keys, 0.2, seed=0)
    pool = np.flatnonzero(~held)
    select = splits.select_split([keys[i] for i in pool], 0.2, seed=0)
    fit = pool[~select]
    return docs, held, pool[select], fit


# --------------------------------------------------------------------------- statistics
def test_t_interval_hand_computed():
    # n = 2: one degree of freedom, t_{0.975,1} = tan(0.475 pi) (Cauchy quantile)
    ci = statistics.t_interval([1.0, 3.0])
    t1 = math.tan(0.475 * math.pi)
    assert ci["mean"] == 2.0 and ci["n"] == 2
    assert ci["std"] == pytest.approx(math.sqrt(2.0))
    assert ci["half_width"] == pytest.approx(t1 * math.sqrt(2.0) / math.sqrt(2.0), rel=1e-10)  # 12.7062
    assert ci["half_width"] == pytest.approx(12.706204736, rel=1e-9)
    # n = 3: two degrees of freedom, t_p = (2p - 1) sqrt(2 / (4 p (1 - p))) at p = 0.975
    ci = statistics.t_interval([1.0, 2.0, 3.0])
    t2 = 0.95 * math.sqrt(2.0 / (4 * 0.975 * 0.025))
    assert ci["mean"] == pytest.approx(2.0) and ci["std"] == pytest.approx(1.0)
    assert ci["half_width"] == pytest.approx(t2 / math.sqrt(3.0), rel=1e-10)   # 4.30265 / sqrt(3) = 2.4841
    assert ci["low"] == pytest.approx(2.0 - t2 / math.sqrt(3.0)) and ci["high"] == pytest.approx(2.0 + t2 / math.sqrt(3.0))
    # 90%: p = 0.95 with two degrees of freedom
    ci90 = statistics.t_interval([1.0, 2.0, 3.0], confidence=0.90)
    assert ci90["half_width"] == pytest.approx(0.9 * math.sqrt(2.0 / (4 * 0.95 * 0.05)) / math.sqrt(3.0), rel=1e-10)
    # equal values: a zero-width interval, no NaN
    ci = statistics.t_interval([0.5, 0.5, 0.5])
    assert ci["half_width"] == 0.0 and ci["low"] == ci["high"] == 0.5


@pytest.mark.parametrize("values, confidence, match", [
    ([1.0], 0.95, "at least 2"),
    ([], 0.95, "at least 2"),
    ([1.0, float("nan")], 0.95, "finite"),
    ([1.0, float("inf")], 0.95, "finite"),
    ([1.0, 2.0], 1.0, "confidence"),
    ([1.0, 2.0], 0.0, "confidence"),
])
def test_t_interval_rejects_bad_input(values, confidence, match):
    with pytest.raises(ValueError, match=match):
        statistics.t_interval(values, confidence)


# --------------------------------------------------------------------------- splits
def test_holdout_split_is_a_seeded_hash_of_each_key():
    keys = [f"shard/{i:04d}" for i in range(101)]
    m = splits.holdout_split(keys, 0.1, seed=3)
    # each document by its own key, by the documented rule written out here with hashlib
    assert m.dtype == bool and m.tolist() == held_out_by_hand(keys, 0.1, 3)
    assert np.flatnonzero(m).tolist() == [3, 26, 51, 53, 59, 61, 65, 71, 81, 84]
    assert np.array_equal(m, splits.holdout_split(keys, 0.1, seed=3))
    perm = np.random.default_rng(0).permutation(101)
    m2 = splits.holdout_split([keys[i] for i in perm], 0.1, seed=3)
    assert np.array_equal(m2, m[perm])                                     # the order of keys does not matter
    # adding documents never moves an old one to the other side (a growing corpus keeps its targets)
    grown = splits.holdout_split(keys + [f"new/{i}" for i in range(50)], 0.1, seed=3)
    assert np.array_equal(grown[:101], m)
    assert not np.array_equal(m, splits.holdout_split(keys, 0.1, seed=4))
    # the share held out is the fraction: binomial, within 4 standard deviations on 20,000 keys
    big = splits.holdout_split([f"s/{i}" for i in range(20_000)], 0.1, seed=0)
    assert abs(big.mean() - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20_000)
    # the selection split (of the small training pool) is an exact-size, independent draw
    sel = splits.select_split(keys, 0.1, seed=3)
    assert sel.sum() == 10 and not np.array_equal(m, sel)
    assert splits.select_split(["a", "b"], 0.01, 0).sum() == 1 and splits.select_split(["a", "b"], 0.99, 0).sum() == 1


@pytest.mark.parametrize("split", [splits.holdout_split, splits.select_split])
@pytest.mark.parametrize("keys, fraction, match", [
    (["a", "b", "c"], 0.0, "fraction"),
    (["a", "b", "c"], 1.0, "fraction"),
    (["a", "b", "c"], -0.5, "fraction"),
    (["a", "a", "b"], 0.5, "unique"),
])
def test_splits_reject_bad_input(split, keys, fraction, match):
    with pytest.raises(ValueError, match=match):
        split(keys, fraction, 0)
    with pytest.raises(ValueError, match="at least 2"):
        splits.select_split(["a"], 0.5, 0)


def test_sample_documents_hand_computed():
    # documents of 10, 20, 30, 40 tokens; domain 0 = docs 0, 1 (30 tokens), domain 1 = docs 2, 3 (70 tokens)
    tok = np.array([10, 20, 30, 40])
    labels = np.array([0, 0, 1, 1])
    priority = np.array([0.9, 0.1, 0.5, 0.2])
    # weights 0.5 / 0.5 of 100 tokens: domain 0 wants 50 = 1 pass (30) + 20 more: doc 1 first by priority
    # (20 tokens); domain 1 wants 50: doc 3 (40) fits, doc 2 would overshoot
    np.testing.assert_array_equal(sample_documents(tok, labels, [0.5, 0.5], 100, 4.0, priority), [1, 2, 0, 1])
    # an epoch cap of 1: domain 0 can give 30 at most, the other 70 go to domain 1 (one pass of 70)
    np.testing.assert_array_equal(sample_documents(tok, labels, [0.5, 0.5], 100, 1.0, priority), [1, 1, 1, 1])
    # weight 0: never drawn
    np.testing.assert_array_equal(sample_documents(tok, labels, [0.0, 1.0], 40, 4.0, priority), [0, 0, 0, 1])
    with pytest.raises(ValueError, match="one length"):
        sample_documents(tok, labels[:3], [0.5, 0.5], 100, 4.0, priority)
    with pytest.raises(ValueError, match="one weight per domain"):
        sample_documents(tok, labels, [1.0], 100, 4.0, priority)


def test_from_labels_sorted_names_and_missing():
    b = from_labels("source", ["tech", "sport", None, "tech"])
    assert b.names == (MISSING_LABEL, "sport", "tech")
    assert b.labels.tolist() == [2, 1, 0, 2]
    assert b.keys() == ["source:<missing>", "source:sport", "source:tech"]
    assert b.counts().tolist() == [1, 1, 2]
    assert b.counts(np.array([True, False, False, True])).tolist() == [0, 0, 2]
    sub = b.subset(np.array([False, True, True, False]))
    assert sub.labels.tolist() == [1, 0] and sub.names == b.names
    with pytest.raises(ValueError, match="no document"):
        from_labels("source", [])


def test_from_domains_and_validation():
    b = from_domains("gem", np.array([0, 3, 3]), 4)
    assert b.k == 4 and b.names == ("0", "1", "2", "3") and b.counts().tolist() == [1, 0, 0, 2]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        from_domains("gem", [0, 4], 4)
    with pytest.raises(ValueError, match="integers"):
        from_domains("gem", [0.5, 1.0], 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        from_domains("gem", [0], 0)
    with pytest.raises(ValueError, match="without ':'"):
        Bucketization("a:b", np.array([0]), ("x",))
    with pytest.raises(ValueError, match="distinct"):
        Bucketization("a", np.array([0]), ("x", "x"))
    with pytest.raises(ValueError, match="1-D"):
        Bucketization("a", np.zeros((2, 2), np.int64), ("x",))
    with pytest.raises(ValueError, match="mask"):
        b.subset(np.array([True]))


def test_kmeans_buckets_recovers_separated_blobs_by_nearest_centroid():
    rng = np.random.default_rng(0)
    centers = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    truth = rng.integers(0, 3, size=300)
    X = centers[truth] + 0.1 * rng.standard_normal((300, 3))
    sample = X[:120]
    b, fitted = kmeans_buckets(sample, X, 3, seed=0)
    assert b.name == "kmeans" and b.k == 3 and b.labels.shape == (300,) and fitted.shape == (3, 3)
    assert nmi(b.labels, truth) == pytest.approx(1.0)          # documents outside the sample too
    d = ((X[:, None, :] - fitted[None]) ** 2).sum(-1)
    assert np.array_equal(b.labels, d.argmin(1))                 # nearest centroid, by definition
    b2, _ = kmeans_buckets(sample, X, 3, seed=0)
    assert np.array_equal(b.labels, b2.labels)                   # seeded
    with pytest.raises(ValueError, match="same number of columns"):
        kmeans_buckets(sample, X[:, :2], 3)
    with pytest.raises(ValueError, match="exceeds"):
        kmeans_buckets(sample[:2], X, 3)


# --------------------------------------------------------------------------- configuration
def test_evaluation_config_validation():
    cfg = _config()
    assert cfg.seeds == (0, 1, 2) and cfg.params()["mixing"]["regmix_runs"] == 8
    with pytest.raises(ValueError, match="at least 2 distinct seeds"):
        _config(seeds=(0,))
    with pytest.raises(ValueError, match="at least 2 distinct seeds"):
        _config(seeds=(1, 1))
    with pytest.raises(ValueError, match="mixers"):
        _config(mixers=("natural", "best"))
    with pytest.raises(ValueError, match="budget_tokens"):
        _config(budget_tokens=0)
    with pytest.raises(ValueError, match="backend"):
        _config(backend="bigram")
    with pytest.raises(ValueError, match="transformer"):
        _config(backend="transformer")
    with pytest.raises(ValueError, match="proxy"):
        MixerSettings(proxy="gpt")


# --------------------------------------------------------------------------- the experiment
def test_run_experiment_grid_budget_and_target_never_seen():
    docs, held, select, fit = _corpus()
    texts = [d["text"] for d in docs]
    sources = [d["source"] for d in docs]
    fit_texts = [texts[i] for i in fit]
    bs = [from_labels("source", [sources[i] for i in fit]),
          from_domains("rand", np.random.default_rng(1).integers(0, 3, size=fit.size), 3)]
    cfg = _config()
    tgt = np.flatnonzero(held)
    target_texts = [texts[i] for i in tgt]
    kw = dict(target_labels=[sources[i] for i in tgt], select_labels=[sources[i] for i in select])
    targets, _ = experiment._targets(target_texts, kw["target_labels"], [texts[i] for i in select], kw["select_labels"])
    spy = SpyTargets(fit_texts, targets, order=3)
    res = experiment.run_experiment(fit_texts, bs, [texts[i] for i in select], target_texts, cfg, targets_backend=spy, **kw)
    runs = res.runs
    assert res.targets == ["all", "food", "money", "sport", "tech"]
    # target-free mixers: one model scored on 5 targets; RegMix: one model per target
    assert runs.height == 3 * 2 * (3 * 5 + 5) and len(spy.samples) == 3 * 2 * (3 + 5)
    groups = runs.group_by("bucketization", "mixer", "target").len()
    assert groups.height == 2 * 4 * 5 and set(groups["len"]) == {3}
    # every model trains on at most the budget, and on whole documents
    assert runs["tokens"].max() <= cfg.budget_tokens and runs["tokens"].min() > cfg.budget_tokens - 3 * 200
    assert np.isfinite(runs["bpb"].to_numpy()).all() and (runs["bpb"] > 0).all()
    # weights: natural = document byte shares, uniform, all sum to one, per target
    w = res.weights["source"]
    assert set(w["uniform"]["all"].values()) == {0.25}
    for by_mixer in res.weights.values():
        for by_target in by_mixer.values():
            assert set(by_target) == set(res.targets)
            for weights in by_target.values():
                assert sum(weights.values()) == pytest.approx(1.0)
    # the target documents are not in the pool the models sample from
    assert not set(target_texts) & set(fit_texts)
    # seeds reproduce
    again = experiment.run_experiment(fit_texts, bs, [texts[i] for i in select], target_texts, cfg, **kw)
    assert again.runs.drop("train_seconds").equals(runs.drop("train_seconds"))


def test_a_bucketization_that_isolates_the_target_gives_it_the_better_mixture():
    """Two languages in the pool, the target is one of them: bucketized by language, RegMix puts the
    weight on the target's language, its target models beat natural shares by a margin the paired
    interval resolves, and beat RegMix on a random bucketization."""
    rng = np.random.default_rng(0)
    vocab = {"a": [bytes(rng.choice(list(b"abcdefg"), size=4)).decode() for _ in range(80)],
             "z": [bytes(rng.choice(list(b"tuvwxyz"), size=4)).decode() for _ in range(80)]}

    def doc(lang):
        return " ".join(rng.choice(vocab[lang], size=15))

    langs = np.array(["a"] * 150 + ["z"] * 150)
    pool = [doc(lang) for lang in langs]
    select = [doc("z") for _ in range(20)]
    target = [doc("z") for _ in range(30)]
    by_lang = from_labels("lang", langs.tolist())
    random = from_domains("random", rng.integers(0, 2, size=langs.size), 2)
    cfg = _config(budget_tokens=3000, seeds=tuple(range(10)), mixers=("natural", "regmix"),
                  mixing=MixerSettings(proxy_tokens=2000, regmix_runs=12, doremi_rounds=2, budget_tokens=3000, order=3,
                                       n_simulations=2000, top_k=16))
    res = experiment.run_experiment(pool, [by_lang, random], select, target, cfg)
    assert res.weights["lang"]["regmix"]["all"]["lang:z"] > 0.8
    # on the language buckets RegMix beats natural shares seed by seed (a resolved paired difference) ...
    lang = res.runs.filter(pl.col("bucketization") == "lang").sort("seed")
    gain = (lang.filter(pl.col("mixer") == "regmix")["bpb"] - lang.filter(pl.col("mixer") == "natural")["bpb"])
    assert statistics.t_interval(gain.to_numpy())["high"] < 0
    # ... and RegMix on them beats RegMix on random buckets, which can only lean on one random half
    diff = statistics.paired_differences(res.runs, "lang").filter(pl.col("mixer") == "regmix").row(0, named=True)
    assert diff["difference"] < -0.05
    nat = statistics.paired_differences(res.runs, "lang").filter(pl.col("mixer") == "natural").row(0, named=True)
    assert abs(nat["difference"]) < abs(diff["difference"])


def test_run_experiment_rejects_bad_input():
    b = from_domains("a", [0, 1], 2)
    with pytest.raises(ValueError, match="labels 2 documents but there are 3"):
        experiment.run_experiment(["x", "y", "z"], [b], ["s"], ["t"], _config())
    with pytest.raises(ValueError, match="target set is empty"):
        experiment.run_experiment(["x", "y"], [b], ["s"], [], _config())
    with pytest.raises(ValueError, match="distinct"):
        experiment.run_experiment(["x", "y"], [b, b], ["s"], ["t"], _config())
    with pytest.raises(ValueError, match="selection set"):
        experiment.run_experiment(["x", "y"], [b], [], ["t"], _config())
    with pytest.raises(ValueError, match="target_labels"):
        experiment.run_experiment(["x", "y"], [b], ["s"], ["t"], _config(), target_labels=["a", "b"])


# --------------------------------------------------------------------------- tables and picture
def _runs() -> pl.DataFrame:
    rows = []
    vals = {("gem", "natural"): [2.0, 2.2, 2.4], ("gem", "uniform"): [1.9, 2.0, 2.1],
            ("kmeans", "natural"): [2.1, 2.3, 2.5], ("kmeans", "uniform"): [2.0, 2.0, 2.0]}
    for (b, m), ys in vals.items():
        for s, y in enumerate(ys):
            for target, shift in (("all", 0.0), ("tech", 0.5), ("food", 0.3)):
                rows.append({"bucketization": b, "mixer": m, "target": target, "seed": s, "domains": 4, "tokens": 100,
                             "unique_documents": 10, "train_seconds": 0.1, "bpb": y + shift})
    return pl.DataFrame(rows)


def test_summarize_and_paired_differences_hand_computed():
    table = statistics.summarize(_runs())
    assert table.height == 4 * 4 and set(table["seeds"]) == {3}           # 3 targets + their mean
    t2 = 0.95 * math.sqrt(2.0 / (4 * 0.975 * 0.025))
    row = table.row(0, named=True)
    assert (row["target"], row["bucketization"], row["mixer"]) == ("all", "gem", "natural")
    assert row["bpb_target"] == pytest.approx(2.2)
    assert row["bpb_target_half_width"] == pytest.approx(t2 * 0.2 / math.sqrt(3))
    tech = table.filter((pl.col("target") == "tech") & (pl.col("bucketization") == "gem")
                        & (pl.col("mixer") == "natural")).row(0, named=True)
    assert tech["bpb_target"] == pytest.approx(2.7)
    mean = table.filter((pl.col("target") == statistics.MEAN_OF_SOURCES) & (pl.col("bucketization") == "gem")
                        & (pl.col("mixer") == "natural")).row(0, named=True)
    assert mean["bpb_target"] == pytest.approx(2.2 + 0.4)                   # mean of +0.5 and +0.3
    assert (table["bpb_target_low"] <= table["bpb_target"]).all()
    assert (table["bpb_target"] <= table["bpb_target_high"]).all()
    diff = statistics.paired_differences(_runs(), "gem")
    assert set(diff["versus"]) == {"kmeans"} and diff.height == 2 * 4
    nat = diff.filter((pl.col("mixer") == "natural") & (pl.col("target") == "all")).row(0, named=True)
    assert nat["difference"] == pytest.approx(-0.1) and nat["low"] == pytest.approx(-0.1)   # constant gap
    uni = diff.filter((pl.col("mixer") == "uniform") & (pl.col("target") == "all")).row(0, named=True)
    assert uni["difference"] == pytest.approx(0.0)
    assert uni["half_width"] == pytest.approx(t2 * 0.1 / math.sqrt(3))     # diffs -0.1, 0, 0.1
    assert statistics.paired_differences(_runs().filter(pl.col("bucketization") == "gem"), "gem").height == 0
    with pytest.raises(ValueError, match="reference"):
        statistics.paired_differences(_runs(), "source")


def test_results_markdown_and_chart():
    table = statistics.summarize(_runs())
    md = reports.results_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| target | bucketization | mixer | domains | seeds | bpb") and len(lines) == 2 + 16
    assert "| all | gem | uniform | 4 | 3 | **2.0000** ±" in md          # best of its target and mixer in bold
    assert "| all | gem | natural | 4 | 3 | **2.2000** ±" in md
    assert "| all | kmeans | natural | 4 | 3 | 2.3000 ±" in md
    diffs = reports.differences_markdown(statistics.paired_differences(_runs(), "gem"))
    assert "| all | natural | kmeans | 3 | -0.1000 |" in diffs and "gem better" in diffs
    png = reports.bpb_chart(table)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    with pytest.raises(ValueError, match="none of the targets"):
        reports.bpb_chart(table.filter(pl.col("target") == "tech"), targets=["food"])


# --------------------------------------------------------------------------- the corpus end to end
def _frame(n=120, embedded_every=1):
    docs = make_docs(n, seed=9)
    rng = np.random.default_rng(0)
    topics = sorted({d["source"] for d in docs})
    centers = np.eye(8)[: len(topics)] * 3.0
    vecs = np.stack([centers[topics.index(d["source"])] + 0.1 * rng.standard_normal(8) for d in docs])
    emb = np.arange(n) % embedded_every == 0
    vec = np.where(emb, np.cumsum(emb) - 1, -1)
    frame = pl.DataFrame({
        "key": [f"s/{d['id']}" for d in docs], "shard": ["s"] * n, "id": [d["id"] for d in docs],
        "text": [d["text"] for d in docs], "source": [d["source"] for d in docs],
        "gem": [topics.index(d["source"]) for d in docs],
        "vec": [int(v) if v >= 0 else None for v in vec],
    }, schema_overrides={"gem": pl.Int64, "vec": pl.Int64})
    return frame, vecs[emb].astype(np.float32), vecs[::3].astype(np.float32)


def _sample(frame, vectors, holdout=0.1, **kw):
    return corpus_sample.sample_frame(frame, vectors, holdout=holdout, seed=0, **kw)


def test_evaluate_corpus_splits_buckets_and_reports():
    frame, vectors, sample = _frame()
    drawn = _sample(frame, vectors)
    out = experiment.evaluate_corpus(drawn, sample, 4, _config(), select=0.1, use_source=True)
    c = out.counts
    held = splits.holdout_split(frame["key"].to_list(), 0.1, 0)
    n_held = int(held.sum())                                   # 14 of 120 with this seed
    n_select = max(1, round(0.1 * (120 - n_held)))
    assert c == {"documents": 120, "target": n_held, "select": n_select, "fit": 120 - n_held - n_select,
                 "unusable": 0, "capped": 0}
    assert drawn.counts["held_out"] == n_held and drawn.vectors.shape == (120 - n_held, 8)
    assert list(out.bucket_counts) == ["source", "kmeans", "gem"]
    assert all(sum(v.values()) == c["fit"] for v in out.bucket_counts.values())
    # well-separated embeddings: k-means finds the topics, so its buckets have the topics' sizes
    assert sorted(out.bucket_counts["kmeans"].values()) == sorted(out.bucket_counts["source"].values())
    n_targets = len(out.result.targets) + (len(out.result.targets) > 1)          # + the mean of the sources
    assert out.table.height == 3 * 4 * n_targets and set(out.differences["versus"]) == {"source", "kmeans"}
    md = reports.report_markdown(out, _config())
    assert f"{n_held} held-out target + {n_select} weight-selection + {c['fit']} training + 0 without" in md
    assert "| all | gem | regmix | 4 | 3 |" in md and "GEM minus each other bucketization" in md
    # the pool's vectors are those of its documents
    pool = drawn.frame.filter(~pl.col("target"))
    rows = frame.join(pool.select("key"), on="key", how="semi").sort("key")["vec"].to_numpy()
    np.testing.assert_array_equal(drawn.vectors, vectors[rows])


def test_evaluate_corpus_without_source_and_with_unembedded_documents():
    frame, vectors, sample = _frame(embedded_every=2)        # half the documents have no embedding
    cfg = _config(mixers=("natural", "uniform"))
    out = experiment.evaluate_corpus(_sample(frame, vectors), sample, 4, cfg, select=0.1, use_source=False)
    c = out.counts
    n_held = int(splits.holdout_split(frame["key"].to_list(), 0.1, 0).sum())
    assert c["target"] == n_held and c["fit"] + c["select"] + c["unusable"] == 120 - n_held and c["unusable"] >= 50
    assert list(out.bucket_counts) == ["kmeans", "gem"]
    assert out.result.targets == ["all"]                         # no source targets without labels
    with pytest.raises(ValueError, match="no document has a source label"):
        experiment.evaluate_corpus(_sample(frame.with_columns(pl.lit(None, dtype=pl.String).alias("source")), vectors),
                           sample, 4, _config(), select=0.1, use_source=True)
    with pytest.raises(ValueError, match="at least 2"):
        experiment.evaluate_corpus(_sample(frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("gem")), vectors),
                           sample, 4, _config(), select=0.1, use_source=False)
    # a corpus too small to hold anything out says so
    tiny = frame.head(3)
    assert splits.holdout_split(tiny["key"].to_list(), 0.01, 0).sum() == 0
    with pytest.raises(ValueError, match="no document of 3 was held out"):
        experiment.evaluate_corpus(_sample(tiny, vectors, holdout=0.01), sample, 4, cfg, select=0.1, use_source=False,
                           )


def test_corpus_sampler_is_the_same_in_batches_in_any_order():
    """Offered shard by shard in any order, or all at once: the same samples and counts, and the capped
    samples are the bottom-k draws of the held-out set and of the usable training documents."""
    frame, vectors, _ = _frame(n=200, embedded_every=3)
    frame = frame.with_columns(pl.Series("shard", [f"s{i % 4}" for i in range(200)]))
    caps = dict(max_target_documents=7, max_train_documents=25)
    whole = _sample(frame, vectors, holdout=0.2, **caps)
    sampler = corpus_sample.CorpusSampler(0.2, 0, **caps)
    for (_,), part in sorted(frame.group_by("shard"), key=lambda g: g[0][0], reverse=True):
        sampler.offer(part.sample(fraction=1.0, shuffle=True, seed=1))
    parts = sampler.sample(lambda rows: vectors[rows["vec"].to_numpy()])
    assert whole.frame.equals(parts.frame) and whole.counts == parts.counts
    np.testing.assert_array_equal(whole.vectors, parts.vectors)
    keys = frame["key"]
    held = splits.holdout_split(keys, 0.2, 0)
    usable = frame["vec"].is_not_null().to_numpy()
    target = bottom_k_positions(np.flatnonzero(held), keys, 7, 0, "evaluation/target")
    pool = bottom_k_positions(np.flatnonzero(~held & usable), keys, 25, 0, "evaluation/pool")
    t, p = whole.frame.filter(pl.col("target")), whole.frame.filter(~pl.col("target"))
    assert set(t["key"]) == set(keys.gather(target)) and set(p["key"]) == set(keys.gather(pool))
    assert whole.counts == {"documents": 200, "held_out": int(held.sum()), "unusable": int((~held & ~usable).sum()),
                            "with_source": 200, "target": 7, "pool_available": int((~held & usable).sum()), "pool": 25}
    assert t["vec"].is_null().all() and p["vec"].to_list() == list(range(25))
    with pytest.raises(ValueError, match="lacks the column"):
        corpus_sample.CorpusSampler(0.2, 0).offer(frame.drop("gem"))
    with pytest.raises(ValueError, match="'text' column"):
        s = corpus_sample.CorpusSampler(0.2, 0)
        s.offer(frame.head(5))
        s.offer(frame.slice(5, 5).drop("text"))
    with pytest.raises(ValueError, match="pool cap"):
        corpus_sample.CorpusSampler(0.2, 0, max_train_documents=0)
    with pytest.raises(ValueError, match="holdout"):
        corpus_sample.CorpusSampler(1.0, 0)


# --------------------------------------------------------------------------- bounded memory (issue 8)
class _Layout:
    """What read_texts needs of a Layout: where each shard's documents file is."""

    def __init__(self, root):
        self.root = root

    def documents_path(self, key):
        return self.root / f"{key}.parquet"


def test_texts_read_from_disk_give_the_same_evaluation(tmp_path):
    """Without a text column the evaluation reads only the texts it uses, shard by shard: same result."""
    frame, vectors, sample = _frame()
    frame = frame.with_columns(pl.Series("shard", [f"s{i % 3}" for i in range(frame.height)]))
    frame = frame.with_columns((pl.col("shard") + "/" + pl.col("id")).alias("key"))
    for shard, part in frame.group_by("shard"):
        part.select("id", "text").reverse().write_parquet(tmp_path / f"{shard[0]}.parquet", row_group_size=7)
    layout = _Layout(tmp_path)
    asked = []

    def texts(rows):
        asked.append(rows.height)
        return corpus_sample.read_texts(layout, rows, batch_rows=5)

    a = experiment.evaluate_corpus(_sample(frame, vectors), sample, 4, _config(), select=0.1, use_source=True)
    b = experiment.evaluate_corpus(_sample(frame.drop("text"), vectors), sample, 4, _config(), select=0.1,
                           use_source=True, texts=texts)
    assert a.counts == b.counts and sorted(asked) == sorted([a.counts["fit"], a.counts["select"], a.counts["target"]])
    assert a.result.runs.drop("train_seconds").equals(b.result.runs.drop("train_seconds"))
    assert a.result.weights == b.result.weights
    with pytest.raises(ValueError, match="texts="):
        experiment.evaluate_corpus(_sample(frame.drop("text"), vectors), sample, 4, _config(), select=0.1,
                           use_source=True)
    with pytest.raises(ValueError, match="not in their shard"):
        corpus_sample.read_texts(layout, pl.DataFrame({"shard": ["s0"], "id": ["nope"]}))


def test_caps_bound_the_target_set_and_the_training_pool():
    frame, vectors, sample = _frame(n=200)
    cfg = _config(mixers=("natural", "uniform"))
    out = experiment.evaluate_corpus(_sample(frame, vectors, holdout=0.2, max_target_documents=15, max_train_documents=60),
                             sample, 4, cfg, select=0.1, use_source=False)
    c = out.counts
    n_held = int(splits.holdout_split(frame["key"], 0.2, 0).sum())
    assert c["target"] == 15 and c["fit"] + c["select"] == 60
    assert c["capped"] == (n_held - 15) + (200 - n_held - 60)
    assert c["target"] + c["select"] + c["fit"] + c["unusable"] + c["capped"] == c["documents"] == 200
    assert "left out by the memory caps" in reports.report_markdown(out, cfg)
    # the capped target set is a subset of the uncapped held-out set, the same for the same seed
    keys = frame["key"].to_list()
    held = np.flatnonzero(splits.holdout_split(keys, 0.2, 0))
    one = bottom_k_positions(held, keys, 15, 0, "evaluation/target")
    assert set(one) <= set(held) and one.size == 15 and np.all(np.diff(one) > 0)
    np.testing.assert_array_equal(one, bottom_k_positions(held, keys, 15, 0, "evaluation/target"))
    assert set(bottom_k_positions(held, keys, 15, 1, "evaluation/target")) != set(one)
    np.testing.assert_array_equal(bottom_k_positions(held, keys, None, 0, "evaluation/target"), held)
    with pytest.raises(ValueError, match="target cap"):
        bottom_k_positions(held, keys, 0, 0, "evaluation/target")

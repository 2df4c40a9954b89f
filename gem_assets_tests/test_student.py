"""The fastText-style student (gem_assets.lib.student: features, classifier): features, training, persistence, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TOPICS
from gem_assets.lib.student.classifier import StudentClassifier
from gem_assets.lib.student.features import Featurizer, tokenize

NAMES = sorted(TOPICS)
SMALL = dict(dim=16, buckets=1 << 14, epochs=8, batch_size=16, random_state=0)


def topic_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Short texts of the four conftest topics (label = topic index), 8 topic words each."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        k = i % len(NAMES)
        texts.append(" ".join(rng.choice(TOPICS[NAMES[k]].split(), size=8)))
        labels.append(k)
    return texts, np.array(labels)


def test_tokenize_lowercases_and_splits_on_non_word():
    assert tokenize("Hello, World! it's 2024") == ["hello", "world", "it", "s", "2024"]
    assert tokenize("Ünïcode ΕΛΛΗΝΙΚΆ 日本語") == ["ünïcode", "ελληνικά", "日本語"]
    assert tokenize("") == [] and tokenize(" ... ") == []


def test_featurizer_batches_equal_single_texts_and_bigrams_stay_inside_a_text():
    f = Featurizer(1 << 16, word_ngrams=2)
    texts = ["the cat sat", "", "dog", "the cat sat on the mat", "!!"]
    ids, offsets = f.transform(texts)
    assert offsets.tolist() == [0, 5, 5, 6, 6 + 11]  # 3+2, 0, 1+0, 6+5, 0
    assert ids.min() >= 0 and ids.max() < 1 << 16
    ends = list(offsets[1:]) + [ids.size]
    for t, s, e in zip(texts, offsets, ends):
        single, off = f.transform([t])
        assert off.tolist() == [0] and sorted(single.tolist()) == sorted(ids[s:e].tolist())
    # "a b" has a bigram; "a" and "b" as two texts have none
    two, _ = f.transform(["alpha", "beta"])
    one, _ = f.transform(["alpha beta"])
    assert set(two.tolist()) < set(one.tolist()) and one.size == 3
    uni, _ = Featurizer(1 << 16, word_ngrams=1).transform(["alpha beta"])
    assert uni.size == 2
    # order matters for bigrams
    assert set(f.transform(["beta alpha"])[0].tolist()) != set(one.tolist())


def test_char_ngrams_share_features_between_spelling_variants():
    f = Featurizer(1 << 18, word_ngrams=1, char_ngrams=(3, 5))
    a, _ = f.transform(["organisation"])
    b, _ = f.transform(["organization"])
    assert a.size > 10 and len(set(a.tolist()) & set(b.tolist())) >= 10


def test_hashing_is_the_same_in_another_process():
    texts = ["Hash me, deterministically", "Ünïcode ελληνικά 日本語 text", ""]
    ids, offsets = Featurizer(1 << 20, word_ngrams=2, char_ngrams=(3, 4)).transform(texts)
    code = (
        "import json, sys; from gem_assets.lib.student.features import Featurizer; "
        "ids, off = Featurizer(1 << 20, word_ngrams=2, char_ngrams=(3, 4)).transform(json.loads(sys.argv[1])); "
        "print(json.dumps([ids.tolist(), off.tolist()]))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True,
                             env=env, check=True).stdout
        assert json.loads(out) == [ids.tolist(), offsets.tolist()]


def test_learns_an_obvious_toy_corpus_from_hard_labels():
    texts, y = topic_texts(200, seed=0)
    model = StudentClassifier(4, **SMALL).fit(texts, y)
    test, ty = topic_texts(80, seed=1)
    assert np.mean(model.predict(test) == ty) == 1.0
    proba = model.predict_proba(test)
    assert proba.shape == (80, 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert [h["epoch"] for h in model.history_] == list(range(1, 9))
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]
    labels, conf = model.predict_with_confidence(test)
    assert np.array_equal(labels, model.predict(test)) and np.all((conf > 0.25) & (conf <= 1.0))


def _kl(p, q):
    return float(np.mean(np.sum(p * (np.log(p) - np.log(np.clip(q, 1e-12, None))), axis=1)))


def test_soft_targets_match_the_teacher_distribution_better_than_hard():
    texts, y = topic_texts(240, seed=2)
    # a teacher that is sure of some topics and hesitant about others
    rows = np.array([[0.70, 0.20, 0.05, 0.05],
                     [0.15, 0.55, 0.15, 0.15],
                     [0.05, 0.05, 0.85, 0.05],
                     [0.10, 0.10, 0.30, 0.50]])
    P = rows[y]
    params = {**SMALL, "epochs": 15}
    soft = StudentClassifier(4, **params).fit(texts, P)
    hard = StudentClassifier(4, **params).fit(texts, P.argmax(axis=1))
    test, ty = topic_texts(80, seed=3)
    ps, ph = soft.predict_proba(test), hard.predict_proba(test)
    assert np.array_equal(ps.argmax(axis=1), rows[ty].argmax(axis=1))  # reproduces the teacher's argmax
    kl_soft, kl_hard = _kl(rows[ty], ps), _kl(rows[ty], ph)
    assert kl_soft < 0.05 and kl_soft < kl_hard / 3, (kl_soft, kl_hard)
    # the teacher's confidence is matched, not pushed to one
    assert abs(float(ps[ty == 1, 1].mean()) - 0.55) < 0.1


def test_eval_set_and_hard_weight_recorded():
    texts, y = topic_texts(80, seed=4)
    P = np.full((80, 4), 0.1)
    P[np.arange(80), y] = 0.7
    # the evaluation targets: the first 20 training rows, 5 of them pointing to the next topic instead
    eP = P[:20].copy()
    eP[:5] = np.roll(eP[:5], 1, axis=1)
    params = {**SMALL, "epochs": 6}
    model = StudentClassifier(4, **params, hard_weight=0.5).fit(texts, P, eval_set=(texts[:20], eP))
    rec = model.history_[-1]
    assert {"eval_loss", "eval_agreement", "train_agreement", "seconds"} <= set(rec)
    # the last epoch's evaluation is the final model's: KL(targets || student) in nats, top-1 agreement
    proba = model.predict_proba(texts[:20]).astype(np.float64)
    assert rec["eval_loss"] == pytest.approx(float(np.mean(np.sum(eP * np.log(eP / proba), axis=1))), rel=1e-6)
    assert np.array_equal(proba.argmax(1), y[:20]) and rec["eval_agreement"] == 15 / 20
    # KL(P || q) + w CE(argmax P, q) is least at q = (P + w e_argmax) / (1 + w): with w = 0.5 the topic's
    # probability is 1.2 / 1.5 = 0.8 instead of the teacher's 0.7 (what the student learns without it)
    soft = StudentClassifier(4, **params).fit(texts, P)
    for m, want in ((soft, 0.7), (model, 0.8)):
        assert abs(float(m.predict_proba(texts)[np.arange(80), y].mean()) - want) < 0.02


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    texts, y = topic_texts(60, seed=5)
    model = StudentClassifier(4, **{**SMALL, "char_ngrams": (3, 4)}).fit(texts, y)
    model.save(tmp_path / "student")
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["config.json", "model.safetensors"]
    loaded = StudentClassifier.load(tmp_path / "student")
    probe = texts[:10] + ["", "日本語 only", "unseen words entirely"]
    np.testing.assert_array_equal(loaded.predict_proba(probe), model.predict_proba(probe))
    assert loaded.get_params() == model.get_params() and loaded.history_ == model.history_
    # overwriting an existing model folder works (atomic replace)
    model.save(tmp_path / "student")
    np.testing.assert_array_equal(StudentClassifier.load(tmp_path / "student").predict(probe), model.predict(probe))


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no student model"):
        StudentClassifier.load(tmp_path)
    texts, y = topic_texts(20, seed=6)
    StudentClassifier(4, **{**SMALL, "epochs": 1}).fit(texts, y).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["hash_scheme"] = "something else"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hashing scheme"):
        StudentClassifier.load(tmp_path / "m")


def test_empty_and_non_ascii_texts():
    texts, y = topic_texts(80, seed=7)
    extra = ["", "   ", "?!...", "日本語のテキストです", "Ελληνικά: ποδόσφαιρο γκολ", "emoji 🎉🎉 match goal", "naïve café"]
    model = StudentClassifier(4, **SMALL).fit(texts + extra, np.concatenate([y, [0, 0, 0, 1, 2, 0, 3]]))
    proba = model.predict_proba(["", "  \n\t ", "...", "日本語のテキストです", "naïve café", "\x00"])
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # a text without words gets softmax(bias): the same prediction for all of them
    bias = model._linear.bias.detach().numpy().astype(np.float64)
    prior = np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum()
    for row in (0, 1, 2, 5):
        np.testing.assert_allclose(proba[row], prior, atol=1e-5)
    assert model.predict(["日本語のテキストです"])[0] == 1
    assert model.predict_proba([]).shape == (0, 4)


def test_seeded_training_is_reproducible():
    texts, y = topic_texts(60, seed=8)
    a = StudentClassifier(4, **SMALL).fit(texts, y)
    b = StudentClassifier(4, **SMALL).fit(texts, y)
    c = StudentClassifier(4, **{**SMALL, "random_state": 1}).fit(texts, y)
    np.testing.assert_array_equal(a.predict_proba(texts), b.predict_proba(texts))
    assert a.history_[-1]["loss"] == b.history_[-1]["loss"]
    assert not np.array_equal(a.predict_proba(texts), c.predict_proba(texts))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_classes=1), "n_classes"),
        (dict(n_classes=4, word_ngrams=4), "word_ngrams"),
        (dict(n_classes=4, char_ngrams=(4, 2)), "char_ngrams"),
        (dict(n_classes=4, lr=0.0), "lr"),
        (dict(n_classes=4, device="tpu"), "device"),
        (dict(n_classes=4, dim=0), "dim"),
    ],
)
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudentClassifier(**kwargs)


def test_invalid_inputs():
    m = StudentClassifier(3, **{**SMALL, "epochs": 1})
    with pytest.raises(ValueError, match="not fitted"):
        m.predict(["a"])
    with pytest.raises(ValueError, match="2 texts but 3 targets"):
        m.fit(["a", "b"], [0, 1, 2])
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        m.fit(["a", "b"], [0, 3])
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        m.fit(["a", "b"], [-1, 0])
    with pytest.raises(ValueError, match="sum to 1"):
        m.fit(["a", "b"], [[0.5, 0.4, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="non-negative"):
        m.fit(["a", "b"], [[1.5, -0.5, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        m.fit(["a", "b"], [[np.nan, 0.5, 0.5], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="columns"):
        m.fit(["a", "b"], [[0.5, 0.5], [1.0, 0.0]])
    with pytest.raises(ValueError, match="integer class labels"):
        m.fit(["a", "b"], [0.5, 1.0])
    with pytest.raises(ValueError, match="single string"):
        m.fit("ab", [0, 1])
    with pytest.raises(ValueError, match="not str"):
        m.fit(["a", None], [0, 1])
    with pytest.raises(ValueError, match="at least one text"):
        m.fit([], [])


def test_label_parquet_leaves_out_the_skipped_ids_and_counts_what_it_labelled(tmp_path):
    import polars as pl

    from gem_assets.lib.student.labeling import label_parquet

    texts, y = topic_texts(200, seed=0)
    model = StudentClassifier(4, **SMALL).fit(texts, y)
    test, ty = topic_texts(12, seed=1)
    ids = [f"d{i}" for i in range(12)]
    pl.DataFrame({"id": ids, "text": test}).write_parquet(tmp_path / "docs.parquet")
    out = label_parquet(model, tmp_path / "docs.parquet", tmp_path / "labels.parquet", batch_rows=5,
                        skip_ids={"d0", "d5", "d11"})  # cross-shard duplicates: not labelled, not counted
    labels = pl.read_parquet(tmp_path / "labels.parquet")
    kept = [i for i in range(12) if ids[i] not in {"d0", "d5", "d11"}]
    assert labels["id"].to_list() == [ids[i] for i in kept]
    assert labels["domain"].to_list() == [int(ty[i]) for i in kept]  # the toy topics, learnt exactly
    assert (out["n"], out["skipped"]) == (9, 3) and sum(out["counts"]) == 9
    assert out["counts"] == np.bincount(ty[kept], minlength=4).tolist()
    assert out["tokens"] == [sum(len(test[i].split()) for i in kept if ty[i] == k) for k in range(4)]
    assert out["docs_per_s"] == pytest.approx(9 / out["seconds"], rel=1e-12)  # the labelled ones, not the skipped

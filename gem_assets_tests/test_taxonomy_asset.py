"""The ``taxonomy`` asset with Dagster's API on the tiny corpus (hashing embedder), and its ``make run`` stage."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
from dagster import AssetKey, materialize

from conftest import TOPICS
from gem_assets.config import Layout
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.partitions import SHARDS
from gem_assets.defs.student import domain_assignments, student_model
from gem_assets.defs.taxonomy import taxonomy
from gem_assets.defs.versions import data_version
from gem_assets.defs.teacher import teacher_clusters, teacher_sample
from gem_assets.lib.taxonomy.terms import STOP_WORDS

from conftest import make_resources

KEYS = ["a.jsonl", "b.jsonl", "c.parquet"]


def _upstream(instance, res):
    instance.add_dynamic_partitions(SHARDS, KEYS)
    for key in KEYS:
        assert materialize([documents, embeddings], partition_key=key, instance=instance, resources=res).success
    assert materialize([teacher_sample, teacher_clusters, student_model], instance=instance, resources=res).success
    for key in KEYS:
        assert materialize([domain_assignments], partition_key=key, instance=instance, resources=res).success


def test_taxonomy_asset_writes_the_named_tree(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=0.0)
    _upstream(instance, res)
    result = materialize([taxonomy], instance=instance, resources=res)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"named_domains": True, "no_stop_words": True, "exemplars": True}
    md = {k: v.value for k, v in list(result.asset_materializations_for_node("taxonomy"))[-1].metadata.items()}
    assert md["K"] == 4 and md["n_documents"] == 120 and md["n_embedded"] == 120
    assert md["dendrogram"].startswith("![GEM domain tree](data:image/png;base64,")
    assert md["domain_map"].startswith("![GEM domains, 2-D map](data:image/png;base64,")
    assert md["taxonomy"].startswith("**Tree**") and "| domain | name | share | kappa |" in md["taxonomy"]
    assert "| gis |" in md["name_quality"] and "| ctfidf |" in md["name_quality"]
    assert md["mlflow_status"] == "disabled"

    layout = Layout(gem_home.resolve())
    tax = json.loads(layout.taxonomy_path.read_text())
    assert tax["fingerprint"] == md["input_fingerprint"] and tax["shards"] == KEYS and tax["k"] == 4
    assert tax["n_documents"] == 120
    docs = pl.concat([pl.read_parquet(layout.documents_path(k)) for k in KEYS])
    labels = pl.concat([pl.read_parquet(layout.assignments_path(k)) for k in KEYS])
    counts = np.bincount(labels["domain"].to_numpy(), minlength=4)
    text_of = dict(zip(docs["id"].to_list(), docs["text"].to_list()))
    topic_words = {w for words in TOPICS.values() for w in words.split()}
    assert [d["id"] for d in tax["domains"]] == [0, 1, 2, 3]
    for d in tax["domains"]:
        assert d["name"] and d["top_terms"] and len(d["top_terms"]) <= 10
        assert d["n_documents"] == counts[d["id"]] and abs(d["share"] - counts[d["id"]] / 120) < 1e-12
        scores = [t["score"] for t in d["top_terms"]]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0
        # the tiny corpus's planted topic words name the domains; no stop word or number does
        assert d["top_terms"][0]["term"] in topic_words
        assert all(w not in STOP_WORDS and w.isalpha() for t in d["top_terms"] for w in t["term"].split())
        assert d["concentration"] > 0 and d["parent"] >= 4
        # the profile keeps 5 exemplars and every domain of the tiny corpus has more than 5 documents:
        # exactly 5, distinct, in decreasing posterior
        assert counts[d["id"]] > 5 and len(d["exemplars"]) == 5
        post = [ex["posterior"] for ex in d["exemplars"]]
        assert post == sorted(post, reverse=True) and len({ex["id"] for ex in d["exemplars"]}) == 5
        for ex in d["exemplars"]:
            assert ex["id"] in text_of and " ".join(text_of[ex["id"]].split()).startswith(ex["snippet"].rstrip("\u2026"))
    assert abs(sum(d["share"] for d in tax["domains"]) - 1) < 1e-12
    nodes = tax["tree"]["nodes"]
    assert len(nodes) == 3 and tax["tree"]["root"] == 6 and nodes[-1]["parent"] is None
    assert sorted(nodes[-1]["domains"]) == [0, 1, 2, 3] and abs(nodes[-1]["share"] - 1) < 1e-12
    for n in nodes:
        assert n["name"] and all(c < n["id"] for c in n["children"])
    assert set(tax["quality"]) == {"gis", "ctfidf"} and -1 <= tax["quality"]["gis"]["npmi"] <= 1
    for name in ("taxonomy.md", "dendrogram.png", "domain_map.png"):
        assert (layout.taxonomy_dir / name).is_file()
    # the data version reported to Dagster is derived from the recorded fingerprint
    event = instance.get_latest_materialization_event(AssetKey("taxonomy")).asset_materialization
    assert event.tags["dagster/data_version"] == data_version("taxonomy", tax["fingerprint"])


def test_taxonomy_without_assignments_fails_clearly(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4)
    result = materialize([taxonomy], instance=instance, resources=res, raise_on_error=False)
    assert not result.success
    desc = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0] \
        .step_failure_data.user_failure_data.description
    assert "materialize 'teacher_clusters' first" in desc

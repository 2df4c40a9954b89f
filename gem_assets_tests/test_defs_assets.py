"""Assets materialized with Dagster's own API on a tiny corpus and the hashing embedder."""

from __future__ import annotations

import logging
import os

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, materialize

from conftest import make_docs, make_resources, write_jsonl
from gem_assets.config import Layout
from gem_assets.definitions import ASSETS
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.partitions import SHARDS
from gem_assets.defs.teacher import teacher_clusters, teacher_sample
from gem_assets.lib.io import artifacts
from gem_assets.lib.io import storage


def _mat_metadata(result, asset: str) -> dict:
    mats = [m for m in result.asset_materializations_for_node(asset)]
    assert mats, f"no materialization of {asset}"
    return {k: v.value for k, v in mats[-1].metadata.items()}


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _shard_run(instance, resources, key, **kw):
    return materialize([documents, embeddings], partition_key=key, instance=instance, resources=resources, **kw)


def test_shard_assets_outputs_and_checks(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl", "b.jsonl", "c.parquet"])
    result = _shard_run(instance, res, "c.parquet")
    assert result.success
    doc_md = _mat_metadata(result, "documents")
    assert (doc_md["rows_in"], doc_md["kept"], doc_md["quarantined"]) == (40, 40, 0)
    emb_md = _mat_metadata(result, "embeddings")
    assert emb_md["n_vectors"] == 40 and emb_md["dim"] == 32 and not emb_md["sampled"]
    assert _checks(result) == {"document_conservation": True, "finite": True, "unit_norm": True,
                               "one_per_document": True}
    layout = Layout(gem_home.resolve())
    vectors, index, meta = artifacts.read_embeddings(layout, "c.parquet")
    assert vectors.dtype == np.float32 and vectors.shape == (40, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    kept = pl.read_parquet(layout.documents_path("c.parquet"))
    assert index["id"].to_list() == kept["id"].to_list()
    assert set(index.columns) == {"row", "id", "source"}
    assert meta["shard_sha256"] == doc_md["shard_sha256"]
    # throughput: the documents embedded over the seconds measured (recorded in full, shown rounded)
    assert meta["docs_per_s"] == pytest.approx(meta["n_vectors"] / meta["seconds"], rel=1e-12)
    assert emb_md["docs_per_s"] == round(meta["docs_per_s"], 2) and emb_md["seconds"] == round(meta["seconds"], 3)
    # the partition is recorded for that shard only
    assert instance.get_materialized_partitions(AssetKey("embeddings")) == {"c.parquet"}


def test_embedding_cap_draws_a_seeded_sample(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), embed_cap=10)
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl"])
    result = _shard_run(instance, res, "a.jsonl")
    md = _mat_metadata(result, "embeddings")
    assert md["n_vectors"] == 10 and md["n_documents"] == 40 and md["sampled"]
    assert _checks(result)["one_per_document"]
    _, index, meta = artifacts.read_embeddings(Layout(gem_home.resolve()), "a.jsonl")
    assert meta["docs_per_s"] == pytest.approx(10 / meta["seconds"], rel=1e-12)  # the embedded ones, not all 40
    ids1 = index["id"].to_list()
    _shard_run(instance, res, "a.jsonl")
    assert artifacts.read_embeddings(Layout(gem_home.resolve()), "a.jsonl")[1]["id"].to_list() == ids1


def test_bad_rows_quarantined_with_conservation(tmp_path, gem_home, instance):
    rows = make_docs(6)
    rows += [{"id": "n", "text": None, "source": "x"}, {"id": "e", "text": "  ", "source": "x"},
             {"id": rows[0]["id"], "text": "dup", "source": "x"}, {"id": "long", "text": "y" * 500, "source": "x"}]
    path = write_jsonl(tmp_path / "corpus" / "bad.jsonl", rows)
    with open(path, "ab") as f:
        f.write(b'{"id": "u", "text": "\xff\xfe", "source": "x"}\n')
    res = make_resources(gem_home, str(tmp_path / "corpus" / "*"), max_chars=200)
    instance.add_dynamic_partitions(SHARDS, ["bad.jsonl"])
    result = _shard_run(instance, res, "bad.jsonl")
    assert result.success
    md = _mat_metadata(result, "documents")
    assert md["rows_in"] == 11 == md["kept"] + md["quarantined"]
    assert md["kept"] == 6
    assert {r: md[f"quarantined_{r}"] for r in ("null_text", "empty_text", "duplicate_id", "too_long", "invalid_utf8")} \
        == {"null_text": 1, "empty_text": 1, "duplicate_id": 1, "too_long": 1, "invalid_utf8": 1}
    assert "quarantine_preview" in md
    q = pl.read_parquet(Layout(gem_home.resolve()).quarantine_path("bad.jsonl"))
    assert q.height == 5 and q["reason"].null_count() == 0
    assert _checks(result)["document_conservation"] and _checks(result)["one_per_document"]
    assert _mat_metadata(result, "embeddings")["n_vectors"] == 6


def test_corrupt_shard_fails_its_partition_only(tiny_corpus, gem_home, instance):
    (tiny_corpus / "z.parquet").write_bytes(b"PAR1 garbage")
    write_jsonl(tiny_corpus / "notext.jsonl", [{"id": "a", "body": "x"}])
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl", "z.parquet", "notext.jsonl"])
    bad = _shard_run(instance, res, "z.parquet", raise_on_error=False)
    assert not bad.success
    failure = [e for e in bad.all_events if e.event_type_value == "STEP_FAILURE"][0]
    desc = failure.step_failure_data.user_failure_data.description
    assert "corrupt shard" in desc and "z.parquet" in desc
    notext = _shard_run(instance, res, "notext.jsonl", raise_on_error=False)
    assert not notext.success
    desc = [e for e in notext.all_events if e.event_type_value == "STEP_FAILURE"][0] \
        .step_failure_data.user_failure_data.description
    assert "text column 'text' not found" in desc and "notext.jsonl" in desc
    good = _shard_run(instance, res, "a.jsonl")
    assert good.success
    assert instance.get_materialized_partitions(AssetKey("embeddings")) == {"a.jsonl"}


def _materialize_all(instance, res, keys):
    instance.add_dynamic_partitions(SHARDS, keys)
    for key in keys:
        assert _shard_run(instance, res, key).success
    return materialize([teacher_sample, teacher_clusters], instance=instance, resources=res)


def test_teacher_sample_and_clusters(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4)
    result = _materialize_all(instance, res, ["a.jsonl", "b.jsonl", "c.parquet"])
    assert result.success
    sample_md = _mat_metadata(result, "teacher_sample")
    assert sample_md["n"] == 120 and sample_md["per_shard"] == {"a.jsonl": 40, "b.jsonl": 40, "c.parquet": 40}
    md = _mat_metadata(result, "teacher_clusters")
    assert md["K"] == 4 and md["dead_domains"] == 0 and md["n_sample"] == 120
    assert abs(sum(md["shares"]["soft"]) - 1) < 1e-6 and len(md["shares"]["hard"]) == 4
    assert md["share_chart"].startswith("![domain shares](data:image/png;base64,")
    assert md["objective_curve"].startswith("![MM objective](data:image/png;base64,")
    assert md["mlflow_status"] == "disabled"
    assert md["input_fingerprint"] == sample_md["input_fingerprint"]
    assert _checks(result) == {"no_dead_domain": True, "objective_non_decreasing": True}

    out = Layout(gem_home.resolve()).teacher_outputs_dir
    for name in ("means.npy", "concentrations.npy", "center.npy", "domains.csv", "history.csv", "shares.json",
                 "assignments.parquet", "summary.json", "shares.png", "objective.png", "model/model.safetensors",
                 "model/model.json"):
        assert (out / name).is_file(), name
    means = np.load(out / "means.npy", allow_pickle=False)
    assert means.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, atol=1e-6)
    assign = pl.read_parquet(out / "assignments.parquet")
    assert assign.height == 120 and set(assign.columns) >= {"shard", "id", "source", "domain", "confidence"}
    domains = pl.read_csv(out / "domains.csv")
    assert domains["n_docs"].sum() == 120 and "top_source" in domains.columns
    summary = storage.read_json(out / "summary.json")
    assert summary["nmi_vs_source"] > 0.5  # four separable topics
    assert (out / "shares.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from gem_assets.lib.teacher.gem import GEM

    # the saved model reproduces the recorded assignment of every document from its embedding
    model = GEM.load(out / "model")
    for key in ("a.jsonl", "b.jsonl", "c.parquet"):
        vectors, index, _ = artifacts.read_embeddings(Layout(gem_home.resolve()), key)
        want = index.select("id").join(assign.filter(pl.col("shard") == key), on="id", how="left")["domain"]
        np.testing.assert_array_equal(model.predict(vectors), want.to_numpy())
    assert model.predict(means).tolist() == [0, 1, 2, 3]   # each mean direction in its own domain


def test_teacher_sample_is_stratified_and_leaves_out_unembedded(tiny_corpus, gem_home, instance):
    write_jsonl(tiny_corpus / "d.jsonl", make_docs(80, seed=9, prefix="d"))
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl", "b.jsonl", "c.parquet", "d.jsonl"])
    for key in ("a.jsonl", "d.jsonl"):
        assert _shard_run(instance, res, key).success
    result = materialize([teacher_sample], instance=instance, resources=res)
    md = _mat_metadata(result, "teacher_sample")
    assert md["per_shard"] == {"a.jsonl": 40, "d.jsonl": 48}  # smoke caps d at 48; sample >= all: everything
    assert set(md["excluded_shards"]) == {"b.jsonl", "c.parquet"}
    small = make_resources(gem_home, str(tiny_corpus / "*"), teacher_sample_size=44)
    md = _mat_metadata(materialize([teacher_sample], instance=instance, resources=small), "teacher_sample")
    assert md["per_shard"] == {"a.jsonl": 20, "d.jsonl": 24} and md["n"] == 44  # proportional to 40 : 48
    _, sample, _ = artifacts.read_teacher_sample(Layout(gem_home.resolve()))
    assert sample.group_by("shard").len().sort("shard")["len"].to_list() == [20, 24]
    assert sample["id"].n_unique() == 44


def test_teacher_without_embeddings_fails_clearly(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    result = materialize([teacher_sample], instance=instance, resources=res, raise_on_error=False)
    assert not result.success
    desc = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0] \
        .step_failure_data.user_failure_data.description
    assert "no embedded shard" in desc


def test_mlflow_run_logged(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), mlflow=True)
    result = _materialize_all(instance, res, ["a.jsonl", "b.jsonl"])
    md = _mat_metadata(result, "teacher_clusters")
    assert md["mlflow_status"] == "logged" and md["mlflow_run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{gem_home.resolve() / 'mlflow.db'}")
    run = client.get_run(md["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["dagster.partition_keys"] == "a.jsonl,b.jsonl"
    assert run.data.params["k"] == "4" and "balance" in run.data.params
    hist = client.get_metric_history(run.info.run_id, "objective")
    steps = [m.step for m in hist]
    assert steps == sorted(steps) and steps[0] == 0 and len(steps) == md["n_iter"] + 1
    values = [m.value for m in sorted(hist, key=lambda m: m.step)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    for key in ("balance_entropy", "effective_k", "min_share", "max_share", "loglik"):
        assert client.get_metric_history(run.info.run_id, key), key
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"shares.png", "objective.png", "domains.csv", "summary.json"} <= names
    assert (gem_home / "mlartifacts").is_dir()


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "sqlite:////nonexistent-dir/for/mlflow.db"])
def test_mlflow_unreachable_warns_and_keeps_asset(tiny_corpus, gem_home, instance, uri):
    res = make_resources(gem_home, str(tiny_corpus / "*"), mlflow=True, tracking_uri=uri)
    result = _materialize_all(instance, res, ["a.jsonl"])
    assert result.success
    md = _mat_metadata(result, "teacher_clusters")
    assert md["mlflow_status"] == "unreachable" and "unreachable" in md["mlflow_message"]
    assert (gem_home / "outputs" / "teacher" / "summary.json").is_file()
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("MLflow tracking store" in w and "GEM_MLFLOW_ON_ERROR=fail" in w for w in warnings)
    assert instance.get_latest_materialization_event(AssetKey("teacher_clusters")) is not None


def test_mlflow_unreachable_fails_when_asked(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), mlflow=True, tracking_uri="http://127.0.0.1:9",
                         on_error="fail")
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl"])
    assert _shard_run(instance, res, "a.jsonl").success
    result = materialize([teacher_sample, teacher_clusters], instance=instance, resources=res, raise_on_error=False)
    assert not result.success
    assert instance.get_latest_materialization_event(AssetKey("teacher_clusters")) is None
    # an unreachable store may be transient: the step was retried (RetryPolicy) before the run failed
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2
    assert teacher_clusters.op.retry_policy.delay == float(os.environ["GEM_RETRY_DELAY_S"])  # the setting's


def test_asset_graph_lineage():
    keys = {a.key.to_user_string(): a for a in ASSETS}
    assert set(keys) >= {"documents", "embeddings", "teacher_sample", "teacher_clusters", "student_model",
                         "domain_assignments", "domain_stats", "taxonomy"}
    assert AssetKey("documents") in keys["embeddings"].dependency_keys
    assert AssetKey("embeddings") in keys["teacher_sample"].dependency_keys
    assert AssetKey("teacher_sample") in keys["teacher_clusters"].dependency_keys
    assert keys["documents"].partitions_def.name == SHARDS
    assert keys["teacher_sample"].partitions_def is None
    assert {AssetKey(a) for a in ("teacher_clusters", "domain_assignments", "embeddings", "documents")} <= \
        set(keys["taxonomy"].dependency_keys) and keys["taxonomy"].partitions_def is None

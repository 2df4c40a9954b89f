"""student_model, domain_assignments and domain_stats with Dagster's API on the tiny corpus (hashing embedder)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, materialize

from conftest import make_docs, make_resources, write_jsonl
from gem_assets.config import Layout
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.partitions import SHARDS
from gem_assets.defs.student import domain_assignments, domain_stats, student_model
from gem_assets.defs.teacher import teacher_clusters, teacher_sample
from gem_assets.lib.io import storage
from gem_assets.lib.student.agreement import confusion_matrix, share_kl
from gem_assets.lib.student.classifier import StudentClassifier

KEYS = ["a.jsonl", "b.jsonl", "c.parquet"]


def _md(result, asset: str) -> dict:
    mats = list(result.asset_materializations_for_node(asset))
    assert mats, f"no materialization of {asset}"
    return {k: v.value for k, v in mats[-1].metadata.items()}


def _checks(result) -> dict[str, tuple[bool, str]]:
    return {e.check_name: (e.passed, e.severity.value) for e in result.get_asset_check_evaluations()}


def _teacher(instance, res, keys=KEYS):
    instance.add_dynamic_partitions(SHARDS, keys)
    for key in keys:
        assert materialize([documents, embeddings], partition_key=key, instance=instance, resources=res).success
    assert materialize([teacher_sample, teacher_clusters], instance=instance, resources=res).success


def _assign(instance, res, keys=KEYS):
    return {key: materialize([domain_assignments], partition_key=key, instance=instance, resources=res)
            for key in keys}


def test_student_assignments_and_stats(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=0.5)
    _teacher(instance, res)
    result = materialize([student_model], instance=instance, resources=res)
    assert result.success
    md = _md(result, "student_model")
    assert md["K"] == 4 and md["n_train"] + md["n_heldout"] == 120 and md["n_heldout"] == 24
    assert md["heldout_agreement"] >= 0.5
    assert md["confusion"].startswith("![student vs teacher confusion](data:image/png;base64,")
    assert "| domain | heldout_docs | agreement | student_docs |" in md["per_domain"]
    assert md["mlflow_status"] == "disabled"
    assert _checks(result) == {"heldout_agreement": (True, "WARN")}
    layout = Layout(gem_home.resolve())
    out = layout.student_outputs_dir
    for name in ("model/model.safetensors", "model/config.json", "summary.json", "history.csv", "per_domain.csv",
                 "heldout.parquet", "confusion.png"):
        assert (out / name).is_file(), name
    summary = storage.read_json(out / "summary.json")
    assert summary["fingerprint"] == md["input_fingerprint"] and len(summary["confusion"]) == 4
    assert np.sum(summary["confusion"]) == 24
    heldout = pl.read_parquet(out / "heldout.parquet")
    assert heldout.height == 24 and float((heldout["teacher"] == heldout["student"]).mean()) == md["heldout_agreement"]

    runs = _assign(instance, res)
    model = StudentClassifier.load(out / "model")
    for key, run in runs.items():
        assert run.success
        checks = _checks(run)
        assert checks["assigned_once"] == (True, "ERROR")
        amd = _md(run, "domain_assignments")
        ameta = storage.read_json(layout.assignments_meta_path(key))   # throughput: 40 documents over the seconds
        assert amd["n_documents"] == ameta["n"] == 40 and amd["seconds"] == round(ameta["seconds"], 3)
        assert ameta["docs_per_s"] == pytest.approx(40 / ameta["seconds"], rel=1e-12)
        assert amd["docs_per_s"] == round(ameta["docs_per_s"], 1)
        assign = pl.read_parquet(layout.assignments_path(key))
        docs = pl.read_parquet(layout.documents_path(key))
        assert assign.columns == ["id", "domain", "confidence", "n_bytes", "n_tokens"]
        assert assign["id"].to_list() == docs["id"].to_list()
        texts = docs["text"].to_list()
        labels, conf = model.predict_with_confidence(texts)
        assert assign["domain"].to_list() == labels.tolist()
        np.testing.assert_allclose(assign["confidence"].to_numpy(), conf)
        assert assign["n_tokens"].to_list() == [len(t.split()) for t in texts]
        assert assign["n_bytes"].to_list() == [len(t.encode()) for t in texts]
    assert instance.get_materialized_partitions(AssetKey("domain_assignments")) == set(KEYS)

    stats = materialize([domain_stats], instance=instance, resources=res)
    assert stats.success and _checks(stats) == {"documents_conserved": (True, "ERROR")}
    smd = _md(stats, "domain_stats")
    table = pl.read_csv(layout.domain_stats_dir / "domain_stats.csv")
    all_texts = pl.concat([pl.read_parquet(layout.documents_path(k)) for k in KEYS])["text"].to_list()
    assert smd["documents"] == table["documents"].sum() == 120
    assert smd["tokens"] == sum(len(t.split()) for t in all_texts)
    assert smd["bytes"] == sum(len(t.encode()) for t in all_texts)
    assert table.height == 4 and abs(table["document_share"].sum() - 1) < 1e-9


def test_agreement_check_warns_but_materializes(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=1.01)
    _teacher(instance, res, ["a.jsonl"])
    result = materialize([student_model], instance=instance, resources=res)
    assert result.success  # a warning check, not a failure
    assert _checks(result) == {"heldout_agreement": (False, "WARN")}
    assert instance.get_latest_materialization_event(AssetKey("student_model")) is not None


def test_drift_check_flags_a_one_topic_shard(tiny_corpus, gem_home, instance):
    one_topic = [r for r in make_docs(160, seed=11, prefix="s") if r["source"] == "sport"]
    write_jsonl(tiny_corpus / "sport.jsonl", one_topic)
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_drift_kl=0.2)
    _teacher(instance, res)
    assert materialize([student_model], instance=instance, resources=res).success
    instance.add_dynamic_partitions(SHARDS, ["sport.jsonl"])
    assert materialize([documents], partition_key="sport.jsonl", instance=instance, resources=res).success
    runs = _assign(instance, res, ["a.jsonl", "sport.jsonl"])
    assert _checks(runs["a.jsonl"])["share_drift"] == (True, "WARN")
    drift = runs["sport.jsonl"]
    assert drift.success and _checks(drift)["share_drift"] == (False, "WARN")
    assert _md(drift, "domain_assignments")["kl_vs_teacher"] > 0.2


def test_share_kl_by_hand():
    assert share_kl([25, 25, 25, 25], [0.25] * 4) == pytest.approx(0.0, abs=1e-15)
    # counts (3, 1) + 0.5 each: p = (3.5, 1.5) / 5 = (0.7, 0.3) against (0.5, 0.5)
    assert share_kl([3, 1], [0.5, 0.5]) == pytest.approx(0.7 * math.log(1.4) + 0.3 * math.log(0.6), rel=1e-12)
    assert share_kl([3, 1], [0.5, 0.5], smoothing=0.0) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    # a reference share of 0 is floored at 1e-6 (then renormalized): finite
    p, q = np.array([10.5, 0.5]) / 11, np.array([1.0, 1e-6]) / (1 + 1e-6)
    assert share_kl([10, 0], [1.0, 0.0]) == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)   # 0.4877


def test_confusion_matrix_by_hand():
    # teacher (0, 0, 1, 2, 2), student (0, 1, 1, 0, 2), K = 4: domain 3 keeps a row and a column of zeros
    m = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 0, 2], 4)
    np.testing.assert_array_equal(m, [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert m.shape == (4, 4) and m.dtype.kind == "i"


def test_assigned_once_fails_on_a_dropped_document(tiny_corpus, gem_home, instance, monkeypatch):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4)
    _teacher(instance, res, ["a.jsonl"])
    assert materialize([student_model], instance=instance, resources=res).success
    from gem_assets.lib.student import labeling

    real = labeling.label_parquet

    def dropping(model, src, dest, **kw):  # a labeller that loses the last document
        out = real(model, src, dest, **kw)
        df = pl.read_parquet(dest)
        df.head(df.height - 1).write_parquet(dest)
        return out

    monkeypatch.setattr(labeling, "label_parquet", dropping)
    # a blocking check: the failed conservation check fails the run (and stops anything downstream in it);
    # a wrong count is deterministic, so the step is not retried
    run = materialize([domain_assignments], partition_key="a.jsonl", instance=instance, resources=res,
                      raise_on_error=False)
    assert not run.success
    assert not [e for e in run.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    passed, severity = _checks(run)["assigned_once"]
    assert not passed and severity == "ERROR"
    ev = [e for e in run.get_asset_check_evaluations() if e.check_name == "assigned_once"][0]
    assert ev.metadata["missing"].value == 1


def test_stats_without_student_or_assignments_fail_clearly(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4)
    result = materialize([domain_stats], instance=instance, resources=res, raise_on_error=False)
    assert not result.success
    desc = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0] \
        .step_failure_data.user_failure_data.description
    assert "materialize 'student_model' first" in desc


def test_student_training_curve_logged_to_mlflow(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, mlflow=True)
    _teacher(instance, res, ["a.jsonl", "b.jsonl"])
    result = materialize([student_model], instance=instance, resources=res)
    md = _md(result, "student_model")
    assert md["mlflow_status"] == "logged" and md["mlflow_run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{gem_home.resolve() / 'mlflow.db'}")
    run = client.get_run(md["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "gem-student"
    assert run.data.tags["dagster.asset_key"] == "student_model" and run.data.params["k"] == "4"
    for key in ("loss", "train_agreement", "eval_agreement", "eval_loss"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, 11)), key  # smoke: 10 epochs
    assert run.data.metrics["final_heldout_agreement"] == pytest.approx(md["heldout_agreement"], abs=1e-4)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion.png", "history.csv", "per_domain.csv", "summary.json"} <= names

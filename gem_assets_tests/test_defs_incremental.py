"""make run as a driver over Dagster's stale status: a no-op re-run, a changed, a new and a bad
shard, and a changed parameter. The driver asks a dagster-webserver it starts over the same
instance; the code location is gem_assets_tests/distributed_defs.py (resources from the GEM_*
environment, the hashing embedder of conftest.py, MLflow off)."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey

from conftest import make_docs, write_jsonl
from gem_assets.defs.partitions import SHARDS
from gem_assets.run import CodeLocation, run_pipeline

HERE = Path(__file__).resolve().parent
DEFS_FILE = HERE / "distributed_defs.py"
LOCATION = CodeLocation(module_name=None, python_file=str(DEFS_FILE), working_directory=str(HERE))
PER_SHARD = ("documents", "embeddings", "domain_assignments")


def drive(monkeypatch, instance, home: Path, corpus: Path, until: str = "stats", **env) -> tuple[dict, str]:
    """One ``make run`` on ``corpus`` (smoke profile, K=4 unless given) with ``instance``."""
    values = {"GEM_HOME": str(home), "GEM_CORPUS": str(corpus / "*"), "GEM_PROFILE": "smoke", "GEM_K": "4",
              "GEM_SOURCE_COLUMN": "source", "GEM_MLFLOW": "0", "GEM_EXECUTOR": "in_process", **env}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location(f"gem_test_defs_{os.getpid()}", DEFS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # afresh: code versions follow the environment
    buf = io.StringIO()
    summary = run_pipeline(module.defs, instance, out=buf, until=until, location=LOCATION)
    return summary, buf.getvalue()


def _materialized(summary: dict, asset: str) -> set:
    return {m[len(asset) + 1:-1] if "[" in m else None for m in summary["materialized"]
            if m == asset or m.startswith(asset + "[")}


@pytest.mark.slow  # five make runs on one home, a minute on 2 cores: make test-slow
def test_runs_are_incremental(tiny_corpus, gem_home, disk_instance, monkeypatch):
    """One home through five make runs (one scenario, so that the first, full run is paid once):
    full, no-op, changed shard, new shard, changed K."""
    # 1. the first run builds everything
    first, text = drive(monkeypatch, disk_instance, gem_home, tiny_corpus, until="evaluation")
    assert not first["failed"], text
    assert first["ran_shards"] == ["a.jsonl", "b.jsonl", "c.parquet"] and first["teacher"] == "refit"
    for asset in PER_SHARD:
        assert _materialized(first, asset) == {"a.jsonl", "b.jsonl", "c.parquet"}
    assert {"teacher_clusters", "student_model", "domain_stats", "taxonomy", "curated_mixture",
            "mixture_evaluation"} <= set(first["materialized"])
    assert "120 in = 120 kept + 0 quarantined" in text and "outputs/teacher" in text
    assert set(disk_instance.get_dynamic_partitions(SHARDS)) == {"a.jsonl", "b.jsonl", "c.parquet"}
    mtime = (gem_home / "outputs" / "teacher" / "summary.json").stat().st_mtime_ns

    # 2. a second run with nothing new materializes nothing
    second, text = drive(monkeypatch, disk_instance, gem_home, tiny_corpus, until="evaluation")
    assert second["materialized"] == [] and not second["failed"], text
    assert set(second["shards"].values()) == {"up to date"} and second["teacher"] == "up to date"
    assert second["evaluation"] == second["mixing"] == second["taxonomy"] == "up to date"
    assert (gem_home / "outputs" / "teacher" / "summary.json").stat().st_mtime_ns == mtime
    assert "nothing to embed" in text
    assert len(disk_instance.fetch_materializations(AssetKey("documents"), limit=100).records) == 3

    # 3. a changed shard reruns that shard and the aggregates
    write_jsonl(tiny_corpus / "a.jsonl", make_docs(35, seed=1, prefix="a"))  # new bytes
    summary, text = drive(monkeypatch, disk_instance, gem_home, tiny_corpus)
    assert not summary["failed"], text
    assert _materialized(summary, "documents") == _materialized(summary, "embeddings") == {"a.jsonl"}
    assert "a.jsonl" in _materialized(summary, "domain_assignments")
    assert {"teacher_sample", "teacher_clusters", "domain_stats"} <= set(summary["materialized"])
    assert summary["ran_shards"] == ["a.jsonl"] and summary["teacher"] == "refit"
    assert "[1/1] shard a.jsonl: stale" in text

    # 4. a new shard is processed alone
    write_jsonl(tiny_corpus / "d.jsonl", make_docs(30, seed=7, prefix="d"))
    summary, text = drive(monkeypatch, disk_instance, gem_home, tiny_corpus)
    assert _materialized(summary, "documents") == _materialized(summary, "embeddings") == {"d.jsonl"}, text
    assert summary["shards"]["d.jsonl"] == "embedded" and summary["shards"]["b.jsonl"] == "up to date"
    assert "d.jsonl" in disk_instance.get_dynamic_partitions(SHARDS)

    # 5. a changed K reruns the teacher and everything below it, not the shards
    summary, text = drive(monkeypatch, disk_instance, gem_home, tiny_corpus, GEM_K="3")
    assert not summary["failed"], text
    assert not _materialized(summary, "documents") and not _materialized(summary, "embeddings")
    assert {"teacher_clusters", "student_model", "domain_stats"} <= set(summary["materialized"])
    assert _materialized(summary, "domain_assignments") == {"a.jsonl", "b.jsonl", "c.parquet", "d.jsonl"}
    assert summary["teacher"] == "refit" and summary["ran_shards"] == []


def test_bad_shard_fails_alone(tiny_corpus, gem_home, disk_instance, monkeypatch):
    (tiny_corpus / "zz.parquet").write_bytes(b"not parquet")
    summary, text = drive(monkeypatch, disk_instance, gem_home, tiny_corpus)
    assert summary["shards"]["zz.parquet"] == "failed"
    assert "zz.parquet" in summary["failed"] and "corrupt shard" in summary["failed"]["zz.parquet"], summary["failed"]
    assert summary["teacher"] == "refit" and summary["stats"] == "computed"
    assert _materialized(summary, "domain_assignments") == {"a.jsonl", "b.jsonl", "c.parquet"}
    assert "FAILED zz.parquet" in text
    assert list(summary["failed"]) == ["zz.parquet"]


@pytest.mark.slow  # 100 shards through the stats, then one more, then a no-op: make test-slow
def test_a_new_shard_reaches_the_aggregates_from_100_shards_on(tmp_path, gem_home, disk_instance, monkeypatch):
    """Dagster compares the data versions of a partitioned input only below 100 partitions; through
    ``shard_manifest`` the aggregates are still flagged by a new shard, and only by a change."""
    corpus = tmp_path / "many"
    for i in range(100):
        write_jsonl(corpus / f"s{i:03d}.jsonl", make_docs(4, seed=i, prefix=f"s{i:03d}-"))
    first, text = drive(monkeypatch, disk_instance, gem_home, corpus)
    assert not first["failed"], text
    assert len(disk_instance.get_dynamic_partitions(SHARDS)) == 100 and first["stats"] == "computed"

    write_jsonl(corpus / "s100.jsonl", make_docs(4, seed=100, prefix="s100-"))
    second, text = drive(monkeypatch, disk_instance, gem_home, corpus)
    assert not second["failed"], text
    assert _materialized(second, "documents") == _materialized(second, "embeddings") == {"s100.jsonl"}
    assert second["teacher"] == "refit" and second["stats"] == "computed", text
    assert {"teacher_sample", "teacher_clusters", "student_model", "domain_stats"} <= set(second["materialized"])
    assert "shard_manifest" in text  # the stale cause make run prints for the aggregates
    (stats,) = gem_home.rglob("domain_stats.csv")
    assert int(pl.read_csv(stats)["documents"].sum()) == 404  # the new shard's documents are counted

    third, text = drive(monkeypatch, disk_instance, gem_home, corpus)
    assert third["materialized"] == [] and not third["failed"], text

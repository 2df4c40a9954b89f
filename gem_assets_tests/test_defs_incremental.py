"""Incremental behaviour: make run's no-op re-run, changed and new shards, the sensors and the schedule."""

from __future__ import annotations

import datetime
import io
import json

from dagster import AssetKey, build_schedule_context, build_sensor_context

from conftest import make_docs, make_resources, write_jsonl
from gem_assets.definitions import build_definitions
from gem_assets.defs.automation import daily_backfill, shard_sensor, teacher_sensor
from gem_assets.defs.partitions import SHARDS
from gem_assets.run import run_pipeline


def _n_materializations(instance, asset: str) -> int:
    return len(instance.fetch_materializations(AssetKey(asset), limit=1000).records)


def _counts(instance) -> dict[str, int]:
    return {a: _n_materializations(instance, a) for a in ("documents", "embeddings", "teacher_sample", "teacher_clusters")}


def _sensor_tick(sensor_fn, **kwargs):
    """Evaluate a sensor; the context is closed afterwards (it holds resources and an instance)."""
    with build_sensor_context(**kwargs) as ctx:
        return sensor_fn(ctx)


def _schedule_tick(schedule_fn, **kwargs):
    with build_schedule_context(**kwargs) as ctx:
        return schedule_fn(ctx)


def _run(defs, instance):
    buf = io.StringIO()
    summary = run_pipeline(defs, instance, out=buf)
    return summary, buf.getvalue()


def test_rerun_without_new_shard_recomputes_nothing(tiny_corpus, gem_home, instance):
    defs = build_definitions(**make_resources(gem_home, str(tiny_corpus / "*")))
    first, text = _run(defs, instance)
    assert first["ran_shards"] == ["a.jsonl", "b.jsonl", "c.parquet"] and first["teacher"] == "refit"
    assert not first["failed"]
    assert "120 in = 120 kept + 0 quarantined" in text and "outputs/teacher" in text
    assert set(instance.get_dynamic_partitions(SHARDS)) == {"a.jsonl", "b.jsonl", "c.parquet"}
    before = _counts(instance)
    assert before == {"documents": 3, "embeddings": 3, "teacher_sample": 1, "teacher_clusters": 1}
    mtime = (gem_home / "outputs" / "teacher" / "summary.json").stat().st_mtime_ns

    second, text = _run(defs, instance)
    assert second["ran_shards"] == [] and second["teacher"] == "up to date"
    assert set(second["shards"].values()) == {"up to date"}
    assert _counts(instance) == before  # nothing materialized again
    assert (gem_home / "outputs" / "teacher" / "summary.json").stat().st_mtime_ns == mtime
    assert "nothing to embed" in text


def test_new_and_changed_shards_only_are_processed(tiny_corpus, gem_home, instance):
    defs = build_definitions(**make_resources(gem_home, str(tiny_corpus / "*")))
    _run(defs, instance)
    write_jsonl(tiny_corpus / "d.jsonl", make_docs(30, seed=7, prefix="d"))
    write_jsonl(tiny_corpus / "a.jsonl", make_docs(35, seed=1, prefix="a"))  # changed bytes
    summary, _ = _run(defs, instance)
    assert sorted(summary["ran_shards"]) == ["a.jsonl", "d.jsonl"]
    assert summary["shards"]["b.jsonl"] == summary["shards"]["c.parquet"] == "up to date"
    assert summary["teacher"] == "refit"
    assert _counts(instance) == {"documents": 5, "embeddings": 5, "teacher_sample": 2, "teacher_clusters": 2}


def test_changed_parameters_recompute(tiny_corpus, gem_home, instance):
    _run(build_definitions(**make_resources(gem_home, str(tiny_corpus / "*"))), instance)
    summary, _ = _run(build_definitions(**make_resources(gem_home, str(tiny_corpus / "*"), embed_cap=10)), instance)
    assert len(summary["ran_shards"]) == 3 and summary["teacher"] == "refit"
    summary, _ = _run(build_definitions(**make_resources(gem_home, str(tiny_corpus / "*"), embed_cap=10, k=3)), instance)
    assert summary["ran_shards"] == [] and summary["teacher"] == "refit"  # only the teacher depends on K


def test_bad_shard_does_not_block_the_rest(tiny_corpus, gem_home, instance):
    (tiny_corpus / "zz.parquet").write_bytes(b"not parquet")
    defs = build_definitions(**make_resources(gem_home, str(tiny_corpus / "*")))
    summary, text = _run(defs, instance)
    assert summary["shards"]["zz.parquet"] == "failed"
    assert "zz.parquet" in summary["failed"]["zz.parquet"] and "corrupt shard" in summary["failed"]["zz.parquet"]
    assert summary["teacher"] == "refit"
    assert "FAILED" in text


def test_shard_sensor_registers_and_requests(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    result = _sensor_tick(shard_sensor, instance=instance, resources={"gem": res["gem"]})
    (add,) = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["a.jsonl", "b.jsonl", "c.parquet"]
    assert sorted(r.partition_key for r in result.run_requests) == ["a.jsonl", "b.jsonl", "c.parquet"]
    cursor = json.loads(result.cursor)
    assert set(cursor) == {"a.jsonl", "b.jsonl", "c.parquet"}

    # after the runs: nothing new, nothing requested
    defs = build_definitions(**res)
    _run(defs, instance)
    quiet = _sensor_tick(shard_sensor, instance=instance, cursor=result.cursor, resources={"gem": res["gem"]})
    assert not quiet.run_requests and not quiet.dynamic_partitions_requests and quiet.skip_reason

    # a new file: one partition added, one run requested, keyed by its content
    write_jsonl(tiny_corpus / "e.jsonl", make_docs(12, seed=5, prefix="e"))
    new = _sensor_tick(shard_sensor, instance=instance, cursor=quiet.cursor, resources={"gem": res["gem"]})
    assert new.dynamic_partitions_requests[0].partition_keys == ["e.jsonl"]
    (req,) = new.run_requests
    assert req.partition_key == "e.jsonl" and req.run_key.startswith("e.jsonl@")

    # a changed file (already registered) is requested again under a new run key
    write_jsonl(tiny_corpus / "b.jsonl", make_docs(41, seed=2, prefix="b"))
    changed = _sensor_tick(shard_sensor, instance=instance, cursor=new.cursor, resources={"gem": res["gem"]})
    assert {r.partition_key for r in changed.run_requests} == {"b.jsonl", "e.jsonl"}
    assert not [r for r in changed.dynamic_partitions_requests if "b.jsonl" in r.partition_keys]


def test_daily_schedule_backfills_missing_partitions(tiny_corpus, gem_home, disk_instance):
    instance = disk_instance
    when = datetime.datetime(2026, 1, 2, 3, 0, tzinfo=datetime.timezone.utc)
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl"])
    requests = _schedule_tick(daily_backfill, instance=instance, resources={"gem": res["gem"]},
                              scheduled_execution_time=when)
    assert sorted(r.partition_key for r in requests) == ["a.jsonl", "b.jsonl", "c.parquet"]
    assert all(r.run_key.startswith("backfill-2026-01-02-") for r in requests)
    assert set(instance.get_dynamic_partitions(SHARDS)) == {"a.jsonl", "b.jsonl", "c.parquet"}
    _run(build_definitions(**res), instance)
    skip = _schedule_tick(daily_backfill, instance=instance, resources={"gem": res["gem"]},
                          scheduled_execution_time=when)
    assert "all 3 shard partition(s)" in skip.skip_message


def test_teacher_sensor_follows_embeddings(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    defs = build_definitions(**res)
    first = _sensor_tick(teacher_sensor, instance=instance, resources={"gem": res["gem"]})
    assert not first.run_requests  # nothing embedded yet
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl", "b.jsonl", "c.parquet"])
    shard_job = defs.resolve_job_def("shard_job")
    for key in ("a.jsonl", "b.jsonl"):
        assert shard_job.execute_in_process(instance=instance, partition_key=key).success
    req = _sensor_tick(teacher_sensor, instance=instance, resources={"gem": res["gem"]})
    (run,) = req.run_requests
    assert run.run_key.startswith("teacher@")
    assert defs.resolve_job_def("teacher_job").execute_in_process(instance=instance).success
    up = _sensor_tick(teacher_sensor, instance=instance, resources={"gem": res["gem"]})
    assert not up.run_requests and "up to date" in up.skip_reason.skip_message

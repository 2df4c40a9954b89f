"""Sensors and schedules: new shards are registered and embedded; the teacher follows.

* ``shard_sensor`` (every minute when on): registers a partition for every new shard file
  and requests a ``shard_job`` run for every shard whose bytes differ from its latest
  ``embeddings`` materialization (new or changed shards). Run keys carry the file hash, so
  a shard is never requested twice for the same bytes.
* ``daily_backfill`` (03:00 every day when on): registers shards the sensor has not seen and
  requests runs for every shard partition that is missing (never materialized, or failed)
  or out of date.
* ``teacher_sensor`` (every 5 minutes when on): once no shard run is queued or running,
  requests a ``teacher_job`` run when the embedded shards or the teacher parameters differ
  from those of the latest ``teacher_clusters``.

They are off by default; turn them on in the UI (Automation tab) or keep using
``make run``, which does the same work in one process.
"""

import json

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)
from dagster._core.storage.dagster_run import DagsterRunStatus

from gem_assets.defs.jobs import shard_job, teacher_job
from gem_assets.defs.partitions import SHARDS, shards_partitions
from gem_assets.defs.state import changed_shards, hash_shards, teacher_state
from gem_assets.resources.config import GemConfig

__all__ = ["shard_sensor", "teacher_sensor", "daily_backfill"]

_ACTIVE = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def _cursor(raw) -> dict:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


@sensor(job=shard_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def shard_sensor(context: SensorEvaluationContext, gem: GemConfig) -> SensorResult:
    """Register new shard files as partitions and request runs for new or changed shards."""
    shards = gem.shards()
    hashes, cache = hash_shards(shards, _cursor(context.cursor))
    registered = set(context.instance.get_dynamic_partitions(SHARDS))
    new = [key for key in shards if key not in registered]
    changed = changed_shards(context.instance, hashes)
    runs = [
        RunRequest(partition_key=key, run_key=f"{key}@{hashes[key][:16]}",
                   tags={"gem/shard_sha256": hashes[key], "gem/reason": reason})
        for key, reason in changed.items()
    ]
    requests = [shards_partitions.build_add_request(new)] if new else []
    if not runs and not requests:
        return SensorResult(skip_reason=f"{len(shards)} shard(s), none new or changed", cursor=json.dumps(cache))
    context.log.info(f"{len(new)} new shard(s), {len(runs)} run(s) requested")
    return SensorResult(run_requests=runs, dynamic_partitions_requests=requests, cursor=json.dumps(cache))


@schedule(job=shard_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.STOPPED)
def daily_backfill(context: ScheduleEvaluationContext, gem: GemConfig):
    """Every day: register unseen shards and request runs for missing or out-of-date partitions."""
    shards = gem.shards()
    hashes, _ = hash_shards(shards)
    registered = set(context.instance.get_dynamic_partitions(SHARDS))
    new = [key for key in shards if key not in registered]
    if new:
        context.instance.add_dynamic_partitions(SHARDS, new)
    missing = changed_shards(context.instance, hashes)
    if not missing:
        return SkipReason(f"all {len(shards)} shard partition(s) are materialized and current")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d") if context.scheduled_execution_time else "now"
    return [
        RunRequest(partition_key=key, run_key=f"backfill-{day}-{key}@{hashes[key][:16]}",
                   tags={"gem/shard_sha256": hashes[key], "gem/reason": reason})
        for key, reason in missing.items()
    ]


@sensor(job=teacher_job, minimum_interval_seconds=300, default_status=DefaultSensorStatus.STOPPED)
def teacher_sensor(context: SensorEvaluationContext, gem: GemConfig) -> SensorResult:
    """Refit the teacher when its inputs changed and no shard run is pending."""
    shards = gem.shards()
    hashes, cache = hash_shards(shards, _cursor(context.cursor))
    active = context.instance.get_runs(filters=RunsFilter(job_name=shard_job.name, statuses=_ACTIVE), limit=1)
    if active:
        return SensorResult(skip_reason="waiting for shard runs to finish", cursor=json.dumps(cache))
    state = teacher_state(context.instance, gem.settings(), hashes)
    if not state["stale"]:
        return SensorResult(skip_reason=f"teacher: {state['reason']}", cursor=json.dumps(cache))
    fp = state["fingerprint"]
    return SensorResult(
        run_requests=[RunRequest(run_key=f"teacher@{fp[:16]}", tags={"gem/reason": state["reason"]})],
        cursor=json.dumps(cache),
    )

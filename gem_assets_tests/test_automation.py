"""The automation conditions of gem_assets/defs/automation.py, evaluated with dagster.evaluate_automation_conditions.

Nothing heavy runs: materializations and check results are reported as runless events on an
in-memory instance, and the conditions of the real code location are evaluated tick by tick.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    MaterializeResult,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)
from dagster import asset as dg_asset

from conftest import make_docs, make_resources, write_jsonl
from gem_assets.definitions import ASSETS, build_definitions
from gem_assets.defs import automation
from gem_assets.defs.automation import CONDITIONS, NIGHTLY_CRON, REASONS, build_shard_sensor, with_automation
from gem_assets.defs.partitions import SHARDS, shards_partitions

warnings.filterwarnings("ignore", category=Warning, module="dagster")

PER_SHARD = ("documents", "embeddings", "domain_assignments")
SHARDED = set(PER_SHARD)
BASE = dt.datetime(2030, 1, 2, 10, 0, tzinfo=dt.timezone.utc)   # after the events' wall-clock times
AFTER_TICK = dt.datetime(2030, 1, 3, 3, 5, tzinfo=dt.timezone.utc)  # just after the nightly tick


def _checks(defs_assets) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in defs_assets:
        for spec in getattr(a, "check_specs", []):
            if spec.blocking:
                out.setdefault(spec.asset_key.to_user_string(), []).append(spec.name)
    return out


BLOCKING = _checks(ASSETS)


class World:
    """The real definitions on a tiny corpus, an in-memory instance and a clock of ticks."""

    def __init__(self, root: Path, home: Path, defs: Definitions | None = None):
        self.root = root
        self.res = make_resources(home, str(root / "*"))
        self.defs = defs or build_definitions(**self.res)
        self.inst = DagsterInstance.ephemeral()
        self.cursor = None
        self.now = BASE
        self.reported: set = set()

    def register(self, *keys: str) -> None:
        self.inst.add_dynamic_partitions(SHARDS, list(keys))

    def observe(self) -> None:
        assert self.defs.get_job_def("observe_shards").execute_in_process(instance=self.inst).success

    def built(self, asset: str, partitions=None, passed: bool = True) -> None:
        """Report a materialization (and its blocking checks' results) of ``asset``.

        Runless events, except for a check result reported before for the same partition (the
        instance keeps one runless check execution per check and partition): a stub run then.
        """
        parts = [None] if asset not in SHARDED else (partitions or self.inst.get_dynamic_partitions(SHARDS))
        names = BLOCKING.get(asset, [])
        for pk in parts:
            if names and any((asset, n, pk) in self.reported for n in names):
                self._stub_run(asset, names, pk, passed)
                continue
            self.inst.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=pk))
            for name in names:
                self.reported.add((asset, name, pk))
                self.inst.report_runless_asset_event(AssetCheckEvaluation(
                    asset_key=AssetKey(asset), check_name=name, passed=passed, metadata={},
                    severity=AssetCheckSeverity.ERROR, partition=pk))

    def _stub_run(self, asset: str, names: list[str], pk, passed: bool) -> None:
        @dg_asset(name=asset, partitions_def=shards_partitions if pk else None,
                  check_specs=[AssetCheckSpec(n, asset=asset) for n in names])
        def stub():
            return MaterializeResult(check_results=[AssetCheckResult(check_name=n, passed=passed) for n in names])

        assert materialize([stub], instance=self.inst, partition_key=pk).success

    def build_everything(self) -> None:
        for a in ASSETS:
            key = a.key.to_user_string()
            if key in CONDITIONS:
                self.built(key)

    def tick(self, at: dt.datetime | None = None, defs: Definitions | None = None) -> dict[str, list]:
        self.now = at or self.now + dt.timedelta(minutes=1)
        r = evaluate_automation_conditions(defs=defs or self.defs, instance=self.inst, cursor=self.cursor,
                                           evaluation_time=self.now)
        self.cursor = r.cursor
        return {k: sorted(r.get_requested_partitions(AssetKey(k)), key=str)
                for k in CONDITIONS if r.get_num_requested(AssetKey(k))}


@pytest.fixture
def world(tiny_corpus, gem_home):
    w = World(tiny_corpus, gem_home)
    w.register("a.jsonl", "b.jsonl", "c.parquet")
    w.observe()
    yield w
    w.inst.dispose()


@pytest.fixture
def steady(world):
    """Everything built and one quiet tick behind it."""
    world.build_everything()
    assert world.tick() == {}
    return world


def test_every_asset_has_a_condition_and_a_reason():
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        if node.is_materializable:
            assert node.automation_condition is CONDITIONS[name], name
            assert REASONS[name].strip(), name
        else:  # the observable source: no condition (one observation run per partition otherwise)
            assert node.automation_condition is None, name
    assert set(CONDITIONS) == {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    assert {CONDITIONS[k].get_label() for k in PER_SHARD + ("domain_stats",)} == {"per_shard"}
    assert {CONDITIONS[k].get_label() for k in set(CONDITIONS) - set(PER_SHARD) - {"domain_stats"}} == {"refit"}
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"gem_automation", "shard_sensor"}
    assert all(s.default_status == DefaultSensorStatus.RUNNING for s in sensors.values())
    assert not defs.schedules
    source = Path(automation.__file__).read_text()
    assert "dagster._" not in source  # public Dagster API only


def test_bootstrap_requests_what_is_missing_once(world):
    # a fresh instance: every registered shard is requested on the first tick (eager() alone
    # requests nothing here); an unpartitioned asset cannot share a run with shard partitions,
    # so the refits follow once their inputs exist
    all3 = ["a.jsonl", "b.jsonl", "c.parquet"]
    assert world.tick() == {"documents": all3, "embeddings": all3}
    # nothing came of it (a failed backfill): not requested again on every tick ...
    assert world.tick() == {}
    assert world.tick(BASE + dt.timedelta(hours=5)) == {}
    # ... but again after the nightly tick
    assert world.tick(AFTER_TICK) == {"documents": all3, "embeddings": all3}
    world.built("documents")
    world.built("embeddings")
    assert world.tick() == {k: [None] for k in ("teacher_sample", "teacher_clusters", "student_model")}
    world.built("teacher_sample")
    assert world.tick() == {}  # the run stopped after teacher_sample: not again before the next night ...
    world.built("teacher_clusters")
    # ... unless an input updates
    assert world.tick() == {"student_model": [None]}


def test_steady_state_requests_nothing(steady):
    assert steady.tick() == {}
    steady.observe()  # the same bytes: the same data versions
    assert steady.tick() == {}


def test_new_shard_runs_its_partitions_then_the_aggregate(steady):
    write_jsonl(steady.root / "d.jsonl", make_docs(12, seed=4, prefix="d"))
    steady.register("d.jsonl")  # what the shard sensor does
    steady.observe()
    got = steady.tick()
    assert {k: v for k, v in got.items() if k in PER_SHARD} == {k: ["d.jsonl"] for k in PER_SHARD}
    assert set(got) <= set(PER_SHARD) | {"domain_stats"}  # no refit before the nightly tick
    for k in PER_SHARD:
        steady.built(k, ["d.jsonl"])
    got = steady.tick()
    assert got == {"domain_stats": [None]}
    steady.built("domain_stats")
    assert steady.tick() == {}


def test_edited_shard_reruns_only_that_shard(steady):
    write_jsonl(steady.root / "b.jsonl", make_docs(41, seed=2, prefix="b"))
    steady.observe()
    # one tick, one run: the shard's partitions downstream are requested with it
    assert steady.tick() == {k: ["b.jsonl"] for k in PER_SHARD}
    for k in PER_SHARD:
        steady.built(k, ["b.jsonl"])
    assert steady.tick() == {"domain_stats": [None]}


def test_failed_blocking_check_stops_downstream(steady):
    write_jsonl(steady.root / "b.jsonl", make_docs(41, seed=2, prefix="b"))
    steady.observe()
    assert steady.tick() == {k: ["b.jsonl"] for k in PER_SHARD}
    steady.built("documents", ["b.jsonl"], passed=False)  # document_conservation failed
    assert steady.tick() == {}
    assert steady.tick() == {}
    steady.built("documents", ["b.jsonl"], passed=True)  # fixed and rebuilt
    assert steady.tick() == {"embeddings": ["b.jsonl"], "domain_assignments": ["b.jsonl"]}


def test_refit_failed_blocking_check_stops_the_next_refit(steady):
    steady.tick(AFTER_TICK - dt.timedelta(hours=1))
    steady.tick(AFTER_TICK)
    steady.built("proxy_corpus", passed=False)  # documents_conserved failed after the tick
    got = steady.tick()
    assert "doremi_weights" not in got and "regmix_runs" not in got
    steady.built("proxy_corpus", passed=True)
    got = steady.tick()
    # the rest of the mixing chain follows in the same tick (one run, in dependency order)
    assert got == {k: [None] for k in ("doremi_weights", "regmix_runs", "regmix_weights", "curated_mixture")}


def test_refit_waits_for_the_nightly_tick_and_its_inputs(steady):
    steady.built("embeddings", ["a.jsonl"])
    assert "teacher_sample" not in steady.tick()           # before 03:00: no refit
    assert steady.tick(AFTER_TICK - dt.timedelta(hours=1)) == {}
    assert steady.tick(AFTER_TICK) == {}                    # tick passed, but no input updated since
    steady.built("embeddings", ["a.jsonl"])
    # the teacher chain in one run
    assert steady.tick() == {"teacher_sample": [None], "teacher_clusters": [None]}
    assert steady.tick() == {}                              # once
    steady.built("teacher_sample")
    steady.built("teacher_clusters")
    got = steady.tick()
    assert "student_model" not in got                       # documents not updated since the tick
    steady.built("documents", ["a.jsonl"])
    got = steady.tick()
    assert got.get("student_model") == [None]


def test_code_version_change_is_backfilled_after_the_nightly_tick(steady):
    def changed(spec):
        if spec.key.to_user_string() in ("teacher_clusters", "embeddings"):
            return spec.replace_attributes(code_version="changed-for-test")
        return spec

    from gem_assets.defs.versions import with_code_versions

    assets = with_code_versions(ASSETS, steady.res["gem"].settings())   # the code versions steady.defs has
    new_defs = Definitions(assets=with_automation([a.map_asset_specs(changed) for a in assets]),
                           jobs=[steady.defs.get_job_def("observe_shards")], resources=steady.res)
    assert steady.tick(defs=new_defs) == {}                 # a parameter change during the day: nothing yet
    assert steady.tick(defs=new_defs) == {}
    got = steady.tick(AFTER_TICK, defs=new_defs)
    assert got == {"embeddings": ["a.jsonl", "b.jsonl", "c.parquet"], "teacher_clusters": [None]}
    assert steady.tick(defs=new_defs) == {}


def test_per_shard_conditions_are_nightly_for_missing_partitions(steady):
    # a partition whose run failed stays missing: retried after the nightly tick, not every minute
    steady.register("d.jsonl")
    write_jsonl(steady.root / "d.jsonl", make_docs(12, seed=4, prefix="d"))
    assert steady.tick()["documents"] == ["d.jsonl"]
    assert steady.tick() == {}
    got = steady.tick(AFTER_TICK)
    assert got["documents"] == ["d.jsonl"]


def _sensor_tick(sensor_def, world, cursor=None):
    with build_sensor_context(instance=world.inst, cursor=cursor, resources={"gem": world.res["gem"]}) as ctx:
        return sensor_def(ctx)


def test_shard_sensor_registers_and_observes(tiny_corpus, gem_home):
    w = World(tiny_corpus, gem_home)
    sensor_def = build_shard_sensor(w.defs.get_job_def("observe_shards"))
    first = _sensor_tick(sensor_def, w)
    (add,) = first.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["a.jsonl", "b.jsonl", "c.parquet"]
    (run,) = first.run_requests
    assert run.run_key.startswith("observe@")
    assert set(json.loads(first.cursor)) == {"a.jsonl", "b.jsonl", "c.parquet"}
    w.register(*add.partition_keys)

    quiet = _sensor_tick(sensor_def, w, first.cursor)
    assert not quiet.run_requests and not quiet.dynamic_partitions_requests and quiet.skip_reason

    write_jsonl(tiny_corpus / "e.jsonl", make_docs(12, seed=5, prefix="e"))
    new = _sensor_tick(sensor_def, w, quiet.cursor)
    assert new.dynamic_partitions_requests[0].partition_keys == ["e.jsonl"]
    assert len(new.run_requests) == 1 and new.run_requests[0].run_key != run.run_key
    w.register("e.jsonl")

    write_jsonl(tiny_corpus / "b.jsonl", make_docs(41, seed=2, prefix="b"))  # edited: observed, not re-registered
    changed = _sensor_tick(sensor_def, w, new.cursor)
    assert len(changed.run_requests) == 1 and not changed.dynamic_partitions_requests

    (tiny_corpus / "a.jsonl").unlink()  # vanished: the partition is kept
    gone = _sensor_tick(sensor_def, w, changed.cursor)
    assert not gone.dynamic_partitions_requests
    assert "a.jsonl" in w.inst.get_dynamic_partitions(SHARDS)
    w.inst.dispose()


def test_shard_sensor_without_the_observe_job_only_registers(tiny_corpus, gem_home):
    w = World(tiny_corpus, gem_home)
    result = _sensor_tick(build_shard_sensor(None), w)
    assert not result.run_requests and len(result.dynamic_partitions_requests) == 1
    w.inst.dispose()


def test_fresh_instance_without_shards_requests_nothing(tiny_corpus, gem_home):
    # the daemon's first tick on a fresh instance can come before the shard sensor has registered a
    # partition: an aggregate over zero shards has no input yet and must wait, not launch a run that fails
    w = World(tiny_corpus, gem_home)
    try:
        assert w.tick() == {}
        assert w.tick(AFTER_TICK) == {}
        w.register("a.jsonl", "b.jsonl", "c.parquet")
        w.observe()
        all3 = ["a.jsonl", "b.jsonl", "c.parquet"]
        assert w.tick() == {"documents": all3, "embeddings": all3}
    finally:
        w.inst.dispose()

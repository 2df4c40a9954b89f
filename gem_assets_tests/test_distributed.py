"""Executors (issue 8): the choice and its validation, shard runs in parallel with Dagster's
multiprocess executor, the whole smoke pipeline end to end on a local Dask cluster (dagster-dask,
the one-machine stand-in for a cluster), and the shipped Kubernetes run config validated against
dagster-k8s's executor."""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from dagster import AssetKey, DagsterInvalidConfigError, in_process_executor, instance_for_test, validate_run_config

from conftest import make_docs, make_resources, write_jsonl, write_parquet
from gem_assets.defs.executors import EXECUTORS, ExecutionSettings, JobRequest, build_executor, run_jobs
from gem_assets.lib.io import artifacts
from gem_assets.lib.io import storage
from gem_assets.run import CodeLocation

HERE = Path(__file__).resolve().parent
DEFS_FILE = HERE / "distributed_defs.py"
DEPLOY = HERE.parent / "deploy"


# --------------------------------------------------------------------------- settings
def test_execution_settings_from_env():
    s = ExecutionSettings.from_env({})
    assert s.executor == "in_process" and s.max_concurrent == max(1, os.cpu_count() or 1)
    assert s.parallel_runs == 1 and not s.needs_reconstructable
    s = ExecutionSettings.from_env({"GEM_EXECUTOR": "Multiprocess", "GEM_MAX_CONCURRENT": "3"})
    assert (s.executor, s.max_concurrent, s.parallel_runs, s.needs_reconstructable) == ("multiprocess", 3, 3, True)
    s = ExecutionSettings.from_env({"GEM_EXECUTOR": "dask", "GEM_DASK_ADDRESS": "tcp://h:8786", "GEM_MAX_CONCURRENT": "4"})
    assert s.dask_address == "tcp://h:8786" and s.parallel_runs == 1  # dask: one run at a time
    assert ExecutionSettings.from_env({"GEM_EXECUTOR": "in-process"}).executor == "in_process"


@pytest.mark.parametrize("env, message", [
    ({"GEM_EXECUTOR": "spark"}, "GEM_EXECUTOR='spark' is not one of"),
    ({"GEM_MAX_CONCURRENT": "0"}, "GEM_MAX_CONCURRENT must be an integer >= 1"),
    ({"GEM_MAX_CONCURRENT": "two"}, "GEM_MAX_CONCURRENT must be an integer >= 1, got 'two'"),
])
def test_bad_execution_settings_are_refused(env, message):
    with pytest.raises(ValueError, match=message):
        ExecutionSettings.from_env(env)


def test_build_executor_for_each_choice():
    assert set(EXECUTORS) == {"in_process", "multiprocess", "dask", "k8s"}
    assert build_executor(ExecutionSettings()) is in_process_executor
    mp = build_executor(ExecutionSettings("multiprocess", 3))
    assert mp.name == "gem_multiprocess"
    dask_local = build_executor(ExecutionSettings("dask", 2))
    dask_existing = build_executor(ExecutionSettings("dask", 2, "tcp://scheduler:8786"))
    assert dask_local.name == dask_existing.name == "gem_dask"
    assert build_executor(ExecutionSettings("k8s", 2)).name == "k8s"


def test_run_jobs_refuses_an_ephemeral_instance(instance):
    with pytest.raises(ValueError, match="persistent Dagster instance"):
        run_jobs(instance, [JobRequest(None, "x", "x")])
    with pytest.raises(ValueError, match="parallel must be >= 1"):
        run_jobs(instance, [], parallel=0)


# --------------------------------------------------------------------------- helpers
def _corpus(root: Path, n_shards: int, n_docs: int = 40) -> str:
    for i in range(n_shards):
        rows = make_docs(n_docs, seed=10 + i, prefix=f"s{i}-")
        (write_jsonl if i % 2 == 0 else write_parquet)(root / f"part-{i}.{'jsonl' if i % 2 == 0 else 'parquet'}", rows)
    return str(root / "*")


def _set_env(monkeypatch, home, corpus_glob: str, executor: str, **extra) -> None:
    env = {"GEM_HOME": str(home), "GEM_CORPUS": corpus_glob, "GEM_PROFILE": "smoke", "GEM_K": "4",
           "GEM_SOURCE_COLUMN": "source", "GEM_MLFLOW": "0", "GEM_EXECUTOR": executor, **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _load_defs():
    """A fresh copy of distributed_defs (built from the current environment)."""
    spec = importlib.util.spec_from_file_location(f"distributed_defs_{os.getpid()}", DEFS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


def _job():
    """A public code pointer (build_reconstructable_job) to gem_assets_job of distributed_defs.py; it
    carries the GEM_* environment, so a test with another environment gets a job of its own."""
    return CodeLocation(module_name=None, python_file=str(DEFS_FILE), working_directory=str(HERE)).reconstructable_job()


SHARD_ASSETS = (AssetKey("documents"), AssetKey("embeddings"))


def _step_pids(instance, run_id: str) -> set[int]:
    return {rec.dagster_event.pid for rec in instance.all_logs(run_id)
            if rec.dagster_event is not None and rec.dagster_event.event_type_value == "STEP_START"}


def _step_failures(instance) -> str:
    """The errors of the failed steps of every run (what the UI shows), for an assertion message."""
    lines = []
    for r in instance.get_run_records():
        for rec in instance.all_logs(r.dagster_run.run_id):
            ev = rec.dagster_event
            if ev is not None and ev.event_type_value in ("STEP_FAILURE", "RUN_FAILURE", "ENGINE_EVENT") and \
                    (ev.event_type_value != "ENGINE_EVENT" or "rror" in (ev.message or "")):
                data = getattr(ev.event_specific_data, "error", None)
                lines.append(f"{ev.event_type_value} {ev.step_key}: {ev.message} {data.to_string() if data else ''}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- multiprocess
# make test runs the multiprocess executor on a local home and Dask on S3; make test-slow the other two
@pytest.mark.parametrize("home", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_shard_runs_in_parallel_with_the_multiprocess_executor(home, tmp_path, monkeypatch, request):
    """Shard runs two at a time, each step in a process of its own, with GEM_HOME a local folder or
    an S3 bucket (a local S3 server the step processes reach through AWS_ENDPOINT_URL, as they would
    reach MinIO or S3): outputs equal those of an in-process run."""
    from gem_assets.defs.partitions import SHARDS

    glob = _corpus(tmp_path / "corpus", 2)
    # no line of it is a JSON object, so the whole shard fails (a bad line among good ones is quarantined)
    (tmp_path / "corpus" / "part-9.jsonl").write_text('{"id": "y", "text": \n[1, 2]\n')
    if home == "s3":
        bucket = request.getfixturevalue("s3_server")
        _set_env(monkeypatch, f"{bucket}/mp-{os.getpid()}", glob, "multiprocess", GEM_MAX_CONCURRENT="2",
                 GEM_STATE=str(tmp_path / "state"))
    else:
        _set_env(monkeypatch, tmp_path / "home", glob, "multiprocess", GEM_MAX_CONCURRENT="2")
    defs = _load_defs()
    keys = sorted(defs.resources["gem"].shards())
    good = [k for k in keys if k != "part-9.jsonl"]
    with instance_for_test() as inst:
        inst.add_dynamic_partitions(SHARDS, keys)
        job = _job()  # what run_pipeline does with GEM_EXECUTOR=multiprocess: shard runs 2 at a time
        results = run_jobs(inst, [JobRequest(job, k, k, SHARD_ASSETS) for k in keys], parallel=2)
        ok = {k: message is None for k, (message, _) in results.items()}
        assert ok == {"part-0.jsonl": True, "part-1.parquet": True, "part-9.jsonl": False}, results
        assert "none of its 2 records is a JSON object" in results["part-9.jsonl"][0]
        assert set(results["part-0.jsonl"][1]) == set(SHARD_ASSETS)
        runs = [r for r in inst.get_run_records() if r.dagster_run.tags["dagster/partition"] in good]
        assert len(runs) == 2 and all(r.dagster_run.is_success for r in runs)
        pids = set()
        for r in runs:
            step_pids = _step_pids(inst, r.dagster_run.run_id)
            assert len(step_pids) == 2  # documents and embeddings, each in a process of its own
            pids |= step_pids
        assert os.getpid() not in pids and len(pids) == 4
        (s0, e0), (s1, e1) = sorted((r.start_time, r.end_time) for r in runs)
        assert s1 < e0  # the two runs overlapped in time
    # same outputs as in process
    layout = defs.resources["gem"].settings().layout
    if home == "s3":
        assert str(layout.home).startswith("s3://") and not (tmp_path / "home").exists()
        assert not any(Path.cwd().glob("s3*"))  # nothing written to a local folder named after the URL
    ref = make_resources(tmp_path / "ref", str(tmp_path / "corpus" / "part-[01].*"))
    from dagster import materialize

    with instance_for_test() as inst:
        inst.add_dynamic_partitions(SHARDS, keys)
        from gem_assets.definitions import ASSETS

        for k in good:
            assert materialize(ASSETS[:2], resources=ref, instance=inst, partition_key=k).success
    ref_layout = ref["gem"].settings().layout
    for k in good:
        assert artifacts.read_documents(layout, k).equals(artifacts.read_documents(ref_layout, k))
        v, idx, _ = artifacts.read_embeddings(layout, k)
        rv, ridx, _ = artifacts.read_embeddings(ref_layout, k)
        np.testing.assert_array_equal(v, rv)
        assert idx.equals(ridx)


# --------------------------------------------------------------------------- dask
def _dask_env(cluster, monkeypatch, tmp_path, request, home: str, glob: str, distributed) -> set[int]:
    if home == "s3":
        bucket = request.getfixturevalue("s3_server")
        _set_env(monkeypatch, f"{bucket}/dask-{os.getpid()}", glob, "dask",
                 GEM_DASK_ADDRESS=cluster.scheduler_address, GEM_STATE=str(tmp_path / "state"))
    else:
        _set_env(monkeypatch, tmp_path / "home", glob, "dask", GEM_DASK_ADDRESS=cluster.scheduler_address)
    # the workers were started before the variables were set: hand them the environment
    with distributed.Client(cluster) as client:
        env = {k: v for k, v in os.environ.items() if k.startswith(("GEM_", "AWS_"))}
        client.run(lambda e: os.environ.update(e), env)
        return set(client.run(os.getpid).values())


@pytest.mark.parametrize("home", [pytest.param("local", marks=pytest.mark.slow), "s3"])
def test_shard_runs_on_a_local_dask_cluster(home, tmp_path, monkeypatch, request):
    """A shard partition's run (documents + embeddings) with every step a task on a Dask worker
    process, GEM_HOME a local folder or an S3 bucket (the local S3 server, reached by the workers
    through AWS_ENDPOINT_URL as a cluster reaches S3 or MinIO); outputs equal an in-process run's."""
    distributed = pytest.importorskip("distributed")
    from dagster import materialize

    from gem_assets.defs.partitions import SHARDS

    glob = _corpus(tmp_path / "corpus", 1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        worker_pids = _dask_env(cluster, monkeypatch, tmp_path, request, home, glob, distributed)
        defs = _load_defs()
        with instance_for_test() as inst:
            inst.add_dynamic_partitions(SHARDS, ["part-0.jsonl"])
            results = run_jobs(inst, [JobRequest(_job(), "part-0.jsonl", "part-0.jsonl", SHARD_ASSETS)])
            assert results["part-0.jsonl"][0] is None, _step_failures(inst)
            (run,) = inst.get_run_records()
            step_pids = _step_pids(inst, run.dagster_run.run_id)
            assert len(step_pids) >= 1 and step_pids <= worker_pids  # every step ran on a Dask worker
    layout = defs.resources["gem"].settings().layout
    if home == "s3":
        assert str(layout.home).startswith("s3://") and not (tmp_path / "home").exists()
    ref = make_resources(tmp_path / "ref", glob)
    with instance_for_test() as inst:
        inst.add_dynamic_partitions(SHARDS, ["part-0.jsonl"])
        from gem_assets.definitions import ASSETS

        assert materialize(ASSETS[:2], resources=ref, instance=inst, partition_key="part-0.jsonl").success
    v, _, _ = artifacts.read_embeddings(layout, "part-0.jsonl")
    np.testing.assert_array_equal(v, artifacts.read_embeddings(ref["gem"].settings().layout, "part-0.jsonl")[0])


@pytest.mark.slow  # make run's driver with every run launched on Dask: make test-slow
def test_smoke_pipeline_end_to_end_on_a_local_dask_cluster(tmp_path, monkeypatch, request):
    """make run's driver through the stats with every run launched on a local Dask cluster."""
    distributed = pytest.importorskip("distributed")
    from gem_assets.run import run_pipeline

    glob = _corpus(tmp_path / "corpus", 2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        worker_pids = _dask_env(cluster, monkeypatch, tmp_path, request, "local", glob, distributed)
        defs = _load_defs()
        with instance_for_test() as inst:
            out = io.StringIO()
            summary = run_pipeline(defs=defs, instance=inst, out=out, until="stats",
                                   location=CodeLocation(module_name=None, python_file=str(DEFS_FILE),
                                                         working_directory=str(HERE)))
            assert summary["failed"] == {}, out.getvalue() + _step_failures(inst)
            assert set(summary["shards"].values()) == {"embedded"}
            assert summary["teacher"] == "refit" and summary["student"] == "trained"
            assert sorted(summary["assigned_shards"]) == sorted(summary["shards"]) and summary["stats"] == "computed"
            step_pids = set()
            for r in inst.get_run_records():
                if r.dagster_run.job_name != "observe_shards":
                    step_pids |= _step_pids(inst, r.dagster_run.run_id)
            assert step_pids and step_pids <= worker_pids  # every step ran on a Dask worker
    layout = defs.resources["gem"].settings().layout
    stats = storage.read_csv(layout.domain_stats_dir / "domain_stats.csv")
    assert int(stats["documents"].sum()) == 80  # every document of both shards counted once


# --------------------------------------------------------------------------- kubernetes
def test_shipped_k8s_run_config_is_valid_for_the_k8s_job_executor():
    pytest.importorskip("dagster_k8s")
    from gem_assets.definitions import build_definitions

    config = yaml.safe_load((DEPLOY / "k8s" / "run_config.yaml").read_text())
    res = make_resources(Path("/tmp/unused"), None)
    defs = build_definitions(gem=res["gem"], embedder=res["embedder"], mlflow=res["mlflow"],
                             executor=build_executor(ExecutionSettings("k8s", 4)))
    for job in ("shard_job", "teacher_job", "assign_job"):
        validated = validate_run_config(defs.resolve_job_def(job), config)
        execution = validated["execution"]["k8s"]  # normalized to the executor's name
        assert execution["max_concurrent"] == config["execution"]["config"]["max_concurrent"]
        assert execution["job_namespace"] == "gem-assets"
    bad = {"execution": {"config": {"max_concurrent": "many"}}}
    with pytest.raises(DagsterInvalidConfigError,
                       match=r'Invalid scalar at path root:execution:config:max_concurrent\. Value "many"'):
        validate_run_config(defs.resolve_job_def("shard_job"), bad)
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    env = {e["name"]: e["value"] for e in values["dagster-user-deployments"]["deployments"][0]["env"]}
    assert env["GEM_EXECUTOR"] == "k8s" and env["GEM_HOME"] == "/data"


def test_run_pipeline_refuses_an_unknown_last_stage():
    from gem_assets.run import run_pipeline

    with pytest.raises(ValueError, match="until must be one of"):
        run_pipeline(until="everything")

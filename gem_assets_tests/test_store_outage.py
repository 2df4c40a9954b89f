"""A tracking store or an object store that goes away mid-run, against real local servers.

MLflow (a local ``mlflow server`` process, stopped once the teacher's run is logged): the assets
after it still materialize and say ``mlflow_status: unreachable``. The object store (a local S3
server, stopped while the embeddings are computed): the step is retried (``STORE_RETRY``), then fails
with a message naming the location and the cause.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from dagster import AssetKey, RetryPolicy, materialize

from conftest import HashingEmbedder, make_resources
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.executors import failure_message
from gem_assets.defs.partitions import SHARDS
from gem_assets.defs.student import student_model
from gem_assets.defs.teacher import teacher_clusters, teacher_sample
from gem_assets.defs.versions import STORE_RETRY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metadata(result, asset: str) -> dict:
    mats = result.asset_materializations_for_node(asset)
    assert mats, f"no materialization of {asset}"
    return {k: v.value for k, v in mats[-1].metadata.items()}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path):
    """A local MLflow tracking server (its own process group); yields ``(process, URL)``."""
    exe = Path(sys.executable).with_name("mlflow")
    assert exe.exists(), f"no {exe}: mlflow (a dependency of the project) installs its server command there"
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "wb")
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            log.close()
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
        time.sleep(0.25)
    try:
        yield proc, url
    finally:
        _stop(proc)
        log.close()


def test_mlflow_server_stopped_mid_run_the_assets_still_materialize(tiny_corpus, gem_home, instance, mlflow_server,
                                                                      monkeypatch):
    proc, url = mlflow_server
    from gem_assets.lib.util import tracking

    logged = []
    real_log_fit = tracking.log_fit

    def log_then_stop(*args, **kwargs):  # the server goes away once the teacher's run is logged
        run_id = real_log_fit(*args, **kwargs)
        logged.append(run_id)
        _stop(proc)
        return run_id

    monkeypatch.setattr(tracking, "log_fit", log_then_stop)
    res = make_resources(gem_home, str(tiny_corpus / "*"), mlflow=True, tracking_uri=url)
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl"])
    assert materialize([documents, embeddings], partition_key="a.jsonl", instance=instance, resources=res).success
    result = materialize([teacher_sample, teacher_clusters, student_model], instance=instance, resources=res)
    assert result.success and proc.poll() is not None and len(logged) == 1
    teacher = _metadata(result, "teacher_clusters")
    assert teacher["mlflow_status"] == "logged" and teacher["mlflow_run_id"] == logged[0]
    student = _metadata(result, "student_model")  # after the outage: materialized, and it says so
    assert student["mlflow_status"] == "unreachable" and student["mlflow_run_id"] == ""
    assert f"MLflow tracking store {url} unreachable" in student["mlflow_message"]
    assert instance.get_latest_materialization_event(AssetKey("student_model")) is not None
    assert (gem_home / "outputs" / "student" / "summary.json").is_file()
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("MLflow tracking store" in w and "materialized without an MLflow run" in w for w in warnings)


def test_object_store_going_away_is_retried_then_fails_naming_the_path(tiny_corpus, instance, monkeypatch):
    s3fs = pytest.importorskip("s3fs", reason="s3fs (the dev extra) reaches S3")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is the local S3 server")
    import fsspec

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # this test's own
    server.start()
    host, port = server.get_host_and_port()
    stopped = []
    try:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://{host}:{port}"),
                            ("AWS_MAX_ATTEMPTS", "1")):  # botocore's own retries off: Dagster's are under test
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        bucket = f"gem-outage-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        home = f"s3://{bucket}/home"
        # STORE_RETRY's attempts, with its delays (5 s, then 10 s) shortened for the test
        monkeypatch.setattr(RetryPolicy, "calculate_delay", lambda self, attempt_num: 0.1)

        class StoreGoesAway(HashingEmbedder):
            def encode(self, texts, desc: str = "embedding"):
                if not stopped:  # mid-run: the documents are written, the embeddings not yet
                    server.stop()
                    stopped.append(True)
                return super().encode(texts, desc)

        res = {**make_resources(home, str(tiny_corpus / "*")), "embedder": StoreGoesAway()}
        instance.add_dynamic_partitions(SHARDS, ["a.jsonl"])
        t0 = time.perf_counter()
        result = materialize([documents, embeddings], partition_key="a.jsonl", instance=instance, resources=res,
                             raise_on_error=False)
        seconds = time.perf_counter() - t0
    finally:
        if not stopped:
            server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
    assert stopped and not result.success
    assert instance.get_materialized_partitions(AssetKey("documents")) == {"a.jsonl"}  # before the outage
    assert not instance.get_materialized_partitions(AssetKey("embeddings"))
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == STORE_RETRY.max_retries == 2
    assert len([e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]) == 1
    # what make run prints for the failed run: the location and the cause of the last attempt, after its retries
    message = failure_message(result)
    assert message.startswith(f"gem_assets.lib.io.storage.StorageError: object store: cannot check {home}/work/"), message
    assert "EndpointConnectionError: Could not connect" in message and message.endswith("(failed after 2 retries)")
    first = str(retries[0].step_retry_data.error.cause or retries[0].step_retry_data.error)  # the write that failed
    assert f"{home}/work/embeddings/a.jsonl" in first and "EndpointConnectionError" in first, first
    assert seconds < 60

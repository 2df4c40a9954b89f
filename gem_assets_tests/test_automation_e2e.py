"""dagster dev with the daemon builds a new shard by automation; a parameter change flags exactly its assets stale.

Minutes, not seconds (the daemon's start-up, one subprocess per run, the real embedding model):
marked ``slow``. ``make test`` deselects the ``slow`` tests; ``make test-slow`` runs them, and CI
(``.ci/run``) runs both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import make_docs, write_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 180
BUILD_S = 900

NODES = """query { assetNodes { assetKey { path } isPartitioned staleStatus
  staleCauses { key { path } reason } } }"""
PARTS = """query Parts($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path }
  partitionKeys staleStatusByPartition } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gql(base: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(base + "/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    assert not out.get("errors"), out["errors"]
    return out["data"]


def _partitions(base: str, assets: list[str]) -> dict[str, dict[str, str]]:
    data = _gql(base, PARTS, {"keys": [{"path": [a]} for a in assets]})
    return {"/".join(n["assetKey"]["path"]): dict(zip(n["partitionKeys"], n["staleStatusByPartition"]))
            for n in data["assetNodes"]}


def _unpartitioned(base: str) -> dict[str, str]:
    return {"/".join(n["assetKey"]["path"]): n["staleStatus"] for n in _gql(base, NODES)["assetNodes"]
            if not n["isPartitioned"]}


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):  # dagster dev may ignore SIGTERM for a while
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_up(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited before serving: {log.read_text()[-1500:]}")
        try:
            _gql(base, "{ assetNodes { assetKey { path } } }")
            return
        except (urllib.error.URLError, OSError, AssertionError, KeyError):
            time.sleep(2)
    pytest.fail(f"dagster dev not serving after {STARTUP_S} s: {log.read_text()[-1500:]}")


def test_new_shard_is_built_by_automation_then_a_parameter_flags_its_assets(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", make_docs(30, seed=1, prefix="a"))
    write_jsonl(corpus / "b.jsonl", make_docs(30, seed=2, prefix="b"))
    (tmp_path / "dagster").mkdir()
    workspace = REPO / "workspace.yaml"
    if not workspace.exists():
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(f"load_from:\n  - python_module:\n      module_name: gem_assets.definitions\n"
                             f"      attribute: defs\n      location_name: gem_assets\n      working_directory: {REPO}\n")
    env = {**os.environ, "GEM_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "GEM_CORPUS": str(corpus / "*.jsonl"), "GEM_PROFILE": "smoke", "GEM_K": "3", "GEM_MLFLOW": "0",
           "GEM_SOURCE_COLUMN": "source", "GEM_DEVICE": "cpu", "GEM_EMBED_MAX_SEQ_LENGTH": "64",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev.log"
    dev = _start([str(bin_dir / "dagster"), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)], env, log)
    t0 = time.monotonic()
    try:
        _wait_up(base, dev, log)
        write_jsonl(corpus / "c.jsonl", make_docs(30, seed=3, prefix="c"))  # a new shard while running
        want = ("documents", "embeddings", "domain_assignments")
        deadline = time.monotonic() + BUILD_S
        while True:
            parts = _partitions(base, list(want))
            stats = _unpartitioned(base).get("domain_stats")
            if all(parts.get(a, {}).get("c.jsonl") == "FRESH" for a in want) and stats == "FRESH":
                break
            if time.monotonic() > deadline:
                pytest.fail(f"not built by automation after {BUILD_S} s: {parts} domain_stats={stats}\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(5)
        print(f"c.jsonl and domain_stats built by automation {time.monotonic() - t0:.0f} s after start")
    finally:
        _stop(dev)

    # a parameter change (GEM_K): the webserver alone (no daemon to act on it) shows what is stale
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    web = _start([str(bin_dir / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
                 {**env, "GEM_K": "4"}, tmp_path / "web.log")
    try:
        _wait_up(base, web, tmp_path / "web.log")
        stale = {k for k, v in _unpartitioned(base).items() if v == "STALE"}
        parts = _partitions(base, ["documents", "embeddings", "domain_assignments"])
        stale |= {f"{a}[{p}]" for a, ps in parts.items() for p, v in ps.items() if v == "STALE"}
        # one hop: the assets whose code version includes k; downstream ones only after they rebuild
        assert {"teacher_sample", "teacher_clusters"} <= stale, stale
        assert not {s for s in stale if s.startswith(("documents[", "embeddings["))}, stale
    finally:
        _stop(web)

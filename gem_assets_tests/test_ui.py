"""The Dagster UI serves the code location of workspace.yaml (make ui): every asset is listed over
GraphQL, with the stale status make run's driver reads."""

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

from gem_assets.definitions import ASSETS

STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, query: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def webserver(tmp_path):
    """dagster-webserver on 127.0.0.1 and a free port; stopped (with its children) at teardown."""
    port = _free_port()
    exe = Path(sys.executable).with_name("dagster-webserver")
    env = {**os.environ, "GEM_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "GEM_PROFILE": "smoke"}
    (tmp_path / "dagster").mkdir()
    log = open(tmp_path / "webserver.log", "wb")
    proc = subprocess.Popen(
        [str(exe), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=Path(__file__).resolve().parents[1], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"webserver exited: {(tmp_path / 'webserver.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/server_info", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"webserver not up after {STARTUP_TIMEOUT_S} s")
                time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()


def test_ui_lists_every_asset(webserver):
    expected = {"/".join(a.key.path) for a in ASSETS} | {"shard_files", "shard_manifest"}
    deadline = time.monotonic() + 60  # the code location server may still be loading
    while True:
        data = _post(webserver + "/graphql", "{ assetNodes { assetKey { path } isMaterializable staleStatus } }")
        nodes = (data.get("data") or {}).get("assetNodes") or []
        listed = {"/".join(n["assetKey"]["path"]) for n in nodes}
        if expected <= listed or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert expected <= listed, data
    assert listed == expected
    stale = {"/".join(n["assetKey"]["path"]): n["staleStatus"] for n in nodes if n["isMaterializable"]}
    assert stale["teacher_clusters"] == "MISSING"  # nothing materialized in this instance

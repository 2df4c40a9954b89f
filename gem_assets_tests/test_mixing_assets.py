"""Mixing assets at the smoke profile on the tiny corpus: proxy corpus, DoReMi, RegMix, curated mixture."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from dagster import materialize

from conftest import make_resources
from gem_assets.config import PROFILES, Layout
from gem_assets.defs.mixing import (MIXING_ASSETS, curated_mixture, doremi_weights, mixing_state, proxy_corpus,
                                    regmix_runs, regmix_weights)
from gem_assets.defs.student import domain_stats, student_model
from gem_assets.lib import storage
from test_student_assets import _assign, _checks, _md, _teacher


def _up_to_stats(instance, res):
    _teacher(instance, res)
    assert materialize([student_model], instance=instance, resources=res).success
    assert all(r.success for r in _assign(instance, res).values())
    assert materialize([domain_stats], instance=instance, resources=res).success


def _old_index(layout):
    """The mixing index as it was before issue 8's change: ids and sources held in memory."""
    from gem_assets.lib import artifacts, mixture

    shards = storage.read_json(layout.domain_stats_dir / "summary.json")["shards"]
    index = mixture.corpus_index(lambda k: artifacts.read_documents(layout, k),
                                 lambda k: storage.read_parquet(layout.assignments_path(k), columns=["id", "domain"]),
                                 shards)
    texts = {k: artifacts.read_documents(layout, k)["text"] for k in index.shards}

    def read_texts(pos):
        return [texts[index.shards[int(index.shard[i])]][int(index.row[i])] for i in pos]

    return index, read_texts


def _old_target_stream(layout, p):
    """The target stream the proxy corpus held before (sources compared and keys built in memory)."""
    from gem_assets.lib import mixture, sampling

    index, read_texts = _old_index(layout)
    held = mixture.split_documents(index.domains, p["valid_fraction"], p["seed"])
    if p["target"] is not None:
        held &= (index.sources == p["target"]).fill_null(False).to_numpy()
    idx = sampling.bottom_k_positions(np.flatnonzero(held), index.document_keys(), p["max_target_documents"],
                                      p["seed"], "mixing/proxy_target")
    return mixture.texts_to_streams(read_texts(idx), ["target"] * idx.size)["target"]


def _assert_mixture_as_before(layout, p, tmp):
    """The curated mixture's files are byte for byte those the in-memory index (ids held) writes."""
    from gem_assets.lib import mixture

    manifest = storage.read_json(layout.mixture_dir / "manifest.json")
    index, read_texts = _old_index(layout)
    weights = np.array([manifest["weights"][str(d)] for d in range(len(manifest["weights"]))])
    sample = mixture.sample_curated_mixture(index.tokens, index.domains, weights, manifest["budget_tokens"],
                                            p["max_epochs"], p["seed"])
    files = mixture.write_curated_parts(index, sample, read_texts, tmp, p["rows_per_shard"])
    assert files == manifest["files"]
    for f in files:
        assert (tmp / f).read_bytes() == (layout.mixture_dir / f).read_bytes(), f


def test_mixing_assets_smoke_end_to_end(tiny_corpus, gem_home, instance, tmp_path):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, mlflow=True, student_min_agreement=0.0,
                         tracking_uri=f"sqlite:///{gem_home / 'mlflow.db'}", mixture_tokens=3000,
                         mix_max_target_documents=5)
    _up_to_stats(instance, res)
    settings = res["gem"].settings()
    assert mixing_state(instance, settings)["stale_assets"]["proxy_corpus"] == "never materialized"
    result = materialize(MIXING_ASSETS, instance=instance, resources=res)
    assert result.success
    checks = _checks(result)
    assert checks == {"documents_conserved": (True, "ERROR"), "weights_valid": (True, "ERROR"),
                      "runs_complete": (True, "ERROR"), "regressor_ranks_runs": (checks["regressor_ranks_runs"][0], "WARN"),
                      "counts_match_manifest": (True, "ERROR"), "epoch_cap": (True, "ERROR")}
    layout = Layout(gem_home.resolve())
    prof = PROFILES["smoke"]

    # proxy corpus: four domains' streams, 10% of each domain's documents held out
    meta = storage.read_json(layout.proxy_corpus_dir / "meta.json")
    assert meta["documents"] == 120 and meta["domains"] == ["0", "1", "2", "3"]
    # the target stream holds a seeded sample of at most mix_max_target_documents held-out documents
    assert meta["target_documents"] == 5 and meta["target_documents_available"] == meta["valid_documents"] > 5
    target = storage.read_safetensors(layout.proxy_corpus_dir / "target.safetensors")["target"]
    assert int((target == 0).sum()) == 5    # one separator byte per document (mixture.SEPARATOR)
    # the same documents as before issue 8's change (keys and sources in memory), byte for byte
    np.testing.assert_array_equal(target, _old_target_stream(layout, settings.mixture_params()))
    assert math.isclose(sum(meta["natural_shares"].values()), 1.0)
    train = storage.read_safetensors(layout.proxy_corpus_dir / "train.safetensors")
    assert all(s.dtype == np.uint8 and s.size <= prof.mix_max_bytes_per_domain for s in train.values())

    # the weights files
    for name in ("doremi", "regmix"):
        rec = storage.read_json(layout.weights_dir / f"{name}.json")
        assert rec["method"] == name and set(rec["weights"]) == set(meta["domains"])
        assert math.isclose(sum(rec["weights"].values()), 1.0, rel_tol=1e-9)
        assert (layout.weights_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    doremi = storage.read_json(layout.weights_dir / "doremi.json")
    present = [n for n in meta["domains"] if n in train]
    assert min(doremi["weights"][n] for n in present) >= 1e-3 / len(present) - 1e-12
    runs = pl.read_parquet(layout.regmix_runs_dir / "runs.parquet")
    assert runs.height == prof.mix_regmix_runs and runs["loss"].is_finite().all()
    assert np.allclose(runs.select(pl.col("^w_.*$")).to_numpy().sum(1), 1.0)
    regmix = storage.read_json(layout.weights_dir / "regmix.json")
    assert regmix["fit"]["kind"] == "linear" and regmix["runs"] == prof.mix_regmix_runs
    # the proposal's epoch cap is taken at the curated mixture's budget (3,000 tokens here)
    assert regmix["proposal_budget_tokens"] == 3000
    for j, n in enumerate(meta["domains"]):
        assert regmix["weights"][n] * 3000 <= prof.mix_max_epochs * meta["domain_tokens"][j] + 1e-6

    # the curated mixture: default mixer regmix, 3,000-token budget, counts equal to the manifest
    manifest = storage.read_json(layout.mixture_dir / "manifest.json")
    assert manifest["mixer"] == "regmix" and manifest["weights"] == pytest.approx(regmix["weights"])
    rows = pl.concat([pl.read_parquet(layout.mixture_dir / f) for f in manifest["files"]])
    assert rows.height == manifest["documents"] and int(rows["tokens"].sum()) == manifest["tokens"]
    assert len(manifest["files"]) == math.ceil(rows.height / prof.mixture_rows_per_shard)
    assert manifest["tokens"] <= 3000 and manifest["tokens"] > 2500
    for r in manifest["per_domain"]:
        sub = rows.filter(pl.col("domain") == int(r["domain"]))
        assert sub.height == r["documents"] and int(sub["tokens"].sum()) == r["tokens"]
        assert r["epochs"] <= prof.mix_max_epochs
    # every row is a real document with its text and its student domain
    assign = pl.concat([pl.read_parquet(layout.assignments_path(k), columns=["id", "domain"]) for k in
                        ("a.jsonl", "b.jsonl", "c.parquet")])
    joined = rows.join(assign.rename({"domain": "student"}), on="id", how="left")
    assert (joined["domain"] == joined["student"].cast(pl.Int64)).all()
    assert manifest["provenance"]["student_fingerprint"] and manifest["provenance"]["shards"]
    _assert_mixture_as_before(layout, settings.mixture_params(), tmp_path / "old-mixture")

    md = _md(result, "doremi_weights")
    assert md["weights_chart"].startswith("![DoReMi weights vs natural shares](data:image/png;base64,")
    assert md["mlflow_status"] == "logged"
    assert _md(result, "regmix_runs")["mlflow_status"] == "logged"
    assert mixing_state(instance, settings) == {"stale": False, "reason": "up to date", "stale_assets": {}}

    # MLflow: DoReMi's trajectory per step, one nested run per RegMix proxy run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{gem_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gem-mixing")
    doremi_run = client.get_run(md["mlflow_run_id"])
    assert len(client.get_metric_history(doremi_run.info.run_id, "weight/0")) == prof.mix_doremi_steps
    parent = _md(result, "regmix_runs")["mlflow_run_id"]
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == prof.mix_regmix_runs
    assert sorted(c.data.metrics["final_target_bpb"] for c in children) == pytest.approx(sorted(runs["loss"]))

    # switching the mixer makes only the curated mixture stale
    doremi_res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=0.0,
                                mixture_tokens=3000, mixer="doremi")
    assert mixing_state(instance, doremi_res["gem"].settings())["stale_assets"] == {
        "curated_mixture": "inputs or parameters changed"}
    assert materialize([curated_mixture], instance=instance, resources=doremi_res).success
    assert storage.read_json(layout.mixture_dir / "manifest.json")["mixer"] == "doremi"
    _assert_mixture_as_before(layout, doremi_res["gem"].settings().mixture_params(), tmp_path / "old-doremi")

    # a source as the target (GEM_MIX_TARGET): the held-out documents of that source, sampled as before
    sport = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=0.0, mixture_tokens=3000,
                           mix_target="sport", mix_max_target_documents=2)
    assert materialize([proxy_corpus], instance=instance, resources=sport).success
    meta = storage.read_json(layout.proxy_corpus_dir / "meta.json")
    assert meta["target"] == "sport" and meta["target_documents"] == 2 < meta["target_documents_available"]
    target = storage.read_safetensors(layout.proxy_corpus_dir / "target.safetensors")["target"]
    np.testing.assert_array_equal(target, _old_target_stream(layout, sport["gem"].settings().mixture_params()))
    sport_texts = set(pl.concat([pl.read_parquet(layout.documents_path(k), columns=["text", "source"])
                                for k in meta["shards"]])
                      .filter(pl.col("source") == "sport")["text"].to_list())
    docs = target.tobytes().split(b"\x00")[:-1]
    assert len(docs) == 2 and all(d.decode() in sport_texts for d in docs)


def test_mixing_without_stats_fails_clearly(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4)
    with pytest.raises(Exception, match="domain_stats"):
        materialize([proxy_corpus], instance=instance, resources=res)


def test_bad_mixer_is_rejected():
    from gem_assets.config import Settings

    with pytest.raises(ValueError, match="GEM_MIXER"):
        Settings.from_env({"GEM_MIXER": "uniform"})
    with pytest.raises(ValueError, match="GEM_MIXTURE_TOKENS"):
        Settings.from_env({"GEM_MIXTURE_TOKENS": "0"})
    assert Settings.from_env({"GEM_MIX_TARGET": "tech"}).mixture_params()["target"] == "tech"


def test_memory_caps_reach_the_dagster_resource():
    """GEM_* memory caps survive the trip through the GemConfig resource (what the assets read)."""
    from gem_assets.resources.config import GemConfig

    env = {"GEM_TAXONOMY_MAX_TERMS": "99", "GEM_TAXONOMY_COUNT_CAP": "400", "GEM_EVAL_MAX_TARGET_DOCS": "7",
           "GEM_EVAL_MAX_TRAIN_DOCS": "8", "GEM_MIX_MAX_TARGET_DOCS": "5"}
    s = GemConfig.from_env(env).settings()
    assert (s.taxonomy_max_terms, s.taxonomy_count_capacity, s.eval_max_target_documents,
            s.eval_max_train_documents, s.mix_max_target_documents) == (99, 400, 7, 8, 5)
    assert s.mixture_params()["max_target_documents"] == 5
    assert GemConfig.from_env({}).settings().mixture_params()["max_target_documents"] == PROFILES["default"].mix_max_target_documents
    with pytest.raises(ValueError, match="GEM_MIX_MAX_TARGET_DOCS"):
        GemConfig.from_env({"GEM_MIX_MAX_TARGET_DOCS": "0"})


def test_make_run_runs_the_mixing_stage_once(tiny_corpus, gem_home, instance):
    import io

    from dagster import AssetKey

    from gem_assets.definitions import build_definitions
    from gem_assets.run import run_pipeline

    defs = build_definitions(**make_resources(gem_home, str(tiny_corpus / "*"), k=4))
    buf = io.StringIO()
    first = run_pipeline(defs, instance, out=buf)
    assert first["mixing"] == "computed" and "mixing" not in first["failed"]
    assert "curated mixture" in buf.getvalue() and "mixing_job" in buf.getvalue()
    manifest = Layout(gem_home.resolve()).mixture_dir / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    second = run_pipeline(defs, instance, out=io.StringIO())
    assert second["mixing"] == "up to date"
    assert manifest.stat().st_mtime_ns == mtime
    assert len(instance.fetch_materializations(AssetKey("curated_mixture"), limit=10).records) == 1

"""Mixing assets at the smoke profile on the tiny corpus: proxy corpus, DoReMi, RegMix, curated mixture;
the proxy kind (``GEM_PROXY``) and the parameters in the mixing fingerprints."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, Failure, materialize

from conftest import make_resources
from gem_assets.config import PROFILES, Layout, Settings
from gem_assets.defs.mixing import (MIXING_ASSETS, curated_mixture, doremi_weights, mixing_fingerprints,
                                    proxy_corpus, regmix_runs, regmix_weights)
from gem_assets.defs.student import domain_stats, student_model
from gem_assets.defs.versions import code_version_for, data_version
from gem_assets.lib.io import storage
from test_student_assets import _assign, _checks, _md, _teacher


def _new_code_versions(before: Settings, after: Settings) -> set[str]:
    """Mixing assets whose code version differs between two settings (what Dagster shows stale)."""
    names = [a.key.to_user_string() for a in MIXING_ASSETS]
    return {n for n in names if code_version_for(n, before) != code_version_for(n, after)}


def _up_to_stats(instance, res):
    _teacher(instance, res)
    assert materialize([student_model], instance=instance, resources=res).success
    assert all(r.success for r in _assign(instance, res).values())
    assert materialize([domain_stats], instance=instance, resources=res).success


def _old_index(layout):
    """The mixing index as it was when ids and sources were held in memory (the reference)."""
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.mixing.corpus_index import corpus_index

    shards = storage.read_json(layout.domain_stats_dir / "summary.json")["shards"]
    index = corpus_index(lambda k: artifacts.read_documents(layout, k),
                                 lambda k: storage.read_parquet(layout.assignments_path(k), columns=["id", "domain"]),
                                 shards)
    texts = {k: artifacts.read_documents(layout, k)["text"] for k in index.shards}

    def read_texts(pos):
        return [texts[index.shards[int(index.shard[i])]][int(index.row[i])] for i in pos]

    return index, read_texts


def _old_target_stream(layout, p):
    """The target stream the proxy corpus held before (sources compared and keys built in memory)."""
    from gem_assets.lib.mixing.streams import split_documents, texts_to_streams
    from gem_assets.lib.mixing import sampling

    index, read_texts = _old_index(layout)
    held = split_documents(index.domains, p["valid_fraction"], p["seed"])
    if p["target"] is not None:
        held &= (index.sources == p["target"]).fill_null(False).to_numpy()
    idx = sampling.bottom_k_positions(np.flatnonzero(held), index.document_keys(), p["max_target_documents"],
                                      p["seed"], "mixing/proxy_target")
    return texts_to_streams(read_texts(idx), ["target"] * idx.size)["target"]


def _assert_mixture_as_before(layout, p, tmp):
    """The curated mixture's files are byte for byte those the in-memory index (ids held) writes."""
    from gem_assets.lib.mixing.curated import sample_curated_mixture, write_curated_parts

    manifest = storage.read_json(layout.mixture_dir / "manifest.json")
    index, read_texts = _old_index(layout)
    weights = np.array([manifest["weights"][str(d)] for d in range(len(manifest["weights"]))])
    sample = sample_curated_mixture(index.tokens, index.domains, weights, manifest["budget_tokens"],
                                            p["max_epochs"], p["seed"])
    files = write_curated_parts(index, sample, read_texts, tmp, p["rows_per_shard"])
    assert files == manifest["files"]
    for f in files:
        assert (tmp / f).read_bytes() == (layout.mixture_dir / f).read_bytes(), f


def test_mixing_assets_smoke_end_to_end(tiny_corpus, gem_home, instance, tmp_path):
    """The n-gram path (GEM_PROXY=ngram, what ``auto`` gives without CUDA) from domain stats to the mixture."""
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, mlflow=True, student_min_agreement=0.0,
                         tracking_uri=f"sqlite:///{gem_home / 'mlflow.db'}", mixture_tokens=3000,
                         mix_max_target_documents=5, proxy="ngram")
    _up_to_stats(instance, res)
    settings = res["gem"].settings()
    assert instance.get_latest_materialization_event(AssetKey("proxy_corpus")) is None
    result = materialize(MIXING_ASSETS, instance=instance, resources=res)
    assert result.success
    checks = _checks(result)
    layout = Layout(gem_home.resolve())
    # the regressor's check passes exactly when the recorded out-of-fold Spearman is at least 0.5
    rho = storage.read_json(layout.weights_dir / "regmix.json")["fit"]["spearman_cv"]
    assert checks == {"documents_conserved": (True, "ERROR"), "weights_valid": (True, "ERROR"),
                      "runs_complete": (True, "ERROR"), "regressor_ranks_runs": (bool(rho >= 0.5), "WARN"),
                      "counts_match_manifest": (True, "ERROR"), "epoch_cap": (True, "ERROR")}
    prof = PROFILES["smoke"]

    # proxy corpus: four domains' streams, 10% of each domain's documents held out
    meta = storage.read_json(layout.proxy_corpus_dir / "meta.json")
    assert meta["documents"] == 120 and meta["domains"] == ["0", "1", "2", "3"]
    # the target stream holds a seeded sample of at most mix_max_target_documents held-out documents
    assert meta["target_documents"] == 5 and meta["target_documents_available"] == meta["valid_documents"] > 5
    target = storage.read_safetensors(layout.proxy_corpus_dir / "target.safetensors")["target"]
    assert int((target == 0).sum()) == 5    # one separator byte per document (SEPARATOR)
    # the same documents as the in-memory reference (keys and sources in memory), byte for byte
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
    # DoReMi by rounds on n-gram proxies: mean excess loss (nats) per domain, the rounds' step size
    assert doremi["proxy"]["kind"] == "ngram" and doremi["variant"] == "iterated rounds on n-gram proxies"
    assert doremi["proxy"]["order"] == prof.mix_ngram_order and doremi["proxy"]["budget_tokens"] == prof.mix_proxy_tokens
    assert set(doremi["excess_mean"]) == set(present)
    assert all(math.isfinite(v) and v >= 0 for v in doremi["excess_mean"].values())
    assert doremi["rounds"] == prof.mix_doremi_rounds and doremi["step_size"] > 0
    assert set(doremi["reference_bpb"]) == set(doremi["proxy_bpb"]) == set(doremi["reference_weights"]) == set(present)
    assert doremi["top_weight"] == pytest.approx(max(doremi["weights"].values()))
    assert (layout.weights_dir / "doremi_excess.png").read_bytes()[:4] == b"\x89PNG"
    runs = pl.read_parquet(layout.regmix_runs_dir / "runs.parquet")
    assert runs.height == prof.mix_regmix_runs and runs["loss"].is_finite().all()
    assert np.allclose(runs.select(pl.col("^w_.*$")).to_numpy().sum(1), 1.0)
    regmix = storage.read_json(layout.weights_dir / "regmix.json")
    assert regmix["runs"] == prof.mix_regmix_runs and "spearman_cv" in regmix["fit"]
    assert regmix["fit"]["kind"] in ("gp", "linear", "hgb")
    # the runs' proxies: n-gram models of mix_proxy_tokens bytes (or the whole corpus, when smaller); a count
    # model beats 8 bits per byte
    proxy = regmix["proxy"]
    assert proxy["kind"] == "ngram" and proxy["order"] == prof.mix_ngram_order
    train_bytes = sum(int(v.size) for v in storage.read_safetensors(layout.proxy_corpus_dir / "train.safetensors").values())
    assert proxy["budget_tokens"] == min(prof.mix_proxy_tokens, train_bytes)   # at most the corpus's size
    assert math.isfinite(proxy["median_target_bpb"]) and 0 < proxy["median_target_bpb"] < 8
    assert proxy["median_target_bpb"] == pytest.approx(float(np.median(runs["loss"].to_numpy())))
    w = np.array(list(regmix["weights"].values()))
    assert regmix["proposal"]["entropy"] == pytest.approx(float(-(w[w > 0] * np.log(w[w > 0])).sum()))
    assert regmix["proposal"]["top_weight"] == pytest.approx(w.max())
    assert regmix["weights"][regmix["proposal"]["top_domain"]] == pytest.approx(w.max())
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
    assert md["excess_chart"].startswith("![DoReMi mean excess loss](data:image/png;base64,")
    assert md["mlflow_status"] == "logged" and md["proxy_kind"] == "ngram"
    assert md["top_weight"] == pytest.approx(doremi["top_weight"])
    assert _md(result, "regmix_runs")["mlflow_status"] == "logged"
    rmd = _md(result, "regmix_weights")
    assert rmd["proxy_kind"] == "ngram" and rmd["median_target_bpb"] == pytest.approx(proxy["median_target_bpb"])
    assert rmd["entropy"] == pytest.approx(regmix["proposal"]["entropy"])
    assert rmd["top_weight"] == pytest.approx(regmix["proposal"]["top_weight"])
    ranks = result.get_asset_check_evaluations()
    ranks = next(e for e in ranks if e.check_name == "regressor_ranks_runs")
    assert ranks.metadata["runs"].value == prof.mix_regmix_runs
    assert ranks.metadata["spearman_cv"].value == pytest.approx(rho)
    for name, fp in mixing_fingerprints(settings, storage.read_json(layout.domain_stats_dir / "summary.json")
                                        ["fingerprint"]).items():  # data versions follow the recorded fingerprints
        event = instance.get_latest_materialization_event(AssetKey(name)).asset_materialization
        assert event.tags["dagster/data_version"] == data_version(name, fp)

    # MLflow: DoReMi's trajectory per round; RegMix's runs as one run (losses as a history, the
    # table as an artifact), no nested run per proxy
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{gem_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gem-mixing")
    doremi_run = client.get_run(md["mlflow_run_id"])
    assert len(client.get_metric_history(doremi_run.info.run_id, "weight/0")) == prof.mix_doremi_rounds
    assert doremi_run.data.params["proxy_kind"] == "ngram"
    parent = _md(result, "regmix_runs")["mlflow_run_id"]
    assert not client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    history = client.get_metric_history(parent, "loss")
    assert sorted(m.value for m in history) == pytest.approx(sorted(runs["loss"]))
    assert "runs.parquet" in {a.path for a in client.list_artifacts(parent)}
    fit_run = client.get_run(rmd["mlflow_run_id"])
    assert fit_run.data.params["proxy_kind"] == "ngram"
    assert fit_run.data.metrics["final_median_target_bpb"] == pytest.approx(proxy["median_target_bpb"])

    # switching the mixer gives only the curated mixture a new code version (stale)
    doremi_res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=0.0,
                                mixture_tokens=3000, mixer="doremi", proxy="ngram")
    assert _new_code_versions(settings, settings.with_(mixer="doremi")) == {"curated_mixture"}
    assert materialize([curated_mixture], instance=instance, resources=doremi_res).success
    assert storage.read_json(layout.mixture_dir / "manifest.json")["mixer"] == "doremi"
    _assert_mixture_as_before(layout, doremi_res["gem"].settings().mixture_params(), tmp_path / "old-doremi")

    # GEM_PROXY=transformer: the proxy models (not the proxy corpus) get new code versions (stale; the
    # RegMix weights and the mixture follow once their new data versions are recorded), and today's
    # transformer proxies (smoke sizes) still run and are recorded as such
    trans = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=0.0, mixture_tokens=3000,
                           proxy="transformer")
    assert _new_code_versions(settings, settings.with_(proxy="transformer")) == {"doremi_weights", "regmix_runs"}
    t_result = materialize([doremi_weights, regmix_runs, regmix_weights], instance=instance, resources=trans)
    assert t_result.success
    regmix = storage.read_json(layout.weights_dir / "regmix.json")
    assert regmix["proxy"]["kind"] == "transformer" and regmix["runs"] == prof.mix_regmix_runs
    assert regmix["proxy"]["config"]["d_model"] == dict(prof.mix_proxy_config)["d_model"]
    assert math.isfinite(regmix["proxy"]["median_target_bpb"]) and "spearman_cv" in regmix["fit"]
    assert _checks(t_result)["regressor_ranks_runs"] == (bool(regmix["fit"]["spearman_cv"] >= 0.5), "WARN")
    doremi = storage.read_json(layout.weights_dir / "doremi.json")
    assert doremi["proxy"]["kind"] == "transformer" and doremi["variant"] == "online Group DRO on a transformer proxy"
    assert math.isclose(sum(doremi["weights"].values()), 1.0, rel_tol=1e-9)
    assert _md(t_result, "regmix_weights")["proxy_kind"] == _md(t_result, "doremi_weights")["proxy_kind"] == "transformer"

    # a source as the target (GEM_MIX_TARGET): the held-out documents of that source, sampled as before
    sport = make_resources(gem_home, str(tiny_corpus / "*"), k=4, student_min_agreement=0.0, mixture_tokens=3000,
                           mix_target="sport", mix_max_target_documents=2, proxy="ngram")
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
    with pytest.raises(Failure, match="no domain stats: materialize 'domain_stats' first"):
        materialize([proxy_corpus], instance=instance, resources=res)


def test_proxy_setting_resolves_and_rejects_unknown_kinds(monkeypatch):
    import gem_assets.config as config
    from gem_assets.resources.config import GemConfig

    assert Settings.from_env({}).proxy == "auto"
    assert Settings.from_env({"GEM_PROXY": " NGram "}).effective_proxy == "ngram"
    assert Settings.from_env({"GEM_PROXY": "transformer"}).mixture_params()["proxy"] == "transformer"
    monkeypatch.setattr(config, "_cuda_available", lambda: True)
    assert Settings.from_env({}).effective_proxy == "transformer"
    assert Settings.from_env({"GEM_PROXY": "ngram"}).effective_proxy == "ngram"
    monkeypatch.setattr(config, "_cuda_available", lambda: False)
    assert Settings.from_env({}).mixture_params()["proxy"] == Settings.from_env({}).evaluation_params()["proxy"] == "ngram"
    with pytest.raises(ValueError, match=r"GEM_PROXY must be 'ngram' .*'transformer' .*'auto'.*got 'bogus'"):
        Settings.from_env({"GEM_PROXY": "bogus"})
    with pytest.raises(ValueError, match="GEM_PROXY"):
        GemConfig.from_env({"GEM_PROXY": "bogus"})
    with pytest.raises(ValueError, match="GEM_PROXY"):
        GemConfig(proxy="bogus").settings()
    assert GemConfig.from_env({"GEM_PROXY": "transformer"}).settings().proxy == "transformer"


def test_profile_sizes_of_the_proxies():
    smoke, default, full = PROFILES["smoke"], PROFILES["default"], PROFILES["full"]
    assert (default.mix_regmix_runs, smoke.mix_regmix_runs, full.mix_regmix_runs) == (256, 8, 512)
    assert (default.mix_proxy_tokens, smoke.mix_proxy_tokens, full.mix_proxy_tokens) == (1_000_000, 20_000, 4_000_000)
    assert (default.mix_ngram_max_grams, full.mix_ngram_max_grams) == (None, 20_000_000)
    assert (default.mix_doremi_rounds, smoke.mix_doremi_rounds, default.mix_ngram_order) == (24, 3, 5)
    p = Settings(profile="smoke", proxy="ngram").mixture_params()
    assert (p["proxy"], p["ngram_order"], p["proxy_tokens"], p["ngram_max_grams"], p["doremi_rounds"]) == (
        "ngram", 5, 20_000, None, 3)
    # evaluation: the fields another stage reads through evaluation_params()
    e = Settings(profile="smoke", proxy="ngram").evaluation_params()
    assert (len(e["seeds"]), e["budget_tokens"], e["proxy_tokens"], e["regmix_runs"], e["doremi_rounds"]) == (
        2, 20_000, 10_000, 4, 2)
    # the default corpus has a source column: the evaluation targets all documents and each source
    assert (e["proxy"], e["ngram_order"], e["max_epochs"], e["targets"]) == ("ngram", 5, 4.0, "all and each source")
    assert "holdout_rule" not in e
    e = Settings(profile="default", proxy="ngram").evaluation_params()
    assert (len(e["seeds"]), e["budget_tokens"], e["proxy_tokens"], e["regmix_runs"], e["doremi_rounds"]) == (
        50, 1_000_000, 500_000, 128, 24)
    assert Settings(profile="default", corpus="x/*.jsonl", proxy="ngram").evaluation_params()["targets"] == "all"
    # full: no byte budget of its own, the transformer target's steps * batch * context
    e = Settings(profile="full", proxy="ngram").evaluation_params()
    assert e["budget_tokens"] == full.eval_steps * full.eval_batch_size * dict(full.eval_target_config)["context"]
    assert (len(e["seeds"]), e["proxy_tokens"], e["regmix_runs"]) == (10, 2_000_000, 64)


def test_mixing_fingerprints_hold_the_proxy_parameters(monkeypatch):
    """Changing the proxy kind or a parameter of the kind in use recomputes DoReMi, RegMix and the
    mixture (``make run``), never the proxy corpus; a parameter of the other kind changes nothing."""
    base = Settings(profile="smoke", proxy="ngram")
    fps = mixing_fingerprints(base, "stats")
    weights = ("doremi_weights", "regmix_runs", "regmix_weights", "curated_mixture")

    def changed(settings):
        new = mixing_fingerprints(settings, "stats")
        return {k for k in fps if new[k] != fps[k]}

    assert changed(base.with_(proxy="transformer")) == set(weights)
    for field, value in (("mix_proxy_tokens", 30_000), ("mix_ngram_order", 4), ("mix_ngram_max_grams", 1_000),
                         ("mix_doremi_rounds", 5), ("mix_regmix_runs", 9)):
        monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], **{field: value}))
        expected = {"doremi_weights"} if field == "mix_doremi_rounds" else (
            {"regmix_runs", "regmix_weights", "curated_mixture"} if field == "mix_regmix_runs" else set(weights))
        assert changed(base) == expected, field
        monkeypatch.undo()
    # a transformer parameter leaves the n-gram path's fingerprints alone, and moves the transformer path's
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], mix_regmix_steps=7, mix_doremi_steps=7))
    assert changed(base) == set()
    monkeypatch.undo()
    tfps = mixing_fingerprints(base.with_(proxy="transformer"), "stats")
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], mix_regmix_steps=7))
    assert mixing_fingerprints(base.with_(proxy="transformer"), "stats")["regmix_runs"] != tfps["regmix_runs"]


def test_bad_mixer_is_rejected():
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

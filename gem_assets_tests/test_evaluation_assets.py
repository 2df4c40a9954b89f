"""mixture_evaluation end to end at the smoke profile: real (tiny) byte-level LMs, DoReMi and RegMix
on the tiny corpus, through Dagster's API; then make run's evaluation stage decides from fingerprints."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from dagster import AssetKey, materialize

from conftest import make_resources
from gem_assets.config import PROFILES, Layout, Settings
from gem_assets.defs.evaluation import mixture_evaluation
from gem_assets.defs.versions import code_version_for, data_version
from gem_assets.defs.student import student_model
from gem_assets.lib.io import storage
from test_evaluation import held_out_by_hand
from test_student_assets import KEYS, _assign, _checks, _md, _teacher

MIXERS = ["natural", "uniform", "doremi", "regmix"]
BUCKETIZATIONS = ["source", "kmeans", "gem"]


def test_mixture_evaluation_smoke_end_to_end(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4, mlflow=True,
                         tracking_uri=f"sqlite:///{gem_home / 'mlflow.db'}")
    _teacher(instance, res)
    assert materialize([student_model], instance=instance, resources=res).success
    assert all(r.success for r in _assign(instance, res).values())
    settings = res["gem"].settings()
    assert instance.get_latest_materialization_event(AssetKey("mixture_evaluation")) is None

    result = materialize([mixture_evaluation], instance=instance, resources=res)
    assert result.success
    assert _checks(result) == {"table_complete": (True, "ERROR"), "same_budget": (True, "WARN"),
                               "target_held_out": (True, "ERROR")}
    prof = PROFILES["smoke"]
    n_seeds = prof.eval_seeds
    layout = Layout(gem_home.resolve())
    out = layout.evaluation_dir
    for name in ("results.csv", "runs.csv", "differences.csv", "results.md", "bpb.png", "weights.json", "summary.json"):
        assert (out / name).is_file(), name

    # the table: every (bucketization, mixer, target), n seeds, finite bits per byte, intervals around the mean
    table = pl.read_csv(out / "results.csv")
    targets = ["all", "food", "money", "sport", "tech"]      # (a) the whole held-out set, (b) each source in turn
    assert set(table["target"]) == set(targets) | {"mean_of_sources"}
    assert set(table.select("bucketization", "mixer", "target").rows()) == {
        (b, m, t) for b in BUCKETIZATIONS for m in MIXERS for t in targets + ["mean_of_sources"]}
    assert table["seeds"].to_list() == [n_seeds] * table.height
    mean, low, high = (table[f"bpb_target{x}"].to_numpy() for x in ("", "_low", "_high"))
    assert np.all(np.isfinite(mean)) and np.all(mean > 0) and np.all(np.isfinite([low, high]))
    assert np.all(low <= mean) and np.all(mean <= high)
    # a model of a few kB of every domain (natural shares) beats a uniform guess on every target; RegMix's
    # weights from the smoke profile's 4 runs may leave a target's topic out, and a count model that never
    # saw it can be worse than uniform
    assert (table.filter(pl.col("mixer") == "natural")["bpb_target"] < 8.0).all()
    assert table.filter(pl.col("bucketization") == "source")["domains"].unique().to_list() == [4]

    runs = pl.read_csv(out / "runs.csv")
    assert runs.height == len(BUCKETIZATIONS) * len(MIXERS) * len(targets) * n_seeds
    budget = settings.evaluation_params()["budget_tokens"]
    assert runs["tokens"].max() <= budget and runs["tokens"].min() > 0.9 * budget
    # the table's means are those of the seeds
    for r in table.filter(pl.col("target") != "mean_of_sources").iter_rows(named=True):
        ys = runs.filter((pl.col("bucketization") == r["bucketization"]) & (pl.col("mixer") == r["mixer"])
                         & (pl.col("target") == r["target"]))["bpb"]
        assert ys.len() == n_seeds and math.isclose(r["bpb_target"], ys.mean(), rel_tol=1e-12)
    diffs = pl.read_csv(out / "differences.csv")
    assert {"target", "mixer", "versus", "seeds", "difference", "low", "high"} <= set(diffs.columns)
    assert set(diffs["versus"]) == {"source", "kmeans"} and set(diffs["target"]) == set(targets) | {"mean_of_sources"}

    weights = storage.read_json(out / "weights.json")
    for b in BUCKETIZATIONS:
        for m in MIXERS:
            for t in targets:
                assert math.isclose(sum(weights["weights"][b][m][t].values()), 1.0, rel_tol=1e-9)
    summary = storage.read_json(out / "summary.json")
    c = summary["counts"]
    assert c["target"] + c["select"] + c["fit"] + c["unusable"] + c["capped"] == c["documents"] == 120
    # the target set: the documents whose seeded key hash falls under the holdout fraction (none capped here)
    doc_keys = [f"{k}/{i}" for k in KEYS for i in storage.read_parquet(settings.layout.documents_path(k))["id"]]
    held = held_out_by_hand(doc_keys, settings.evaluation_params()["holdout"], settings.seed)
    assert c["capped"] == 0 and c["target"] == sum(held) > 0

    md = _md(result, "mixture_evaluation")
    assert md["n_target_models"] == runs.height
    assert md["bpb_chart"].startswith("![held-out bits per byte](data:image/png;base64,")
    assert "| all | source | natural | 4 | " in md["results"] and "GEM minus each other bucketization" in md["results"]
    assert md["mlflow_status"] == "logged"
    assert md["input_fingerprint"] == summary["fingerprint"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{gem_home / 'mlflow.db'}")
    run = client.get_run(md["mlflow_run_id"])
    assert math.isclose(run.data.metrics["final_bpb/all/gem/uniform"],
                        table.filter((pl.col("bucketization") == "gem") & (pl.col("mixer") == "uniform")
                                     & (pl.col("target") == "all"))["bpb_target"][0], rel_tol=1e-9)
    assert {a.path for a in client.list_artifacts(md["mlflow_run_id"])} >= {"results.csv", "results.md", "bpb.png"}

    # Dagster's view: the data version follows the recorded fingerprint; an evaluation parameter
    # gives the asset a new code version (stale in the UI and for make run)
    event = instance.get_latest_materialization_event(AssetKey("mixture_evaluation")).asset_materialization
    assert event.tags["dagster/data_version"] == data_version("mixture_evaluation", summary["fingerprint"])
    other = Settings(**{**settings.as_dict(), "seed": 1})
    assert code_version_for("mixture_evaluation", other) != code_version_for("mixture_evaluation", settings)


def test_checks_fail_on_a_missing_group_a_short_seed_a_budget_overrun_or_lost_documents():
    from gem_assets.defs.evaluation import _checks
    from gem_assets.lib.evaluation.statistics import summarize

    mixers = ("natural", "uniform")
    rows = [{"bucketization": b, "mixer": m, "target": t, "seed": s, "domains": 2, "tokens": 95, "unique_documents": 5,
             "train_seconds": 0.1, "bpb": 3.0 + 0.01 * s}
            for b in ("kmeans", "gem") for m in mixers for t in ("all", "tech") for s in range(3)]
    runs = pl.DataFrame(rows)
    counts = {"documents": 10, "target": 2, "select": 1, "fit": 7, "unusable": 0}

    def passed(r, c=counts, budget=100, max_doc=10):
        return {x.check_name: x.passed for x in _checks(r, summarize(r), c, 3, mixers, budget, max_doc)}

    assert passed(runs) == {"table_complete": True, "same_budget": True, "target_held_out": True}
    missing = runs.filter(~((pl.col("bucketization") == "gem") & (pl.col("mixer") == "uniform")
                            & (pl.col("target") == "tech")))
    assert passed(missing)["table_complete"] is False
    short = runs.filter(~((pl.col("bucketization") == "gem") & (pl.col("seed") == 2)))
    assert passed(short)["table_complete"] is False
    over = runs.with_columns(pl.when(pl.col("seed") == 1).then(101).otherwise(pl.col("tokens")).alias("tokens"))
    assert passed(over)["same_budget"] is False                       # more than the budget
    assert passed(runs, budget=200)["same_budget"] is False            # far less than the budget: 95 < 200 - 2 * 10
    assert passed(runs, c={**counts, "fit": 6})["target_held_out"] is False

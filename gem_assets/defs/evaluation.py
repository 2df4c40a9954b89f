"""``mixture_evaluation``: do GEM domains make better mixtures than other bucketizations?

Holds out a seeded target set of the whole corpus, buckets the remaining documents three
ways (source labels, Euclidean k-means with GEM's K, GEM's student domains), computes the
weights of four mixers (natural shares, uniform, DoReMi, RegMix) on each, trains target
language models on a fresh draw of every mixture's documents for each seed at one token
budget, and reports held-out bits per byte with Student-t intervals for two settings: the
held-out documents of the whole corpus (``all``) and each source in turn (``lib/evaluation/experiment.py``).
Written to ``outputs/evaluation/``.

Fingerprint (recorded in metadata and ``summary.json``; the data version Dagster compares is
derived from it): the documents, embeddings and assignments fingerprints of every shard read (a
shard without current assignments, or failed, is left out and named: ``defs/bad_shards``), the
teacher sample's, the student's and the evaluation parameters. What is stale is decided by
Dagster from code and data versions (``gem_assets/defs/versions.py``), not by comparing
fingerprints.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from gem_assets.config import Settings, fingerprint
from gem_assets.defs._format import markdown_table
from gem_assets.defs.shards import shard_manifest
from gem_assets.defs.student import domain_assignments, student_model
from gem_assets.defs.teacher import teacher_sample
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["mixture_evaluation", "evaluation_fingerprint", "EVALUATION_EXPERIMENT",
           "EVALUATION_CHECKS"]

#: MLflow experiment of the evaluation runs.
EVALUATION_EXPERIMENT = "gem-evaluation"

EVALUATION_CHECKS = {
    "table_complete": "Every (bucketization, mixer, target) has a row with the profile's number of seeds, finite "
                      "positive bits per byte, and an interval that contains its mean.",
    "same_budget": "Every target model trained on at most the token budget, and on no less than the budget minus "
                   "one document per domain (samples are whole documents).",
    "target_held_out": "The held-out target set, the weight-selection set and the training documents are disjoint "
                       "and together make up the corpus.",
}


def _inputs(settings: Settings, keys, failed=()) -> tuple[dict, dict[str, str]]:
    """The fingerprints of what the evaluation reads, and the shards it leaves out with the reason.

    A shard is read when it has documents, embeddings and assignments made by the current student
    from its current documents, and is not ``failed`` (``defs/bad_shards``).

    Raises
    ------
    FileNotFoundError
        When there is no teacher sample or no student.
    """
    from gem_assets.defs.student import assignments_fingerprint
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage

    layout = settings.layout
    sample_meta = layout.teacher_sample_dir / "meta.json"
    student = layout.student_outputs_dir / "summary.json"
    if not sample_meta.is_file() or not student.is_file():
        raise FileNotFoundError("no teacher sample or student: materialize 'teacher_sample' and 'student_model' first")
    student_fp = storage.read_json(student)["fingerprint"]
    shards, excluded = {}, {}
    for key in sorted(keys):
        if key in failed:
            continue
        docs = artifacts.read_documents_meta(layout, key)
        emb = artifacts.read_embeddings_meta(layout, key)
        apath = layout.assignments_meta_path(key)
        if docs is None:
            excluded[key] = "no documents"
        elif emb is None:
            excluded[key] = "not embedded yet"
        elif not apath.is_file() or not layout.assignments_path(key).is_file():
            excluded[key] = "not assigned yet"
        elif storage.read_json(apath)["fingerprint"] != assignments_fingerprint(student_fp, docs["fingerprint"]):
            excluded[key] = "assigned by another student or from other documents"
        else:
            shards[key] = [docs["fingerprint"], emb.get("fingerprint"), storage.read_json(apath)["fingerprint"]]
    return {"shards": shards, "teacher_sample": storage.read_json(sample_meta)["fingerprint"],
            "student": student_fp}, excluded


def evaluation_fingerprint(settings: Settings, inputs: dict) -> str:
    """What determines the evaluation: its inputs' fingerprints (:func:`_inputs`) and its parameters."""
    return fingerprint("mixture_evaluation", inputs, settings.evaluation_params())


def _config(settings: Settings):
    """The evaluation's configuration from the profile: n-gram target models and proxies on a CPU,
    transformers where ``GEM_PROXY`` resolves to ``transformer`` (a CUDA GPU by default)."""
    from gem_assets.lib.evaluation.backends import MixerSettings
    from gem_assets.lib.evaluation.experiment import EvaluationConfig
    from gem_assets.lib.mixing.lm import LMConfig

    p = settings.evaluation_params()
    transformer = None
    budget = p["budget_tokens"]
    if p["proxy"] == "transformer":
        target = LMConfig(**p["target_config"])
        transformer = {"config": target, "steps": p["steps"], "batch_size": p["batch_size"], "lr": 3e-3,
                       "device": "auto", "max_eval_tokens": p["max_eval_tokens"]}
    mixing = MixerSettings(
        proxy=p["proxy"], proxy_tokens=p["proxy_tokens"], regmix_runs=p["regmix_runs"],
        doremi_rounds=p["doremi_rounds"], budget_tokens=budget, order=p["ngram_order"], max_epochs=p["max_epochs"],
        seed=p["seed"], n_simulations=p["n_simulations"], top_k=p["top_k"],
        transformer=None if p["proxy"] != "transformer" else {
            "config": LMConfig(**p["proxy_config"]), "doremi_steps": p["doremi_steps"],
            "regmix_steps": p["regmix_steps"], "batch_size": p["batch_size"], "lr": 3e-3, "device": "auto",
            "eval_max_tokens": p["max_eval_tokens"]})
    return EvaluationConfig(budget_tokens=budget, seeds=tuple(p["seeds"]), mixing=mixing, backend=p["proxy"],
                            order=p["ngram_order"], max_epochs=p["max_epochs"], seed=p["seed"],
                            transformer=transformer, device="auto")


@asset(
    deps=[domain_assignments, teacher_sample, student_model, shard_manifest],
    group_name="evaluation",
    kinds={"pytorch", "mlflow", "csv"},
    code_version=code_version("mixture_evaluation"),
    retry_policy=STORE_RETRY,
    # table_complete (finiteness) and target_held_out (conservation) block; same_budget is a fairness
    # warning: on a corpus smaller than the budget every mixture reads what the epoch cap allows
    check_specs=[AssetCheckSpec(name, asset="mixture_evaluation", description=d, blocking=name != "same_budget")
                 for name, d in EVALUATION_CHECKS.items()],
)
def mixture_evaluation(context: AssetExecutionContext, gem: GemConfig, mlflow: MlflowTracker) -> MaterializeResult:
    """Held-out bits per byte of target LMs trained on each bucketization x mixer mixture.

    Written to ``outputs/evaluation/``: ``results.csv`` (mean and interval per bucketization,
    mixer and target), ``runs.csv`` (one row per target model and target scored),
    ``differences.csv`` (GEM minus each other bucketization, paired by seed), ``results.md``
    (differences, table, setup), ``bpb.png``, ``weights.json`` and ``summary.json``.
    """
    import polars as pl

    from gem_assets.lib.io import artifacts
    from gem_assets.lib.util import plots
    from gem_assets.lib.io import storage
    from gem_assets.lib.evaluation import corpus_sample, experiment, reports, statistics

    from gem_assets.defs import bad_shards

    settings = gem.settings()
    layout = settings.layout
    failed = bad_shards.failed_shards(gem)
    try:
        inputs, excluded = _inputs(settings, sorted(gem.shards()), failed)
    except FileNotFoundError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    excluded = bad_shards.apply_policy(context, settings, "mixture_evaluation", excluded, failed)
    keys = sorted(inputs["shards"])
    if not keys:
        raise bad_shards.nothing_usable("mixture_evaluation", "no shard has current assignments", excluded,
                                        "materialize the 'domain_assignments' partitions first")
    try:
        params = settings.evaluation_params()
        # one pass over the shards, without texts: the held-out decisions and the capped target and
        # training samples; nothing per document is kept
        from gem_assets.defs.student import CROSS_SHARD_FILE

        skip = artifacts.read_cross_shard_duplicates(layout.student_outputs_dir / CROSS_SHARD_FILE)
        sample = corpus_sample.sample_corpus(layout, keys, holdout=params["holdout"], seed=params["seed"],
                                   max_target_documents=params["max_target_documents"],
                                   max_train_documents=params["max_train_documents"], progress=True, skip=skip)
        sample_vectors, _, _ = artifacts.read_teacher_sample(layout)
    except (FileNotFoundError, ValueError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    student = storage.read_json(layout.student_outputs_dir / "summary.json")
    try:
        config = _config(settings)
    except ValueError as exc:
        raise Failure(description=f"evaluation profile {settings.profile!r}: {exc}", allow_retries=False) from exc
    fp = evaluation_fingerprint(settings, inputs)
    use_source = params["source_column"] is not None and sample.counts["with_source"] > 0
    try:
        evaluation = experiment.evaluate_corpus(
            sample, sample_vectors, int(student["k"]), config, select=params["select"], use_source=use_source,
            kmeans=params["kmeans"], progress=True, log=context.log.info,
            texts=lambda rows: corpus_sample.read_texts(layout, rows),
        )
    except ValueError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    res, table = evaluation.result, evaluation.table
    report = reports.report_markdown(evaluation, config)
    png = reports.bpb_chart(table, confidence=config.confidence)
    out = layout.evaluation_dir
    record = {"fingerprint": fp, "shards": keys, "excluded": excluded, "params": params, "counts": evaluation.counts,
              "buckets": evaluation.bucket_counts,
              "targets": res.target_bytes, "config": config.params(), "seconds": res.seconds,
              "student_fingerprint": inputs["student"], "profile": settings.profile}
    with storage.atomic_dir(out) as tmp:
        table.write_csv(tmp / "results.csv")
        res.runs.write_csv(tmp / "runs.csv")
        evaluation.differences.write_csv(tmp / "differences.csv")
        (tmp / "results.md").write_text(report, encoding="utf-8")
        (tmp / "bpb.png").write_bytes(png)
        (tmp / "weights.json").write_text(experiment.weights_json(res), encoding="utf-8")
        storage.write_json(tmp / "summary.json", record)  # last: its presence means a complete evaluation

    tracker = MlflowTracker(tracking_uri=mlflow.tracking_uri, experiment=EVALUATION_EXPERIMENT,
                            enabled=mlflow.enabled, on_error=mlflow.on_error, probe_timeout_s=mlflow.probe_timeout_s)
    final = {f"bpb/{r['target']}/{r['bucketization']}/{r['mixer']}": r["bpb_target"] for r in table.iter_rows(named=True)}
    final.update({f"gem_minus/{r['versus']}/{r['target']}/{r['mixer']}": r["difference"]
                  for r in evaluation.differences.iter_rows(named=True)})
    outcome = tracker.log_fit(
        layout, run_name=f"evaluation-{context.run.run_id[:8]}",
        params={**{k: v for k, v in params.items() if k != "kmeans"}, **evaluation.counts, "fingerprint": fp},
        tags={"dagster.run_id": context.run.run_id, "dagster.asset_key": "mixture_evaluation",
              "gem.profile": settings.profile},
        history=[], metric_keys=(), final_metrics={**final, **{f"seconds_{k}": v for k, v in res.seconds.items()}},
        artifacts=[out / n for n in ("results.csv", "runs.csv", "differences.csv", "results.md", "bpb.png",
                                     "weights.json", "summary.json")],
        log=context.log,
    )

    checks = _checks(res.runs, table, evaluation.counts, len(config.seeds), config.mixers, config.budget_tokens,
                     res.max_document_tokens)
    best = table.filter(pl.col("target") == statistics.ALL).sort("bpb_target").row(0, named=True)
    md_table = table.select("target", "bucketization", "mixer", "seeds", *[pl.col(c).round(4) for c in (
        "bpb_target", "bpb_target_low", "bpb_target_high")])
    km = evaluation.differences.filter(pl.col("versus") == "kmeans")
    return MaterializeResult(
        metadata={
            "results": MetadataValue.md(report),
            "table": MetadataValue.md(markdown_table(md_table)),
            "bpb_chart": MetadataValue.md(plots.markdown_image(png, "held-out bits per byte")),
            "best_pair": f"{best['bucketization']}/{best['mixer']} ({best['bpb_target']:.4f} bpb on all)",
            "gem_minus_kmeans_max_half_width": float(km["half_width"].max()) if km.height else float("nan"),
            "targets": MetadataValue.json(res.target_bytes),
            "proxy": config.backend,
            "n_target_models": res.runs.height,
            "tokens_per_model": int(res.runs["tokens"].max()),
            "documents": MetadataValue.json(evaluation.counts),
            "weights": MetadataValue.json(res.weights),
            "weights_seconds": round(res.seconds["weights"], 2),
            "target_models_seconds": round(res.seconds["target_models"], 2),
            "input_fingerprint": fp,
            "shards": MetadataValue.json(keys),
            "excluded_shards": MetadataValue.json(excluded),
            "outputs": MetadataValue.path(str(out)),
            "mlflow_status": outcome.status, "mlflow_run_id": outcome.run_id or "", "mlflow_message": outcome.message,
        },
        data_version=DataVersion(data_version("mixture_evaluation", fp)),
        check_results=checks,
    )


def _checks(runs, table, counts: dict, n_seeds: int, mixers, budget: int, max_doc: int) -> list[AssetCheckResult]:
    import numpy as np

    targets = runs["target"].unique().to_list()
    groups = {(b, m, t) for b in runs["bucketization"].unique().to_list() for m in mixers for t in targets}
    seen = {(r["bucketization"], r["mixer"], r["target"]): r["seeds"] for r in table.iter_rows(named=True)
            if r["target"] in targets}
    values = runs["bpb"].to_numpy()
    contains = bool(((table["bpb_target_low"] <= table["bpb_target"]) & (table["bpb_target"] <= table["bpb_target_high"])).all())
    complete = set(seen) == groups and all(v == n_seeds for v in seen.values()) and bool(
        np.all(np.isfinite(values)) and np.all(values > 0)) and contains
    lo, hi = int(runs["tokens"].min()), int(runs["tokens"].max())
    floor = budget - int(runs["domains"].max()) * max_doc
    parts = counts["target"] + counts["select"] + counts["fit"] + counts["unusable"] + counts.get("capped", 0)
    return [
        AssetCheckResult(check_name="table_complete", passed=complete,
                         metadata={"groups": len(seen), "expected_groups": len(groups), "seeds": n_seeds},
                         description=f"{len(seen)} of {len(groups)} (bucketization, mixer, target) groups, "
                         f"{n_seeds} seeds each expected"),
        AssetCheckResult(check_name="same_budget", passed=hi <= budget and lo >= floor,
                         severity=AssetCheckSeverity.WARN,
                         metadata={"min_tokens": lo, "max_tokens": hi, "budget": budget, "floor": floor},
                         description=f"tokens per target model in [{lo}, {hi}] for a budget of {budget} "
                         f"(floor {floor}: one document per domain short)"),
        AssetCheckResult(check_name="target_held_out", passed=parts == counts["documents"] and counts["target"] > 0,
                         metadata={k: int(v) for k, v in counts.items()},
                         description=f"{counts['target']} target + {counts['select']} selection + {counts['fit']} "
                         f"training + {counts['unusable']} unused + {counts.get('capped', 0)} left out by the caps = {parts} of "
                         f"{counts['documents']} documents"),
    ]

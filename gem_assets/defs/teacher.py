"""``teacher_sample`` and ``teacher_clusters``: the GEM teacher fitted on a stratified sample."""

import time

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from gem_assets.defs._format import markdown_table
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.shards import shard_manifest
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["teacher_sample", "teacher_clusters", "TEACHER_CHECKS"]

TEACHER_CHECKS = {
    "no_dead_domain": "No domain receives less than 1/(10K) of the sampled documents (hard assignments).",
    "objective_non_decreasing": "The recorded MM objective never decreases from one iteration to the next.",
}


@asset(deps=[embeddings, shard_manifest], group_name="teacher", kinds={"numpy", "safetensors"},
       code_version=code_version("teacher_sample"), retry_policy=STORE_RETRY)
def teacher_sample(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """A seeded sample of the embedded documents, stratified by shard.

    Uses every shard the corpus glob matches whose embeddings were computed from its
    current bytes; shards not embedded yet (or changed since) and failed shards are left out and
    listed in the metadata (``GEM_ON_BAD_SHARD``: ``defs/bad_shards``). The sample size is the
    profile's ``teacher_sample_size``, allocated to shards in proportion to their embedded
    documents. Written to ``work/teacher_sample/``.
    """
    import numpy as np
    import polars as pl

    from gem_assets.defs import bad_shards
    from gem_assets.defs.shards import shard_hashes
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.mixing import sampling

    settings = gem.settings()
    layout = settings.layout
    hashes = shard_hashes(gem.shards())
    included, excluded = artifacts.embedded_shards(layout, hashes)
    failed = bad_shards.failed_shards(gem, hashes)
    included = {k: v for k, v in included.items() if k not in failed}
    excluded = bad_shards.apply_policy(context, settings, "teacher_sample", excluded, failed)
    if not included:
        raise bad_shards.nothing_usable("teacher_sample", "no embedded shard to sample from", excluded,
                                        "materialize the 'embeddings' partitions first")
    sizes = {key: int(meta["n_vectors"]) for key, meta in included.items()}
    picks = sampling.stratified_sample(sizes, settings.effective_sample_size, settings.seed)
    blocks, frames = [], []
    for key, idx in picks.items():
        vectors, index, _ = artifacts.read_embeddings(layout, key)
        blocks.append(vectors[idx])
        frames.append(index[idx.tolist()].select(pl.lit(key).alias("shard"), pl.all().exclude("row")))
    vectors = np.concatenate(blocks, axis=0)
    sample = pl.concat(frames, how="diagonal_relaxed")
    fp = artifacts.teacher_input_fingerprint(included, settings.teacher_params())
    per_shard = {key: int(idx.size) for key, idx in picks.items()}
    meta = {
        "fingerprint": fp,
        "n": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "per_shard": per_shard,
        "shards": sorted(included),
        "excluded": excluded,
        "seed": settings.seed,
        "requested_size": settings.effective_sample_size,
    }
    out = artifacts.write_teacher_sample(layout, vectors, sample, meta)
    return MaterializeResult(
        metadata={
            "n": int(vectors.shape[0]),
            "dim": int(vectors.shape[1]),
            "requested_size": settings.effective_sample_size,
            "per_shard": MetadataValue.json(per_shard),
            "excluded_shards": MetadataValue.json(excluded),
            "input_fingerprint": fp,
            "path": MetadataValue.path(str(out)),
        },
        data_version=DataVersion(data_version("teacher_sample", fp)),
    )


@asset(
    deps=[teacher_sample],
    group_name="teacher",
    kinds={"pytorch", "mlflow"},
    code_version=code_version("teacher_clusters"),
    retry_policy=STORE_RETRY,
    pool="gem_teacher",  # one GEM fit at a time across runs, once the pool has a limit (deploy/helm/values.yaml)
    check_specs=[AssetCheckSpec(name, asset="teacher_clusters", description=d) for name, d in TEACHER_CHECKS.items()],
)
def teacher_clusters(context: AssetExecutionContext, gem: GemConfig, mlflow: MlflowTracker) -> MaterializeResult:
    """GEM (balanced vMF mixture, monotone MM) fitted on the teacher sample.

    Stores the model without pickle (safetensors + JSON) and plain-format outputs under
    ``outputs/teacher/`` (means, concentrations, isotropy centre, shares, assignments,
    MM history, pictures, summary); logs the fit as an MLflow run.
    """
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.util import plots
    from gem_assets.lib.teacher import sample as teacher

    settings = gem.settings()
    layout = settings.layout
    try:
        vectors, sample, sample_meta = artifacts.read_teacher_sample(layout)
    except FileNotFoundError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    params = settings.teacher_params()
    t0 = time.perf_counter()
    try:
        model = teacher.fit_teacher(
            vectors, k=params["k"], balance=params["balance"], max_iter=params["max_iter"], tol=params["tol"],
            n_init=params["n_init"], seed=params["seed"], isotropy=params["isotropy"], device="auto",
        )
    except ValueError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    fit_seconds = time.perf_counter() - t0
    record = {**params, "balance": getattr(model, "balance", params["balance"]), "profile": settings.profile,
              "n_sample": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
              "input_fingerprint": sample_meta["fingerprint"], "fit_seconds": round(fit_seconds, 3)}
    result = teacher.summarize_teacher(model, vectors, sample, record)
    paths = teacher.write_teacher_outputs(layout.teacher_outputs_dir, model, result)
    summ = result.summary
    context.log.info(
        f"GEM K={summ['k']} on {summ['n_documents']} documents: J={summ['final_objective']:.6g} after "
        f"{summ['n_iter']} MM iterations ({fit_seconds:.1f} s), effective K {summ['effective_k']:.2f}, "
        f"{summ['dead_domains']} dead domain(s)"
    )

    shards = list(sample_meta.get("shards", []))
    outcome = mlflow.log_fit(
        layout,
        run_name=f"gem-k{summ['k']}-{context.run.run_id[:8]}",
        params={k: v for k, v in record.items() if k != "fit_seconds"},
        tags={
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": "teacher_clusters",
            "dagster.partition_keys": ",".join(shards),
            "gem.n_shards": str(len(shards)),
            "gem.profile": settings.profile,
        },
        history=model.history_,
        metric_keys=teacher.HISTORY_METRICS,
        final_metrics={
            "objective": summ["final_objective"],
            "effective_k": summ["effective_k"],
            "dead_domains": summ["dead_domains"],
            "max_share": summ["max_share"],
            "nmi_vs_source": summ["nmi_vs_source"],
            "fit_seconds": fit_seconds,
        },
        artifacts=[paths[n] for n in ("shares.png", "objective.png", "domains.csv", "history.csv", "summary.json")],
        log=context.log,
    )

    checks = [
        AssetCheckResult(check_name=name, passed=bool(ok), description=detail)
        for name, (ok, detail) in result.checks.items()
    ]
    domains_md = result.domains.with_columns(
        [result.domains[c].round(4) for c in ("hard_share", "soft_share", "kappa")]
    )
    metadata = {
        "K": summ["k"],
        "balance": float(record["balance"]) if record["balance"] is not None else None,
        "gamma": summ["gamma"],
        "final_objective": summ["final_objective"],
        "n_iter": summ["n_iter"],
        "converged": summ["converged"],
        "n_sample": summ["n_documents"],
        "effective_k": round(summ["effective_k"], 4),
        "dead_domains": summ["dead_domains"],
        "max_share": round(summ["max_share"], 4),
        "nmi_vs_source": summ["nmi_vs_source"],
        "shares": MetadataValue.json({"soft": summ["soft_shares"], "hard": summ["hard_shares"]}),
        "domains": MetadataValue.md(markdown_table(domains_md)),
        "share_chart": MetadataValue.md(plots.markdown_image(result.pictures["shares.png"], "domain shares")),
        "objective_curve": MetadataValue.md(plots.markdown_image(result.pictures["objective.png"], "MM objective")),
        "fit_seconds": round(fit_seconds, 3),
        "input_fingerprint": sample_meta["fingerprint"],
        "partition_keys": MetadataValue.json(shards),
        "outputs": MetadataValue.path(str(layout.teacher_outputs_dir)),
        "mlflow_status": outcome.status,
        "mlflow_tracking_uri": outcome.tracking_uri,
        "mlflow_run_id": outcome.run_id or "",
        "mlflow_message": outcome.message,
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    dv = data_version("teacher_clusters", sample_meta["fingerprint"], params)
    return MaterializeResult(metadata=metadata, data_version=DataVersion(dv), check_results=checks)


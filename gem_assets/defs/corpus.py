"""``documents``: one validated, normalized shard per partition."""

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
from gem_assets.defs.partitions import shards_partitions
from gem_assets.defs.shards import shard_files
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig

__all__ = ["documents"]


@asset(
    partitions_def=shards_partitions,
    deps=[shard_files],
    group_name="corpus",
    kinds={"polars", "parquet"},
    code_version=code_version("documents"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec(
            "document_conservation",
            asset="documents",
            blocking=True,
            description="Every record of the shard is counted once: records read = kept + quarantined, "
            "the files written hold exactly those rows, and the quarantined rows per reason add up "
            "to the quarantined rows; the check names the shard when it does not hold.",
        )
    ],
)
def documents(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """One shard, validated and normalized.

    The shard is streamed in batches (``lib/corpus/validation.validate_shard_to``): memory holds one
    batch, whatever the shard's size. Kept rows (NFC, newlines normalized, stripped; ids from
    the id column or from the content) go to ``work/documents/<shard>.parquet``; records that cannot
    be read (invalid UTF-8, not JSON, not a JSON object, an undecodable Parquet row group), records
    whose text is missing, not a string, null, empty or whitespace only, or too long, and missing or
    duplicate ids go to ``outputs/quarantine/<shard>.parquet`` with a reason per row. A shard that
    cannot be read at all, or of which no record has the text column, fails this partition only, and
    ``work/documents/<shard>.failed.json`` records why until the file reads (the aggregates'
    ``GEM_ON_BAD_SHARD`` policy, ``defs/bad_shards``).
    """

    from gem_assets.lib.io import artifacts
    from gem_assets.lib.corpus import shards, validation
    from gem_assets.lib.io import storage
    from gem_assets.lib.io import streaming

    key = context.partition_key
    settings = gem.settings()
    layout = settings.layout
    try:
        path = gem.shard_path(key)
    except FileNotFoundError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    sha = shards.file_sha256(path)
    params = settings.documents_params()
    paths = {
        "documents": layout.documents_path(key),
        "quarantine": layout.quarantine_path(key),
        "meta": layout.documents_meta_path(key),
    }
    try:  # streamed: one batch of the shard in memory at a time, written batch by batch
        result = validation.validate_shard_to(path, paths["documents"], paths["quarantine"], **params)
    except shards.ShardError as exc:
        artifacts.write_documents_failure(layout, key, sha, str(exc), str(path))
        raise Failure(description=str(exc), metadata={"shard": key, "file": str(path)},
                      allow_retries=False) from exc
    artifacts.clear_documents_failure(layout, key)
    fp = artifacts.documents_fingerprint(sha, params)
    meta = {
        "shard": key,
        "file": str(path),
        "shard_sha256": sha,
        "fingerprint": fp,
        "params": params,
        "rows_in": result.rows_in,
        "kept": result.n_kept,
        "quarantined": result.n_quarantined,
        "reasons": result.reasons,
        "ids_from_content": result.ids_from_content,
        "batches": result.batches,
    }
    storage.write_json(paths["meta"], meta)  # last: its presence means the shard is complete

    kept_on_disk = streaming.parquet_num_rows(paths["documents"])  # footers: local paths and object stores
    quarantined_on_disk = streaming.parquet_num_rows(paths["quarantine"])
    by_reason = sum(result.reasons.values())
    conserved = (result.rows_in == kept_on_disk + quarantined_on_disk == result.n_kept + result.n_quarantined
                 and by_reason == result.n_quarantined)
    if result.n_quarantined:
        context.log.warning(f"shard {key}: {result.n_quarantined} of {result.rows_in} rows quarantined "
                            f"({ {r: n for r, n in result.reasons.items() if n} }) -> {paths['quarantine']}")
    metadata = {
        "shard": key,
        "file": MetadataValue.path(str(path)),
        "shard_sha256": sha,
        "fingerprint": fp,
        "rows_in": result.rows_in,
        "kept": result.n_kept,
        "quarantined": result.n_quarantined,
        **{f"quarantined_{r}": n for r, n in result.reasons.items()},
        "ids_from_content": result.ids_from_content,
        "batches": result.batches,
        "mean_chars": float(result.mean_chars),
        "documents_path": MetadataValue.path(str(paths["documents"])),
        "quarantine_path": MetadataValue.path(str(paths["quarantine"])),
        "dagster/row_count": result.n_kept,
    }
    if result.n_quarantined:
        preview = next(streaming.iter_selected_rows(paths["quarantine"], columns=["row", "line", "id", "reason", "detail"],
                                                    batch_rows=10))
        metadata["quarantine_preview"] = MetadataValue.md(markdown_table(preview))
    check = AssetCheckResult(
        check_name="document_conservation",
        passed=bool(conserved),
        metadata={"shard": key, "rows_in": result.rows_in, "kept": kept_on_disk, "quarantined": quarantined_on_disk,
                  "quarantined_by_reason": by_reason},
        description=(f"shard {key}: {result.rows_in} in = {kept_on_disk} kept + {quarantined_on_disk} quarantined"
                     if conserved else
                     f"shard {key}: counts do not add up: {result.rows_in} records read, {kept_on_disk} kept and "
                     f"{quarantined_on_disk} quarantined on disk ({result.n_kept} + {result.n_quarantined} counted, "
                     f"{by_reason} by reason)"),
    )
    return MaterializeResult(metadata=metadata, data_version=DataVersion(data_version("documents", fp)),
                            check_results=[check])


"""``embeddings``: unit-norm teacher vectors of one shard per partition."""

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

from gem_assets.defs.corpus import documents
from gem_assets.defs.partitions import shards_partitions
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.embedder import SentenceTransformerEmbedder

__all__ = ["embeddings", "EMBEDDING_CHECKS"]

#: Checks run with every materialization of a partition.
EMBEDDING_CHECKS = {
    "finite": "Every vector component is finite.",
    "unit_norm": "Every vector has unit Euclidean norm (within 1e-3).",
    "one_per_document": "Exactly one vector per kept document selected for embedding "
    "(all kept documents, or the seeded per-shard sample when the profile caps it).",
}


@asset(
    partitions_def=shards_partitions,
    deps=[documents],
    group_name="corpus",
    kinds={"pytorch", "safetensors"},
    code_version=code_version("embeddings"),
    retry_policy=STORE_RETRY,
    check_specs=[AssetCheckSpec(name, asset="embeddings", description=d, blocking=True)
                 for name, d in EMBEDDING_CHECKS.items()],
)
def embeddings(context: AssetExecutionContext, gem: GemConfig, embedder: SentenceTransformerEmbedder) -> MaterializeResult:
    """Teacher embeddings of one shard: (n, d) float32 unit-norm vectors with their ids.

    Embeds the shard's kept documents, or, when the profile caps embeddings per shard, a
    seeded sample of them (same sample on every run), streaming the documents file in
    batches (``lib/io/streaming.embed_selected``). Written to
    ``work/embeddings/<shard>/`` (``vectors.safetensors``, ``index.parquet``, ``meta.json``).
    """
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.teacher import embed
    from gem_assets.lib.mixing import sampling
    from gem_assets.lib.io import streaming

    key = context.partition_key
    settings = gem.settings()
    layout = settings.layout
    doc_meta = artifacts.read_documents_meta(layout, key)
    docs_path = layout.documents_path(key)
    if doc_meta is None or not docs_path.is_file():
        raise Failure(description=f"no documents for shard {key!r} under {docs_path.parent}: "
                      "materialize the 'documents' partition first", allow_retries=False)
    n_docs = streaming.parquet_num_rows(docs_path)
    cap = settings.effective_embed_cap
    picks = sampling.cap_sample(n_docs, cap, settings.seed, "embed", key)

    # streamed: the chosen texts are read and embedded one batch at a time
    t0 = time.perf_counter()
    vectors, index = streaming.embed_selected(embedder.encode, docs_path, picks if picks.size < n_docs else None,
                                              index_columns=("row", "id", "source"), desc=f"embedding {key}")
    seconds = time.perf_counter() - t0
    docs_per_s = index.height / seconds if seconds > 0 and index.height else 0.0
    context.log.info(f"shard {key}: embedded {index.height} documents in {seconds:.1f} s ({docs_per_s:.1f} docs/s)")

    model_id = embedder.model_id
    fp = artifacts.embeddings_fingerprint(doc_meta.get("fingerprint", ""), settings.embedding_params(), model_id)
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    meta = {
        "shard": key,
        "shard_sha256": doc_meta.get("shard_sha256"),
        "documents_fingerprint": doc_meta.get("fingerprint"),
        "fingerprint": fp,
        "model_id": model_id,
        "n_documents": n_docs,
        "n_vectors": int(vectors.shape[0]),
        "cap": cap,
        "dim": dim,
        "seconds": seconds,
        "docs_per_s": docs_per_s,
    }
    out = artifacts.write_embeddings(layout, key, vectors, index, meta)

    # checks read back what was written and compare it with the documents that were due
    written, written_index, _ = artifacts.read_embeddings(layout, key)
    due = [i for part in streaming.iter_selected_rows(docs_path, picks, columns=["id"]) for i in part["id"].to_list()]
    results = embed.check_embeddings(written, written_index["id"].to_list(), due)
    checks = [
        AssetCheckResult(check_name=r.name, passed=r.passed, description=r.detail, metadata={"value": r.value})
        for r in results
    ]
    metadata = {
        "shard": key,
        "shard_sha256": doc_meta.get("shard_sha256") or "",
        "fingerprint": fp,
        "n_documents": n_docs,
        "n_vectors": int(vectors.shape[0]),
        "sampled": bool(picks.size < n_docs),
        "embed_cap": -1 if cap is None else int(cap),
        "dim": dim,
        "model": model_id,
        "device": embedder.device_name,
        "seconds": round(seconds, 3),
        "docs_per_s": round(docs_per_s, 2),
        "path": MetadataValue.path(str(out)),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(data_version("embeddings", fp)),
                            check_results=checks)

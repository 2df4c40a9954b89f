"""``proxy_corpus``: per-domain train/validation byte streams and the target stream of the proxy models."""

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
from gem_assets.defs.student import domain_stats
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig

__all__ = ["proxy_corpus"]


@asset(
    deps=[domain_stats],
    group_name="mixing",
    kinds={"numpy", "safetensors"},
    code_version=code_version("proxy_corpus"),
    retry_policy=STORE_RETRY,
    check_specs=[AssetCheckSpec("documents_conserved", asset="proxy_corpus", blocking=True,
                                description="Every counted document is in exactly one split (train or validation), "
                                "and the target set is drawn from validation documents only.")],
)
def proxy_corpus(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """Per-domain train/validation byte streams and the target stream of the proxy models.

    ``work/proxy_corpus/``: ``train.safetensors`` and ``valid.safetensors`` ({domain: uint8
    stream}), ``target.safetensors`` and ``meta.json`` (domains, natural shares, counts).
    """
    import numpy as np
    import polars as pl

    from gem_assets.lib.mixing.corpus_index import bottom_k_by_priority
    from gem_assets.lib.mixing.streams import SEPARATOR, proxy_streams, split_documents
    from gem_assets.lib.io import storage

    settings = gem.settings()
    p = settings.mixture_params()
    stats = require_stats(settings)
    # the shards domain_stats counted, less any failed since (GEM_ON_BAD_SHARD: defs/bad_shards)
    from gem_assets.defs import bad_shards

    failed = bad_shards.failed_shards(gem)
    excluded = bad_shards.apply_policy(context, settings, "proxy_corpus", stats.get("excluded", {}), failed)
    keys = [k for k in stats["shards"] if k not in failed]
    fp = mixing_fingerprints(settings, stats["fingerprint"])["proxy_corpus"]
    index, read_texts, read_ids = load_index(settings, keys, target_source=p["target"], key_seed=p["seed"])
    k = n_domains(settings)
    names = [str(i) for i in range(k)]
    labels = index.domains
    held = split_documents(labels, p["valid_fraction"], p["seed"])  # the split proxy_streams makes
    target_mask = held.copy()
    if p["target"] is not None:
        target_mask &= index.is_target  # source == GEM_MIX_TARGET, computed while indexing
    if target_mask.sum() == 0:
        raise Failure(description=f"the target set is empty (GEM_MIX_TARGET={p['target']!r}, "
                      f"{int(held.sum())} held-out documents): pick a source label that has held-out documents",
                      allow_retries=False)
    # at most max_target_documents of them, a seeded uniform sample keyed by (shard, id): the target
    # stream is held in memory, so it must not grow with the corpus. The keys' priorities
    # (sampling.key_priority) were computed while indexing: the sample is sampling.bottom_k_positions'
    target_available = int(target_mask.sum())
    target_idx = bottom_k_by_priority(np.flatnonzero(target_mask), index.priority, p["max_target_documents"],
                                              keys=lambda pos: index.keys_at(pos, read_ids))
    target_mask = np.zeros_like(target_mask)
    target_mask[target_idx] = True
    train, valid, target = proxy_streams(index, read_texts, names, p["valid_fraction"], p["seed"],
                                                 p["max_bytes_per_domain"], target_mask, valid=held)
    tokens = index.tokens
    all_tokens = np.bincount(labels, weights=tokens, minlength=k)
    docs = np.bincount(labels, minlength=k)
    held_docs = np.bincount(labels[held], minlength=k)
    natural = all_tokens / all_tokens.sum()
    table = pl.DataFrame({
        "domain": names, "documents": docs, "valid_documents": held_docs,
        "train_bytes": [int(train[n].size) if n in train else 0 for n in names],
        "valid_bytes": [int(valid[n].size) if n in valid else 0 for n in names],
        "natural_share": np.round(natural, 4),
    })
    meta = {"fingerprint": fp, "domains": names, "natural_shares": dict(zip(names, natural.tolist())),
            "documents": int(labels.size), "valid_documents": int(held.sum()), "target_documents": int(target_mask.sum()),
            "target_documents_available": target_available,
            "target_bytes": int(target["target"].size), "target": p["target"] or "held-out sample of the whole corpus",
            "tokens": int(tokens.sum()), "domain_tokens": all_tokens.astype(np.int64).tolist(),
            "stats_fingerprint": stats["fingerprint"], "shards": keys, "excluded": excluded, "params": p}
    with storage.atomic_dir(settings.layout.proxy_corpus_dir) as tmp:
        storage.write_safetensors(tmp / "train.safetensors", train)
        if valid:
            storage.write_safetensors(tmp / "valid.safetensors", valid)
        storage.write_safetensors(tmp / "target.safetensors", target)
        storage.write_json(tmp / "meta.json", meta)
    sep_train = sum(int((s == SEPARATOR).sum()) for s in train.values())
    sep_valid = sum(int((s == SEPARATOR).sum()) for s in valid.values())
    capped = p["max_bytes_per_domain"] is not None
    conserved = int(docs.sum()) == labels.size and (capped or sep_train + sep_valid == labels.size)
    disjoint = not bool((target_mask & ~held).any())
    check = AssetCheckResult(
        check_name="documents_conserved", passed=bool(conserved and disjoint),
        metadata={"documents": int(labels.size), "train_documents": sep_train, "valid_documents": sep_valid,
                  "streams_capped": capped, "target_from_validation": disjoint,
                  "target_documents": int(target_mask.sum()), "target_documents_available": target_available},
        description=f"{labels.size} documents; streams hold {sep_train} train + {sep_valid} validation documents"
                    f"{' (streams capped at max_bytes_per_domain)' if capped else ''}; target from validation: {disjoint}",
    )
    return MaterializeResult(
        data_version=DataVersion(data_version("proxy_corpus", fp)),
        metadata={"domains": MetadataValue.md(markdown_table(table)), "documents": int(labels.size),
                  "train_bytes": int(sum(s.size for s in train.values())),
                  "valid_bytes": int(sum(s.size for s in valid.values())), "target_bytes": meta["target_bytes"],
                  "target": meta["target"], "input_fingerprint": fp, "shards": MetadataValue.json(keys),
                  "excluded_shards": MetadataValue.json(excluded),
                  "outputs": MetadataValue.path(str(settings.layout.proxy_corpus_dir))},
        check_results=[check],
    )

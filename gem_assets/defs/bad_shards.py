"""One policy for the shards an aggregate stage cannot use (``GEM_ON_BAD_SHARD``).

A shard is *failed* while its ``documents`` partition cannot read the file as it is now (not
Parquet, compressed under a JSON-lines suffix, no record a JSON object ...): the partition writes
``work/documents/<shard>.failed.json`` with the file's SHA-256 and the reason, and removes it once
the file reads. Records that cannot be read never fail a shard: they are quarantined.

Every aggregate stage (teacher sample, student, stats, taxonomy, mixing, evaluation) applies the
same policy: with ``GEM_ON_BAD_SHARD=skip`` (default) it proceeds on the other shards and names
the failed ones in its ``excluded_shards`` metadata (``failed: <reason>``), beside the shards it
leaves out for other reasons (not embedded yet, assigned by another student ...); with ``fail``
it stops, naming them, until they are fixed or removed. When no shard is usable, the failure
gives the advice that can help: materialize what is missing, or, when every shard failed, fix
the files.
"""

from __future__ import annotations

from typing import Mapping

from dagster import Failure, MetadataValue

__all__ = ["FAILED", "failed_shards", "apply_policy", "nothing_usable"]

#: Prefix of the exclusion reason of a failed shard.
FAILED = "failed: "


def failed_shards(gem, hashes: Mapping[str, str] | None = None) -> dict[str, str]:
    """Current shards whose ``documents`` failed on their current bytes: key to ``"failed: <reason>"``.

    Parameters
    ----------
    gem : GemConfig
    hashes : mapping of str to str, optional
        SHA-256 of every current shard, when the caller has them (default: hashed here, with the
        process's size and modification time cache).
    """
    from gem_assets.defs.shards import shard_hashes
    from gem_assets.lib.io import artifacts

    if hashes is None:
        hashes = shard_hashes(gem.shards())
    return {k: FAILED + r for k, r in artifacts.failed_shards(gem.settings().layout, hashes).items()}


def apply_policy(context, settings, stage: str, excluded: Mapping[str, str], failed: Mapping[str, str]) -> dict[str, str]:
    """Apply ``GEM_ON_BAD_SHARD`` for ``stage``: the shards it leaves out, failed ones included.

    Parameters
    ----------
    context : AssetExecutionContext
        For the warning naming the shards left out.
    settings : Settings
    stage : str
        The asset, for the messages.
    excluded : mapping of str to str
        Shards the stage leaves out for its own reasons (a failed shard's reason is replaced by
        its failure).
    failed : mapping of str to str
        :func:`failed_shards`.

    Returns
    -------
    dict of str to str
        Every shard left out, with its reason, sorted by key.

    Raises
    ------
    Failure
        With ``GEM_ON_BAD_SHARD=fail`` while any shard is failed (not retried).
    """
    merged = dict(sorted({**dict(excluded), **dict(failed)}.items()))
    if failed and settings.on_bad_shard == "fail":
        named = "; ".join(f"{k} ({r[len(FAILED):] if r.startswith(FAILED) else r})" for k, r in sorted(failed.items()))
        raise Failure(
            description=f"GEM_ON_BAD_SHARD=fail: {stage} does not run while {len(failed)} shard(s) cannot be read: "
            f"{named}. Fix or remove the file(s), or set GEM_ON_BAD_SHARD=skip to proceed on the other shards",
            metadata={"failed_shards": MetadataValue.json(dict(failed))},
            allow_retries=False,
        )
    if merged:
        context.log.warning(f"{stage} leaves out {len(merged)} shard(s): {merged}")
    return merged


def nothing_usable(stage: str, what: str, excluded: Mapping[str, str], advice: str) -> Failure:
    """The (not retried) failure of a stage that has no shard to use: ``"<stage>: <what> (left out:
    ...); <advice>"``, ``advice`` (what to materialize first) given only when some shard is left out
    for a reason other than its failure: when every shard failed, materializing cannot help."""
    waiting = {k: r for k, r in excluded.items() if not r.startswith(FAILED)}
    if waiting:
        hint = advice
    elif excluded:
        hint = "every shard failed: fix the files, or point GEM_CORPUS at readable ones"
    else:
        hint = "the corpus glob (GEM_CORPUS) matches no shard"
    return Failure(description=f"{stage}: {what} (left out: {dict(excluded)}); {hint}",
                   metadata={"excluded_shards": MetadataValue.json(dict(excluded))}, allow_retries=False)

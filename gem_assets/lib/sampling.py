"""Seeded samples: the per-shard embedding cap and the teacher sample stratified by shard.

Every sample is a pure function of ``(seed, keys)``: re-running with the same inputs draws
the same documents, whatever else changed in the corpus.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np

__all__ = ["derive_seed", "rng_for", "cap_sample", "allocate", "stratified_sample"]


def derive_seed(seed: int, *keys: object) -> int:
    """A 64-bit seed derived from a base seed and any number of keys.

    Parameters
    ----------
    seed : int
        Base seed.
    *keys
        Values whose ``str`` distinguishes the stream (e.g. an asset name and a shard key).

    Returns
    -------
    int
        Stable across processes and platforms (SHA-256 based, not Python's ``hash``).
    """
    h = hashlib.sha256(repr((int(seed),) + tuple(str(k) for k in keys)).encode("utf-8"))
    return int.from_bytes(h.digest()[:8], "little")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A NumPy generator seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, *keys))


def cap_sample(n: int, cap: int | None, seed: int, *keys: object) -> np.ndarray:
    """Indices of at most ``cap`` of ``n`` items, drawn without replacement.

    Parameters
    ----------
    n : int
        Number of items.
    cap : int or None
        Largest sample; ``None`` (or ``cap >= n``) keeps everything.
    seed : int
        Base seed.
    *keys
        Stream keys (e.g. the shard key).

    Returns
    -------
    ndarray of int64
        Sorted indices (``arange(n)`` when nothing is dropped).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if cap is None or cap >= n:
        return np.arange(n, dtype=np.int64)
    if cap < 0:
        raise ValueError(f"cap must be >= 0 or None, got {cap}")
    idx = rng_for(seed, "cap", *keys).choice(n, size=cap, replace=False)
    return np.sort(idx).astype(np.int64)


def allocate(sizes: Mapping[str, int], n: int) -> dict[str, int]:
    """Split a sample of ``n`` over strata proportionally to their sizes.

    Largest-remainder rounding (ties broken by stratum key); no stratum gets more than its
    size, and the total is ``min(n, sum(sizes))``.

    Parameters
    ----------
    sizes : mapping of str to int
        Stratum sizes.
    n : int
        Requested sample size.

    Returns
    -------
    dict of str to int
        Per-stratum sample sizes, in the order of ``sizes``.
    """
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    keys = list(sizes)
    total = int(sum(sizes.values()))
    if any(int(s) < 0 for s in sizes.values()):
        raise ValueError("stratum sizes must be >= 0")
    if n >= total:
        return {k: int(sizes[k]) for k in keys}
    quotas = {k: n * sizes[k] / total for k in keys}
    out = {k: min(int(np.floor(quotas[k])), int(sizes[k])) for k in keys}
    left = n - sum(out.values())
    order = sorted(keys, key=lambda k: (-(quotas[k] - np.floor(quotas[k])), k))
    while left > 0:
        progressed = False
        for k in order:
            if left == 0:
                break
            if out[k] < sizes[k]:
                out[k] += 1
                left -= 1
                progressed = True
        if not progressed:  # pragma: no cover - impossible while n < total
            break
    return out


def stratified_sample(sizes: Mapping[str, int], n: int, seed: int) -> dict[str, np.ndarray]:
    """A seeded sample of ``n`` items stratified by stratum (proportional allocation).

    Parameters
    ----------
    sizes : mapping of str to int
        Stratum sizes (e.g. embedded documents per shard).
    n : int
        Sample size.
    seed : int
        Base seed; each stratum draws from its own stream, so adding a shard does not
        change which documents are drawn from another shard at the same allocation.

    Returns
    -------
    dict of str to ndarray
        Sorted indices into each stratum.
    """
    counts = allocate(sizes, n)
    return {k: cap_sample(int(sizes[k]), counts[k], seed, "stratified", k) for k in sizes}

"""Seeded document-level splits of the evaluation corpus: the held-out target set, then fit / select.

Each document is decided by a seeded hash of its key alone (:func:`holdout_split`), so the decision
needs no other document and a document keeps it when shards are added; :func:`select_split` cuts
the training documents once more into the fit pool and the documents RegMix minimizes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl

from gem_assets.lib.mixing.sampling import key_priorities, rng_for
from gem_assets.lib.util.checks import check_float

__all__ = ["check_fraction", "holdout_split", "select_split"]


def check_fraction(fraction: float, purpose: str) -> None:
    check_float(fraction, f"{purpose} fraction", low=0.0, strict=True)
    if fraction >= 1.0:
        raise ValueError(f"the {purpose} fraction must be in (0, 1), got {fraction}")


def _key_series(keys: Sequence[str] | pl.Series) -> pl.Series:
    """The keys as a polars String series (Arrow strings: no Python string per document)."""
    s = keys.cast(pl.String) if isinstance(keys, pl.Series) else pl.Series("key", [str(k) for k in keys], dtype=pl.String)
    if s.null_count():
        raise ValueError("document keys must not be null (e.g. '<shard>/<id>')")
    return s


def _sorted_order(keys: Sequence[str] | pl.Series) -> np.ndarray:
    """Positions of the keys in sorted order. Sorted as Arrow strings (UTF-8 bytes, which orders as
    Python's code-point comparison does), so no Python string per document is held (a
    Python list, set and object array of the keys took ~100 bytes per document)."""
    s = _key_series(keys)
    if s.n_unique() != s.len():
        raise ValueError("document keys must be unique (e.g. '<shard>/<id>'); found duplicates")
    return s.arg_sort().to_numpy().astype(np.int64, copy=False)


def _seeded_mask(keys: Sequence[str] | pl.Series, fraction: float, seed: int, purpose: str) -> np.ndarray:
    """``round(fraction * N)`` (at least 1 and at most N - 1) documents, drawn by a permutation of
    the sorted keys: the draw depends on the set of keys and the seed, not on their order (the
    selection split of the training pool, which the caps keep small)."""
    n = len(keys)
    check_fraction(fraction, purpose)
    if n < 2:
        raise ValueError(f"the {purpose} split needs at least 2 documents, got {n}")
    order = _sorted_order(keys)
    m = min(n - 1, max(1, int(round(fraction * n))))
    pick = rng_for(seed, "evaluation", purpose).permutation(n)[:m]
    mask = np.zeros(n, dtype=bool)
    mask[order[pick]] = True
    return mask


def holdout_split(keys: Sequence[str] | pl.Series, fraction: float, seed: int) -> np.ndarray:
    """The held-out target set: each document held out by a seeded hash of its key.

    Document ``key`` is held out when its priority :func:`gem_assets.lib.mixing.sampling.key_priority`
    ``(seed, "evaluation/holdout", key)``, a uniform 64-bit number, is below ``fraction * 2**64``:
    a Bernoulli(``fraction``) draw per document that needs no other document. So the split is one
    streaming pass with no per-document state (:class:`CorpusSampler`; a permutation of all keys
    took ~36 bytes a document), and a document's side does not change when shards are
    added to the corpus: evaluations of a growing corpus keep their old target documents.

    Parameters
    ----------
    keys : sequence of str or polars Series of str
        A unique key per document (e.g. ``"<shard>/<id>"``).
    fraction : float
        Probability that a document is held out, in (0, 1). The number held out is binomial
        (``fraction * N`` on average); it can be 0 for a tiny corpus, which
        :func:`evaluate_corpus` reports as an error.
    seed : int
        Seed of the draw.

    Returns
    -------
    ndarray of bool, shape (N,)
        True for held-out documents, whatever the order of ``keys``.
    """
    check_fraction(fraction, "holdout")
    s = _key_series(keys)
    if s.n_unique() != s.len():
        raise ValueError("document keys must be unique (e.g. '<shard>/<id>'); found duplicates")
    return key_priorities(seed, "evaluation/holdout", s.to_list()) < np.uint64(int(fraction * 2**64))


def select_split(keys: Sequence[str] | pl.Series, fraction: float, seed: int) -> np.ndarray:
    """The weight-selection set: a seeded sample of the *training* documents (not the target set).

    RegMix chooses its weights by the loss on these documents; nothing is trained on them.
    Exactly ``round(fraction * N)`` of the N keys (at least 1, at most N - 1), drawn by a seeded
    permutation of the sorted keys: the same set whatever the keys' order.
    """
    return _seeded_mask(keys, fraction, seed, "select")

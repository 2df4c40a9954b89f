"""Domain byte streams for the proxy models.

A domain's stream is the UTF-8 bytes of its documents, each followed by :data:`SEPARATOR` (the
NUL byte, which plain text does not contain: it plays the end-of-document token). Tokens are
bytes throughout (the proxy models' vocabulary), so a token budget is a byte budget.

:func:`domain_streams` splits each domain's documents (not bytes inside a document) into train and
validation parts with a seeded permutation, so the same seed gives the same split.
:func:`proxy_streams` builds exactly the streams of :func:`domain_streams` from a
:class:`~gem_assets.lib.mixing.corpus_index.CorpusIndex`, reading only the texts that reach a stream (with
``max_bytes_per_domain``, at most that many bytes per domain and split, plus the target documents).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from gem_assets.lib.util.checks import check_float, check_int

if TYPE_CHECKING:
    from gem_assets.lib.mixing.corpus_index import CorpusIndex

__all__ = ["SEPARATOR", "texts_to_streams", "split_documents", "domain_streams", "document_tokens", "proxy_streams"]


#: Byte that ends every document in a stream.
SEPARATOR = 0


def _encode(texts: Sequence[str]) -> list[bytes]:
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__}, not str: pass document texts")
        out.append(t.encode("utf-8", errors="replace").replace(b"\x00", b" "))
    return out


def _join(encoded: Sequence[bytes], cap: int | None = None) -> np.ndarray:
    sep = bytes([SEPARATOR])
    blob = sep.join(encoded) + sep if encoded else b""
    a = np.frombuffer(blob, dtype=np.uint8)
    return (a[:cap] if cap is not None else a).copy()


def document_tokens(texts: Sequence[str]) -> np.ndarray:
    """Tokens (UTF-8 bytes + 1 separator) of each document, int64 (N,)."""
    return np.fromiter((len(b) + 1 for b in _encode(texts)), dtype=np.int64, count=len(texts))


def texts_to_streams(texts: Sequence[str], keys: Sequence) -> dict[str, np.ndarray]:
    """``{str(key): uint8 stream}`` of the documents of each key, in document order.

    Parameters
    ----------
    texts : sequence of str
    keys : sequence
        One domain key per text (any hashable; converted with ``str``).

    Returns
    -------
    dict
        Keys sorted; each stream is the key's documents joined and ended by :data:`SEPARATOR`.
    """
    if len(texts) != len(keys):
        raise ValueError(f"{len(texts)} texts but {len(keys)} keys: pass one key per text")
    enc = _encode(texts)
    groups: dict[str, list[bytes]] = {}
    for b, key in zip(enc, keys):
        groups.setdefault(str(key), []).append(b)
    return {key: _join(groups[key]) for key in sorted(groups)}


def split_documents(labels: np.ndarray, valid_fraction: float, seed: int) -> np.ndarray:
    """Seeded per-domain document split: True for validation documents.

    In each domain with n documents, ``round(valid_fraction * n)`` of them (at least one when
    ``valid_fraction > 0`` and n >= 2, never all of them) go to validation.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one bucket id per document), got shape {labels.shape}")
    f = check_float(valid_fraction, "valid_fraction", low=0.0)
    if f >= 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {f}")
    rng = np.random.default_rng(check_int(seed, "seed", low=0))
    valid = np.zeros(labels.size, dtype=bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        n = idx.size
        m = 0 if f == 0 or n < 2 else min(n - 1, max(1, int(round(f * n))))
        valid[idx[rng.permutation(n)[:m]]] = True
    return valid


def domain_streams(texts: Sequence[str], labels: np.ndarray, n_domains_or_names, valid_fraction: float, seed: int,
                   max_bytes_per_domain: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train and validation byte streams per domain.

    Parameters
    ----------
    texts : sequence of str
    labels : numpy.ndarray of int, shape (N,)
        Bucket id of each document in [0, K).
    n_domains_or_names : int or sequence of str
        K (names become ``"0" .. "K-1"``) or the K names.
    valid_fraction : float
        Share of each domain's documents held out (by document, seeded).
    seed : int
    max_bytes_per_domain : int, optional
        Cap on each stream's length (documents in a seeded order, the stream cut at the cap).

    Returns
    -------
    train, valid : dict of str to numpy.ndarray
        Domains with no document (or fewer than 2 bytes) are left out.
    """
    labels = np.asarray(labels)
    if len(texts) != labels.size:
        raise ValueError(f"{len(texts)} texts but {labels.size} labels: pass one label per text")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer bucket ids, got dtype {labels.dtype}")
    if isinstance(n_domains_or_names, (int, np.integer)) and not isinstance(n_domains_or_names, bool):
        names = [str(k) for k in range(check_int(int(n_domains_or_names), "n_domains", low=1))]
    else:
        names = [str(n) for n in n_domains_or_names]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"domain names must be non-empty and distinct, got {names[:10]}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels must lie in [0, {len(names)}), got range [{labels.min()}, {labels.max()}]")
    cap = None if max_bytes_per_domain is None else check_int(max_bytes_per_domain, "max_bytes_per_domain", low=2)
    valid = split_documents(labels, valid_fraction, seed)
    enc = _encode(texts)
    order = np.random.default_rng(seed + 1).permutation(labels.size)
    train_out, valid_out = {}, {}
    for k, name in enumerate(names):
        for mask, out in ((~valid, train_out), (valid, valid_out)):
            idx = order[(labels[order] == k) & mask[order]]
            stream = _join([enc[i] for i in idx], cap)
            if stream.size >= 2:
                out[name] = stream
    return train_out, valid_out


def proxy_streams(index: CorpusIndex, read_texts: Callable[[np.ndarray], Sequence[str]], names: Sequence[str],
                  valid_fraction: float, seed: int, max_bytes_per_domain: int | None,
                  target_mask: np.ndarray, valid: np.ndarray | None = None,
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The streams of :func:`domain_streams` and the target stream, reading only the texts they hold.

    Same split, order and cut as ``domain_streams(texts, index.domains, names, valid_fraction, seed,
    max_bytes_per_domain)`` and ``texts_to_streams(target texts, "target")``, byte for byte; with a
    cap, a stream's documents are the prefix of its seeded order whose start lies before the cap,
    so only those texts are read.

    Parameters
    ----------
    index : CorpusIndex
    read_texts : callable
        ``read_texts(positions)`` -> texts of those index positions (e.g. with :func:`read_index_texts`).
    names : sequence of str
        Domain names (K).
    valid_fraction, seed, max_bytes_per_domain
        See :func:`domain_streams`.
    target_mask : numpy.ndarray of bool, shape (N,)
        The target documents (held-out ones).
    valid : numpy.ndarray of bool, shape (N,), optional
        ``split_documents(index.domains, valid_fraction, seed)`` when the caller has computed it
        already (its permutations are not drawn again); computed here otherwise.

    Returns
    -------
    train, valid, target : dict of str to numpy.ndarray
    """
    labels = index.domains
    tok = index.tokens
    n = labels.size
    mask_t = np.asarray(target_mask, dtype=bool)
    if mask_t.shape != (n,):
        raise ValueError(f"target_mask must have one entry per document ({n}), got shape {mask_t.shape}")
    names = [str(x) for x in names]
    if n and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels must lie in [0, {len(names)}), got range [{labels.min()}, {labels.max()}]")
    cap = None if max_bytes_per_domain is None else check_int(max_bytes_per_domain, "max_bytes_per_domain", low=2)
    if valid is None:
        valid = split_documents(labels, valid_fraction, seed)
    elif np.shape(valid) != (n,):
        raise ValueError(f"valid must have one entry per document ({n}), got shape {np.shape(valid)}")
    valid = np.asarray(valid, dtype=bool)
    order = np.random.default_rng(seed + 1).permutation(n)
    # the permutation grouped by domain with a stable sort (each domain's documents keep their order
    # in it): one pass instead of a boolean mask over all N documents per domain and split
    by_domain = order[np.argsort(labels[order], kind="stable")]
    bounds = np.searchsorted(labels[by_domain], np.arange(len(names) + 1), side="left")
    plans = []
    for k, name in enumerate(names):
        dom = by_domain[bounds[k] : bounds[k + 1]]
        is_valid = valid[dom]
        for idx, part in ((dom[~is_valid], "train"), (dom[is_valid], "valid")):
            if cap is not None and idx.size:
                starts_before_cap = int(np.searchsorted(np.cumsum(tok[idx]), cap, side="left")) + 1
                idx = idx[: min(idx.size, starts_before_cap)]
            plans.append((part, name, idx))
    target_idx = np.flatnonzero(mask_t)
    needed = np.unique(np.concatenate([idx for _, _, idx in plans] + [target_idx]))
    enc = dict(zip(needed.tolist(), _encode(read_texts(needed)) if needed.size else []))
    train_out, valid_out = {}, {}
    for part, name, idx in plans:
        stream = _join([enc[i] for i in idx.tolist()], cap)
        if stream.size >= 2:
            (train_out if part == "train" else valid_out)[name] = stream
    target = {"target": _join([enc[i] for i in target_idx.tolist()])} if target_idx.size else {}
    del enc
    from gem_assets.lib.util.allocator import release_memory

    release_memory()
    return train_out, valid_out, target

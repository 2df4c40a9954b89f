"""Domain byte streams for proxy models and the curated mixture itself.

Streams
-------
A domain's stream is the UTF-8 bytes of its documents, each followed by :data:`SEPARATOR` (the
NUL byte, which plain text does not contain: it plays the end-of-document token). Tokens are
bytes throughout this module (the proxy models' vocabulary), so a token budget is a byte budget.

:func:`domain_streams` splits each domain's documents (not bytes inside a document) into train and
validation parts with a seeded permutation, so the same seed gives the same split.

The curated mixture
-------------------
:func:`sample_curated_mixture` turns domain weights into a document sample of about
``budget_tokens`` tokens:

1. Targets: domain k gets ``T_k = w_k * budget`` tokens, capped at ``max_epochs * n_k`` (``n_k`` its
   tokens). Budget that a capped domain cannot take is handed to the uncapped domains in
   proportion to their weights, repeatedly, until none is over its cap (water-filling); when
   every domain is capped the sample is smaller than the budget (the manifest says so).
2. Documents: domain k takes ``floor(T_k / n_k)`` full passes over its documents, then the
   longest prefix of a seeded permutation of its documents whose tokens fit the remainder. A
   domain therefore never exceeds ``T_k`` tokens, hence never its epoch cap, and a document
   repeats at most ``ceil(max_epochs)`` times.
3. The selected (document, repeat) pairs are shuffled with the seed.

Bounded memory
--------------
The mixing stage does not hold the corpus's texts. :func:`corpus_index` reads one shard at a time
and keeps, per document, its shard, row, domain and token count, whether its source is the target
source and the priority of its key for the target sample (no text and, with ``spill_dir``, no
string at all: 37 bytes per document, memory-mapped from files). The ids are read back from the
documents files by row where they are needed (the curated mixture's ``id`` column). :func:`proxy_streams` builds exactly the streams of :func:`domain_streams`
but reads only the texts that reach a stream (with ``max_bytes_per_domain``, at most that many
bytes per domain and split, plus the target documents). :func:`write_curated_parts` writes the
shuffled curated mixture with a bucketed external shuffle: each shard is read once and its selected
rows are appended to the temporary file of the bucket of output files they belong to; each bucket
(about ``bucket_bytes`` of text) is then sorted in memory and written as its output files. Memory
holds one shard, or one bucket, at a time, whatever the corpus or mixture size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from gem_assets.lib.util.checks import check_float, check_int
from gem_assets.lib.mixing.sampling import check_cap, key_priorities

__all__ = ["SEPARATOR", "texts_to_streams", "split_documents", "domain_streams", "document_tokens",
           "allocate_tokens", "CuratedSample", "sample_curated_mixture", "CorpusIndex", "corpus_index",
           "bottom_k_by_priority", "read_index_texts", "proxy_streams", "write_curated_parts"]

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


def _check_weights(weights, k: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,):
        raise ValueError(f"weights must have one value per domain ({k}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def allocate_tokens(weights, domain_tokens, budget_tokens: float, max_epochs: float) -> np.ndarray:
    """Token target per domain: ``w * budget`` capped at ``max_epochs * tokens``, by water-filling.

    Returns float64 (K,) targets; their sum is ``min(budget, sum of caps)``.
    """
    n = np.asarray(domain_tokens, dtype=np.float64)
    w = _check_weights(weights, n.size)
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError("domain_tokens must be finite and >= 0")
    budget = check_float(budget_tokens, "budget_tokens", low=0.0, strict=True)
    epochs = check_float(max_epochs, "max_epochs", low=0.0, strict=True)
    caps = epochs * n
    target = np.zeros_like(w)
    free = (w > 0) & (caps > 0)
    remaining = budget
    while remaining > 1e-9 * budget and free.any():
        share = w * free / (w * free).sum()
        want = target + remaining * share
        over = free & (want >= caps)
        if not over.any():
            target = want
            break
        # give every capped domain its cap, take that out of the budget and start again
        remaining -= float((caps[over] - target[over]).sum())
        target[over] = caps[over]
        free &= ~over
    return target


@dataclass
class CuratedSample:
    """A curated mixture drawn by :func:`sample_curated_mixture`.

    Attributes
    ----------
    indices : numpy.ndarray of int64, shape (M,)
        Document positions, shuffled; a document appears once per pass it is drawn in.
    repeats : numpy.ndarray of int64, shape (M,)
        The pass (0-based epoch) of each entry.
    domains : numpy.ndarray of int64, shape (M,)
        Domain of each entry.
    per_domain : list of dict
        Per domain: ``domain``, ``weight`` (asked), ``target_tokens``, ``tokens``, ``documents``
        (entries), ``unique_documents``, ``available_tokens``, ``epochs`` (tokens / available),
        ``realized_weight``.
    tokens : int
        Total tokens of the sample.
    budget_tokens : float
    max_epochs : float
    """

    indices: np.ndarray
    repeats: np.ndarray
    domains: np.ndarray
    per_domain: list[dict] = field(default_factory=list)
    tokens: int = 0
    budget_tokens: float = 0.0
    max_epochs: float = 0.0


def sample_curated_mixture(doc_tokens: np.ndarray, labels: np.ndarray, weights, budget_tokens: float,
                           max_epochs: float, seed: int) -> CuratedSample:
    """Sample documents per domain weights to a token budget, never beyond an epoch cap.

    Parameters
    ----------
    doc_tokens : numpy.ndarray of int, shape (N,)
        Tokens of each document (> 0; see :func:`document_tokens`).
    labels : numpy.ndarray of int, shape (N,)
        Domain of each document in [0, K), K = ``len(weights)``.
    weights : array-like, shape (K,)
        Domain weights (normalized here).
    budget_tokens : float
        Tokens wanted in total.
    max_epochs : float
        No domain contributes more than this many times its tokens.
    seed : int

    Returns
    -------
    CuratedSample
    """
    tok = np.asarray(doc_tokens)
    labels = np.asarray(labels)
    if tok.ndim != 1 or labels.shape != tok.shape:
        raise ValueError(f"doc_tokens {tok.shape} and labels {labels.shape} must be 1-D of the same length")
    if tok.size and (not np.issubdtype(tok.dtype, np.integer) or tok.min() <= 0):
        raise ValueError("doc_tokens must be positive integers (every document has at least its separator)")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer domain ids, got dtype {labels.dtype}")
    w = np.asarray(weights, dtype=np.float64)
    k = w.size
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}) (one weight per domain), got [{labels.min()}, {labels.max()}]")
    seed = check_int(seed, "seed", low=0)
    tok = tok.astype(np.int64, copy=False)  # no copy of int64 inputs (a memory-mapped index stays on disk)
    labels = labels.astype(np.int64, copy=False)
    avail = np.bincount(labels, weights=tok, minlength=k).astype(np.int64)
    target = allocate_tokens(w, avail, budget_tokens, max_epochs)
    wn = w / w.sum()
    rng = np.random.default_rng(seed)
    idx_parts, rep_parts, rows = [], [], []
    for d in range(k):
        docs = np.flatnonzero(labels == d)
        full = int(math.floor(target[d] / avail[d])) if avail[d] > 0 else 0
        rest = target[d] - full * avail[d]
        perm = docs[rng.permutation(docs.size)]
        take = perm[: int(np.searchsorted(np.cumsum(tok[perm]), rest, side="right"))]
        chosen = [docs] * full + [take]
        idx = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
        rep = np.concatenate([np.full(len(c), e, np.int64) for e, c in enumerate(chosen)]) if chosen else idx
        idx_parts.append(idx)
        rep_parts.append(rep)
        got = int(tok[idx].sum())
        rows.append({"domain": d, "weight": float(wn[d]), "target_tokens": float(target[d]), "tokens": got,
                     "documents": int(idx.size), "unique_documents": int(np.unique(idx).size),
                     "available_tokens": int(avail[d]), "epochs": got / int(avail[d]) if avail[d] else 0.0})
    indices = np.concatenate(idx_parts).astype(np.int64)
    repeats = np.concatenate(rep_parts).astype(np.int64)
    order = rng.permutation(indices.size)
    indices, repeats = indices[order], repeats[order]
    total = int(tok[indices].sum())
    for r in rows:
        r["realized_weight"] = r["tokens"] / total if total else 0.0
    return CuratedSample(indices=indices, repeats=repeats, domains=labels[indices], per_domain=rows, tokens=total,
                         budget_tokens=float(budget_tokens), max_epochs=float(max_epochs))


# --------------------------------------------------------------------------- streaming (bounded memory)
@dataclass
class CorpusIndex:
    """Every counted document of a corpus without its text, in (shard, id) order.

    Attributes
    ----------
    shards : list of str
        Shard keys (sorted).
    shard : numpy.ndarray of int32, shape (N,)
        Position in ``shards`` of each document's shard.
    row : numpy.ndarray of int64, shape (N,)
        Row of the document in its shard's documents file.
    domains : numpy.ndarray of int64, shape (N,)
        Each document's domain.
    tokens : numpy.ndarray of int64, shape (N,)
        Tokens of each document (:func:`document_tokens`: UTF-8 bytes + 1).
    is_target : numpy.ndarray of bool, shape (N,), optional
        Whether the document's source label equals the ``target_source`` given to
        :func:`corpus_index` (every document when it was None; a null source never matches).
    priority : numpy.ndarray of uint64, shape (N,), optional
        ``sampling.key_priority(key_seed, key_purpose, "<shard>/<id>")`` of each document, when
        :func:`corpus_index` was given a ``key_seed`` (see :func:`bottom_k_by_priority`).
    ids : polars.Series of str, optional
        Document ids, kept only by the in-memory index (``spill_dir=None``); a spilled index reads
        them from the documents files when it needs them (:meth:`keys_at`, :func:`write_curated_parts`).
    sources : polars.Series of str, optional
        Each document's source label (null when absent); in-memory index only, like ``ids``.
    """

    shards: list[str]
    shard: np.ndarray
    row: np.ndarray
    domains: np.ndarray
    tokens: np.ndarray
    is_target: np.ndarray | None = None
    priority: np.ndarray | None = None
    ids: object = None
    sources: object = None

    def __len__(self) -> int:
        return int(self.domains.size)

    def document_keys(self) -> "_DocumentKeys":
        """``keys[i]`` = ``"<shard>/<id>"`` of the i-th document (unique across shards), built on demand.

        Needs the ids in memory (an index built with ``spill_dir=None``); a spilled index draws
        key-ordered samples from :attr:`priority` (:func:`bottom_k_by_priority`) instead.
        """
        if self.ids is None:
            raise ValueError("this index keeps no ids in memory (built with spill_dir): use its priority column "
                             "(bottom_k_by_priority) or keys_at(positions, read_ids)")
        return _DocumentKeys(self)

    def keys_at(self, positions, read_ids: Callable[[np.ndarray], Sequence[str]] | None = None) -> list[str]:
        """``"<shard>/<id>"`` of the documents at ``positions`` (ids from memory, else from ``read_ids``).

        Parameters
        ----------
        positions : array of int
        read_ids : callable, optional
            ``read_ids(positions)`` -> their ids (e.g. :func:`read_index_texts` over the id column);
            needed when the index keeps no ids in memory.
        """
        pos = np.asarray(positions, dtype=np.int64).ravel()
        if read_ids is not None:
            ids = list(read_ids(pos))
        elif self.ids is not None:
            ids = self.ids.gather(pos).to_list()
        else:
            raise ValueError("this index keeps no ids in memory (built with spill_dir): pass read_ids")
        if len(ids) != pos.size:
            raise ValueError(f"read_ids returned {len(ids)} ids for {pos.size} positions")
        return [f"{self.shards[int(s)]}/{i}" for s, i in zip(self.shard[pos].tolist(), ids)]


class _DocumentKeys:
    """The lazy sequence of :meth:`CorpusIndex.document_keys` (no string per document held)."""

    def __init__(self, index: CorpusIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> str:
        return f"{self.index.shards[int(self.index.shard[i])]}/{self.index.ids[int(i)]}"


#: The index's numeric columns and their dtypes (what :func:`corpus_index` can keep on disk);
#: ``is_target`` (1 byte) and ``priority`` (8 bytes) only when asked for.
_NUMERIC_COLUMNS = {"shard": np.int32, "row": np.int64, "domain": np.int64, "tokens": np.int64,
                    "is_target": np.uint8, "priority": np.uint64}


def corpus_index(documents: Callable[[str], object], assignments: Callable[[str], object],
                 shards: Sequence[str], spill_dir=None, target_source: str | None = None,
                 key_seed: int | None = None, key_purpose: str = "") -> CorpusIndex:
    """Index the documents that have a domain assignment, one shard at a time.

    Parameters
    ----------
    documents : callable
        ``documents(key)`` -> a polars DataFrame of the shard's documents file with ``id``, ``text``
        and optionally ``source`` (read one shard at a time; only the text's length is kept).
    assignments : callable
        ``assignments(key)`` -> a polars DataFrame with ``id`` and ``domain``.
    shards : sequence of str
        Shard keys.
    spill_dir : path, optional
        A local folder. When given, the numeric columns (``shard``, ``row``, ``domains``,
        ``tokens``: 28 bytes per document, plus 1 for ``is_target`` and 8 for ``priority``) are
        appended shard by shard to files in a temporary folder under it and memory-mapped
        read-only, so they live in the page cache (evictable) rather than in the process's
        anonymous memory; the files are unlinked at once (the mapping keeps them until the arrays
        are freed) and the folder removed. No string per document is kept: ``ids`` and ``sources``
        are None (what they served is the ``is_target`` and ``priority`` columns, and ids are read
        back from the documents files by row). Without it every column is an in-memory array and
        ``ids`` and ``sources`` are kept as polars Series. Same values either way.
    target_source : str, optional
        The source label of the ``is_target`` column (None: every document is a target).
    key_seed : int, optional
        When given, the ``priority`` column holds ``sampling.key_priority(key_seed, key_purpose,
        "<shard>/<id>")``, computed shard by shard (no key string is kept).
    key_purpose : str

    Returns
    -------
    CorpusIndex
        Documents with an assignment (inner join on ``id``), sorted by shard key then id.
    """
    import polars as pl

    if target_source is not None and not isinstance(target_source, str):
        raise ValueError(f"target_source must be a source label (str) or None, got {target_source!r}")
    seed = None if key_seed is None else check_int(key_seed, "key_seed", low=0)
    columns = {c: d for c, d in _NUMERIC_COLUMNS.items() if c != "priority" or seed is not None}
    keys = sorted(str(k) for k in shards)
    parts = []
    spill = _ColumnSpill(spill_dir, columns) if spill_dir is not None else None
    try:
        for i, key in enumerate(keys):
            docs = documents(key)
            source = pl.col("source").cast(pl.String) if "source" in docs.columns else pl.lit(None, dtype=pl.String)
            small = docs.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col("id").cast(pl.String),
                (pl.col("text").str.len_bytes().cast(pl.Int64) + 1).alias("tokens"), source.alias("source"))
            del docs
            assign = assignments(key).select(pl.col("id").cast(pl.String), pl.col("domain").cast(pl.Int64))
            part = small.join(assign, on="id", how="inner").sort("id").with_columns(
                pl.lit(i, pl.Int32).alias("shard"),
                (pl.lit(True) if target_source is None else (pl.col("source") == target_source).fill_null(False))
                .cast(pl.UInt8).alias("is_target"))
            if seed is not None:
                part = part.with_columns(pl.Series("priority", key_priorities(seed, key_purpose, part["id"].to_list(),
                                                                              prefix=f"{key}/")))
            if spill is not None:
                spill.append(part)
            else:
                parts.append(part)
            del part
        if spill is not None:
            cols, ids, sources = spill.map(), None, None
        else:
            frame = pl.concat(parts) if parts else pl.DataFrame(schema={"id": pl.String, "source": pl.String})
            del parts
            cols = {c: frame[c].to_numpy().astype(dtype, copy=False) if frame.height else np.zeros(0, dtype)
                    for c, dtype in columns.items()}
            ids, sources = frame["id"], frame["source"]
    finally:
        if spill is not None:
            spill.remove()
    return CorpusIndex(shards=keys, shard=cols["shard"], row=cols["row"], domains=cols["domain"], tokens=cols["tokens"],
                       is_target=cols["is_target"].view(np.bool_), priority=cols.get("priority"), ids=ids,
                       sources=sources)


class _ColumnSpill:
    """Numeric columns appended to raw files, then memory-mapped read-only (see :func:`corpus_index`)."""

    def __init__(self, folder, columns: Mapping[str, type]) -> None:
        import tempfile
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="corpus-index-", dir=str(folder)))
        self.n = 0
        self.columns = dict(columns)
        self.files = {c: open(self.dir / f"{c}.bin", "wb") for c in self.columns}

    def append(self, part) -> None:
        for c, dtype in self.columns.items():
            self.files[c].write(np.ascontiguousarray(part[c].to_numpy(), dtype=dtype).tobytes())
        self.n += part.height

    def map(self) -> dict[str, np.ndarray]:
        out = {}
        for c, dtype in self.columns.items():
            self.files[c].close()
            out[c] = np.memmap(self.dir / f"{c}.bin", dtype=dtype, mode="r", shape=(self.n,)) if self.n else \
                np.zeros(0, dtype)
        return out

    def remove(self) -> None:
        import shutil

        for f in self.files.values():
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)  # mapped files stay readable until unmapped


def bottom_k_by_priority(idx, priority: np.ndarray, cap: int | None,
                         keys: Callable[[np.ndarray], Sequence[str]] | None = None) -> np.ndarray:
    """At most ``cap`` of the positions ``idx``: those of smallest ``priority`` (a bottom-k sample).

    The same sample as ``sampling.bottom_k_positions(idx, document keys, cap, seed, purpose)`` when
    ``priority[i]`` is ``sampling.key_priority(seed, purpose, key of i)`` (the ``priority`` column of
    :func:`corpus_index`), ties included: among equal priorities :class:`~gem_assets.lib.mixing.sampling.BottomK`
    keeps the larger key, so do we. Nothing per candidate beyond two 8-byte arrays is built; keys
    are asked for only for candidates tied at the cut.

    Parameters
    ----------
    idx : array of int
        Candidate positions, increasing.
    priority : numpy.ndarray of uint64, shape (N,)
        Priority of every position (may be memory-mapped).
    cap : int or None
        Most positions kept; None keeps all.
    keys : callable, optional
        ``keys(positions)`` -> the keys of those positions (e.g. :meth:`CorpusIndex.keys_at`); needed
        only when candidates tie on priority at the cut (a ValueError says so).

    Returns
    -------
    numpy.ndarray of int64
        The kept positions, increasing (all of ``idx`` when it has at most ``cap``).
    """
    idx = np.asarray(idx, dtype=np.int64)
    cap = check_cap(cap)
    if idx.ndim != 1:
        raise ValueError(f"idx must be 1-D positions, got shape {idx.shape}")
    if priority is None or np.asarray(priority[:0]).dtype != np.uint64:
        raise ValueError("priority must be the uint64 priority column (corpus_index(..., key_seed=...))")
    if idx.size and (idx[0] < 0 or idx[-1] >= len(priority) or np.any(np.diff(idx) <= 0)):
        raise ValueError(f"idx must be increasing positions in [0, {len(priority)})")
    if cap is None or idx.size <= cap:
        return idx
    p = np.asarray(priority[idx], dtype=np.uint64)
    cut = np.partition(p, cap - 1)[cap - 1]
    below, tied = idx[p < cut], idx[p == cut]
    need = cap - below.size
    if tied.size > need:
        if keys is None:
            raise ValueError(f"{tied.size} candidates tie on priority {int(cut)} at the cut: pass keys to break the tie")
        tie_keys = list(keys(tied))
        tied = tied[sorted(range(tied.size), key=tie_keys.__getitem__, reverse=True)[:need]]
    return np.sort(np.concatenate([below, tied]))


def read_index_texts(index: CorpusIndex, positions, read_rows: Callable[[str, np.ndarray], Sequence[str]]) -> list[str]:
    """The texts of the documents at ``positions`` of the index, read shard by shard.

    Parameters
    ----------
    index : CorpusIndex
    positions : array of int
        Positions in the index (any order; repeats allowed).
    read_rows : callable
        ``read_rows(shard_key, rows)`` -> the texts of those (increasing) rows of the shard's
        documents file, in that order (e.g. with :func:`gem_assets.lib.io.streaming.iter_selected_rows`).

    Returns
    -------
    list of str
        One text per position, in the order of ``positions``.
    """
    pos = np.asarray(positions, dtype=np.int64).ravel()
    uniq = np.unique(pos)
    out: dict[int, str] = {}
    for s in np.unique(index.shard[uniq]):
        here = uniq[index.shard[uniq] == s]
        order = np.argsort(index.row[here], kind="stable")
        texts = read_rows(index.shards[int(s)], index.row[here][order])
        if len(texts) != here.size:
            raise ValueError(f"shard {index.shards[int(s)]!r}: asked for {here.size} rows, got {len(texts)}")
        out.update(zip(here[order].tolist(), texts))
    return [out[i] for i in pos.tolist()]


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


def write_curated_parts(index: CorpusIndex, sample: CuratedSample, read_texts: Callable[[np.ndarray], Sequence[str]],
                        out_dir, rows_per_file: int, bucket_bytes: int = 16 << 20, max_buckets: int = 512,
                        read_ids: Callable[[np.ndarray], Sequence[str]] | None = None) -> list[str]:
    """Write the curated mixture's rows, in the sample's (shuffled) order, as Parquet files.

    Files ``part-00000.parquet`` ... of ``rows_per_file`` rows each (the last may be shorter), columns
    ``shard``, ``id``, ``domain``, ``repeat``, ``tokens``, ``text`` (zstd). A bucketed external shuffle
    keeps memory bounded: consecutive output files are grouped into buckets of about
    ``bucket_bytes`` of tokens; one pass over the shards appends each shard's selected rows to its
    buckets' temporary files (under ``out_dir/.buckets``, removed at the end); then each bucket is
    read, put in sample order and written as its output files.

    Parameters
    ----------
    index : CorpusIndex
    sample : CuratedSample
        Entries are positions of ``index``.
    read_texts : callable
        ``read_texts(positions)`` -> texts of those index positions.
    out_dir : path
        A local folder (created if needed).
    rows_per_file : int
    bucket_bytes : int
        About this many tokens of text per bucket (the memory of the second phase; a bucket holds
        at least one output file). 16 MiB: on a 40-shard BBC mixture (86 MiB of text) the write's
        peak was 130 MiB above its start against 180 MiB with 256 MiB buckets, and 20 -> 40 shards
        no longer raised it (docs/scaling.md).
    max_buckets : int
        Most buckets (temporary files open at once in the first phase): when the mixture holds more
        than ``max_buckets / 2 * bucket_bytes`` tokens, buckets grow to ``2 * tokens / max_buckets``
        (then memory grows with the mixture, open files do not).
    read_ids : callable, optional
        ``read_ids(positions)`` -> ids of those index positions, read with the texts shard by shard
        (e.g. :func:`read_index_texts` over the id column). Needed when the index keeps no ids in
        memory (built with ``spill_dir``); otherwise ``index.ids`` is used. Same files either way.

    Returns
    -------
    list of str
        The file names written, in order (at least one, possibly empty, file).
    """
    import contextlib
    import shutil
    from pathlib import Path

    import polars as pl

    from gem_assets.lib.io import storage

    size = check_int(rows_per_file, "rows_per_file", low=1)
    bucket_bytes = check_int(bucket_bytes, "bucket_bytes", low=1)
    max_buckets = check_int(max_buckets, "max_buckets", low=2)
    if read_ids is None:
        if index.ids is None:
            raise ValueError("this index keeps no ids in memory (built with spill_dir): pass read_ids")
        read_ids = index.ids.gather
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = int(sample.indices.size)
    n_files = max(1, -(-m // size))
    files = [f"part-{i:05d}.parquet" for i in range(n_files)]
    tok = index.tokens[sample.indices]
    file_tokens = np.bincount(np.arange(m) // size, weights=tok, minlength=n_files) if m else np.zeros(n_files)
    # files per bucket: consecutive files until the bucket holds about bucket_bytes tokens; two
    # consecutive buckets hold more than `per_bucket`, so there are at most max_buckets + 1
    per_bucket = max(float(bucket_bytes), 2.0 * float(file_tokens.sum()) / max_buckets)
    bucket_of_file = np.zeros(n_files, dtype=np.int64)
    b, acc = 0, 0.0
    for f in range(n_files):
        if acc > 0 and acc + file_tokens[f] > per_bucket:
            b, acc = b + 1, 0.0
        bucket_of_file[f] = b
        acc += file_tokens[f]
    n_buckets = b + 1
    entry_bucket = bucket_of_file[np.arange(m) // size] if m else np.zeros(0, np.int64)
    schema = {"pos": pl.Int64, "shard": pl.String, "id": pl.String, "domain": pl.Int64, "repeat": pl.Int64,
              "tokens": pl.Int64, "text": pl.String}
    tmp = out_dir / ".buckets"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(storage.ParquetBatchWriter(tmp / f"bucket-{i:05d}.parquet", schema))
                       for i in range(n_buckets)]
            entry_shard = index.shard[sample.indices] if m else np.zeros(0, np.int32)
            for s in np.unique(entry_shard):
                ent = np.flatnonzero(entry_shard == s)           # this shard's entries (positions in the sample)
                docs = sample.indices[ent]
                frame = pl.DataFrame({"pos": ent.astype(np.int64), "shard": [index.shards[int(s)]] * ent.size,
                                      "id": read_ids(docs), "domain": index.domains[docs],
                                      "repeat": sample.repeats[ent], "tokens": index.tokens[docs],
                                      "text": list(read_texts(docs))}, schema=schema)
                for bk in np.unique(entry_bucket[ent]).tolist():
                    writers[bk].write(frame.filter(pl.Series(entry_bucket[ent] == bk)))
                del frame
        for bk in range(n_buckets):
            rows = pl.read_parquet(tmp / f"bucket-{bk:05d}.parquet").sort("pos")
            for f in np.flatnonzero(bucket_of_file == bk).tolist():
                part = rows.filter((pl.col("pos") >= f * size) & (pl.col("pos") < (f + 1) * size))
                part.drop("pos").write_parquet(out_dir / files[f], compression="zstd")
            del rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from gem_assets.lib.util.allocator import release_memory

    release_memory()
    return files

"""Count-based byte language models: interpolated Witten-Bell n-grams, counted with numpy.

The mixture optimizers and the mixture evaluation need many language models, one per mixture,
each trained well enough that its loss says something about the data. On a CPU a small byte
transformer trained for minutes is worse than a byte trigram; a smoothed byte 5-gram is far
better and is fitted in a second. This module is that model, behind the same interface as the
transformer proxy (``lib/mixing/lm.py``): fit on byte streams, bits per byte on a stream or per domain.

Model
-----
Bytes are symbols 1..256 (byte + 1; 0 is padding). For the byte ``x_i`` and order n, the
context is h = x_{i-n+1} .. x_{i-1}. Witten-Bell interpolation, recursively from the uniform
distribution over the 256 bytes::

    P_0(w)     = 1 / 256
    P_n(w | h) = (c(h, w) + t(h) * P_{n-1}(w | h')) / (c(h) + t(h))     if c(h) > 0
               = P_{n-1}(w | h')                                         otherwise

with h' the context shortened by its oldest byte, c(h, w) the count of the n-gram, c(h) its sum
over w and t(h) the number of distinct w with c(h, w) > 0. Each P_n(. | h) sums to 1 over the
256 bytes because P_{n-1}(. | h') does and sum_w c(h, w) = c(h) (tested in random contexts).

Documents
---------
Streams are documents joined by the separator byte 0 (``lib.mixture``). No n-gram reaches
across a separator: the separator may be an n-gram's first symbol (the start of the next
document, its "beginning of document" context) or its last one (the end of the document), never
an inner one. So every count is a sum over documents, and a model of any sample of documents is
exact whatever order they are drawn in (the mixture evaluation redraws documents per seed).

Counting
--------
For each position p, one uint64 code holds the window x_p .. x_{p+N-1}, 9 bits a symbol with the
oldest byte most significant (N <= 7 fits in 63 bits), cut at the first inner separator. One
sort of these codes sorts every order at once: the order-n gram starting at p is the code's
leading n symbols (``code >> 9 * (N - n)``), and a shift keeps the order. Unique n-grams are then
the change points of the sorted prefixes, and an n-gram is real when its last symbol is not 0
(it ends inside the stream and before the window's cut); no Python loop runs per byte.

:class:`CountIndex` keeps, per order, the n-gram id of every position of a set of domain streams,
so that a model of any *weighted* sample of those positions (a mixture at a token budget, a
resampled set of documents) is a ``numpy.bincount`` away. Memory is about ``36 + 4 N`` bytes a
position while indexing and ``4 N`` after; ``max_grams`` bounds the table of each order: when
more distinct n-grams occur, only the ``max_grams`` most frequent are kept, and t(h) and c(h) are
recomputed from the kept ones, so the pruned model still sums to 1.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from gem_assets.lib.util.checks import check_int

__all__ = ["NGramLM", "CountIndex", "Lookup", "MAX_ORDER", "mixture_multiplicity"]

#: Highest order whose window codes fit in an unsigned 64-bit integer (7 symbols of 9 bits).
MAX_ORDER = 7
_BITS = 9
_MASK = np.uint64((1 << _BITS) - 1)
_SEP = 1          # the separator byte 0 as a symbol
_LN2 = math.log(2.0)


def _check_order(order) -> int:
    return check_int(order, "order", low=1, high=MAX_ORDER)


def _check_stream(stream, name: str = "stream") -> np.ndarray:
    a = np.asarray(stream)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D byte stream, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8 (bytes), got {a.dtype}; build streams with "
                         "lib.mixing.streams.texts_to_streams")
    return a


def _windows(sym: np.ndarray, order: int) -> np.ndarray:
    """Window codes (P,) uint64 of every position of ``sym`` (symbols, 0-padded by ``order - 1``).

    code[p] = sum_j s_j << 9 * (order - 1 - j) over j < order, where s_j = sym[p + j] until the
    first separator strictly inside the window (j >= 1) and 0 after it; 0 when p is padding.
    """
    n = sym.size - (order - 1)
    s64 = sym.astype(np.uint64)
    code = s64[:n].copy()
    is_sep = sym == _SEP
    cut = sym[:n] == 0                                          # a window starts at a byte, never at padding
    for j in range(1, order):
        if j >= 2:                                              # a separator at j - 1 >= 1 ends the window
            cut |= is_sep[j - 1:j - 1 + n]
        code <<= np.uint64(_BITS)
        code |= s64[j:j + n]
        code[cut] &= ~_MASK
    return code


def _sort(codes: np.ndarray) -> np.ndarray:
    """Sorted copy of uint64 codes: polars' radix sort when polars is there (~5x numpy's), else numpy."""
    try:
        import polars as pl
    except ImportError:
        return np.sort(codes)
    return pl.Series(codes, dtype=pl.UInt64).sort().to_numpy()


def _orders(sorted_codes: np.ndarray, order: int, max_grams: int | None):
    """Per order n = 1..N, from the sorted window codes: ``(new, uniq, freq, keep, dropped)``.

    ``new`` flags the first of each run of equal order-n prefixes, ``uniq`` (U,) the prefixes,
    ``freq`` (U,) their occurrences, ``keep`` (U,) the real n-grams kept (ending inside the
    stream and the window; the ``max_grams`` most frequent when that cap binds), ``dropped``
    the real n-grams the cap removed.
    """
    for n in range(1, order + 1):
        g = sorted_codes >> np.uint64(_BITS * (order - n))
        new = np.empty(g.size, dtype=bool)
        new[:1] = True
        np.not_equal(g[1:], g[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        uniq = g[starts]
        del g
        freq = np.diff(np.append(starts, sorted_codes.size))
        keep = (uniq & _MASK) != 0
        dropped = 0
        if max_grams is not None and int(keep.sum()) > max_grams:
            top = np.argsort(-np.where(keep, freq, -1), kind="stable")[:max_grams]
            dropped = int(keep.sum()) - max_grams
            keep = np.zeros(uniq.size, dtype=bool)
            keep[top] = True
        yield n, new, uniq, freq, keep, dropped


def _symbols(streams: list[np.ndarray], order: int) -> tuple[np.ndarray, np.ndarray]:
    """All streams as symbols (byte + 1), each after one separator and before ``order - 1`` zeros.

    The leading separator is context only (the first document's "beginning of document", as every
    later document has the separator that ends the one before it): its own position is never
    predicted. Returns the symbols and the position of each stream's leading separator.
    """
    pad = order - 1
    sizes = np.array([s.size + 1 + pad for s in streams], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    sym = np.zeros(int(sizes.sum()) + pad, dtype=np.uint16)
    for s, st in zip(streams, starts):
        sym[st] = _SEP
        sym[st + 1:st + 1 + s.size] = s.astype(np.uint16) + 1
    return sym, starts


class _Table:
    """The n-grams of one order: sorted codes, their contexts, and the sorted context codes."""

    __slots__ = ("order", "codes", "ctx", "ctx_codes")

    def __init__(self, order: int, codes: np.ndarray):
        self.order = order
        self.codes = codes                                     # (U,) uint64, sorted
        h = codes >> np.uint64(_BITS)                          # the context: all but the last symbol
        new = np.empty(h.size, dtype=bool)
        new[:1] = True
        np.not_equal(h[1:], h[:-1], out=new[1:])
        self.ctx = (np.cumsum(new) - 1).astype(np.int32)       # (U,) context id of each n-gram
        self.ctx_codes = h[new]                                # (C,) uint64, sorted


class NGramLM:
    """An interpolated Witten-Bell byte n-gram model (see the module docstring).

    Build one with :meth:`fit` (one stream) or :meth:`CountIndex.fit` (a weighted mixture of
    domain streams).

    Attributes
    ----------
    order : int
        N: the longest n-gram (contexts of up to N - 1 bytes).
    counts : list of numpy.ndarray
        ``counts[n - 1]``: float64 count of each n-gram of the order-n table (0 for an n-gram
        of the table this model did not see).
    tokens : float
        Bytes the model was trained on (the sum of the order-1 counts).
    """

    def __init__(self, tables: list[_Table], counts: list[np.ndarray]):
        self.order = len(tables)
        self._tables = tables
        self.counts = counts
        self._ctx_total, self._ctx_types = [], []
        for t, c in zip(tables, counts):
            self._ctx_total.append(np.bincount(t.ctx, weights=c, minlength=t.ctx_codes.size))       # c(h)
            self._ctx_types.append(np.bincount(t.ctx, weights=(c > 0), minlength=t.ctx_codes.size))  # t(h)
        self.tokens = float(counts[0].sum())

    @classmethod
    def fit(cls, stream, order: int = 5, max_grams: int | None = None) -> "NGramLM":
        """Fit on one uint8 byte stream (documents separated by byte 0).

        ``max_grams`` bounds each order's table as in :class:`CountIndex`.
        """
        stream = _check_stream(stream)
        order = _check_order(order)
        if max_grams is not None:
            max_grams = check_int(max_grams, "max_grams", low=256)
        sym, _ = _symbols([stream], order)
        tables, counts = [], []
        for n, _new, uniq, freq, keep, _dropped in _orders(_sort(_windows(sym, order)), order, max_grams):
            tables.append(_Table(n, uniq[keep]))
            counts.append(freq[keep].astype(np.float64))   # every real occurrence predicts a byte once ...
        sep = np.searchsorted(tables[0].codes, np.uint64(_SEP))
        if sep < tables[0].codes.size and tables[0].codes[sep] == _SEP:
            counts[0][sep] -= 1.0                           # ... but the leading separator is not predicted
        return cls(tables, counts)

    def token_probabilities(self, stream) -> np.ndarray:
        """P(x_i | history) of every byte of ``stream``, float64 (len(stream),)."""
        return Lookup(self._tables, _check_stream(stream)).probabilities(self)

    def token_losses(self, stream) -> np.ndarray:
        """Per-byte cross-entropy in nats, float64 (len(stream),)."""
        return -np.log(self.token_probabilities(stream))

    def bpb(self, stream_or_streams) -> float | dict[str, float]:
        """Bits per byte on one stream, or on each of ``{name: stream}``."""
        if isinstance(stream_or_streams, Mapping):
            return {str(k): self.bpb(v) for k, v in stream_or_streams.items()}
        s = _check_stream(stream_or_streams)
        if s.size == 0:
            raise ValueError("the stream is empty: bits per byte need at least one byte")
        return float(self.token_losses(s).mean() / _LN2)

    def distribution(self, context: bytes | np.ndarray) -> np.ndarray:
        """P(w | context) for all 256 bytes w, float64 (256,), from the last N - 1 bytes of ``context``."""
        ctx = np.frombuffer(bytes(context), dtype=np.uint8) if not isinstance(context, np.ndarray) else context
        ctx = _check_stream(ctx, "context")
        # each of the 256 continuations appended to the context; its last byte is scored
        out = np.empty(256)
        for w in range(256):
            row = np.concatenate([ctx, np.array([w], dtype=np.uint8)])
            out[w] = Lookup(self._tables, row).probabilities(self)[-1]
        return out


class Lookup:
    """The n-gram and context ids of every byte of one stream in a model's tables (reusable).

    Scoring many models of one :class:`CountIndex` on the same stream (RegMix's runs, the
    evaluation's seeds) looks the stream up once: :meth:`probabilities` is then gathers only.
    """

    def __init__(self, tables: list[_Table], stream: np.ndarray):
        stream = _check_stream(stream)
        order = len(tables)
        size = self.size = stream.size
        sym, _ = _symbols([stream], order)
        code = _windows(sym, order)[: size + 1]               # windows starting at the separator and each byte
        self.gram, self.ctx = [], []
        for n in range(1, order + 1):
            t = tables[n - 1]
            # byte i (1..size in symbol positions) is predicted by the order-n gram starting at i - n + 1
            start = np.arange(1, size + 1) - (n - 1)
            ok = start >= 0
            g = code[np.maximum(start, 0)] >> np.uint64(_BITS * (order - n))
            valid = ok & ((g & _MASK) != 0)                   # inside the window (no inner separator)
            self.gram.append(_find(t.codes, g, valid))
            self.ctx.append(_find(t.ctx_codes, g >> np.uint64(_BITS), valid))

    def probabilities(self, model: NGramLM) -> np.ndarray:
        """P(x_i | history) under ``model`` (whose tables this lookup was made for), (L,)."""
        p = np.full(self.gram[0].size, 1.0 / 256)
        for n in range(model.order):
            gid, cid = self.gram[n], self.ctx[n]
            seen = cid >= 0
            c_h = np.where(seen, model._ctx_total[n][np.maximum(cid, 0)], 0.0)
            t_h = np.where(seen, model._ctx_types[n][np.maximum(cid, 0)], 0.0)
            c_hw = np.where(gid >= 0, model.counts[n][np.maximum(gid, 0)], 0.0)
            use = c_h > 0
            p = np.where(use, (c_hw + t_h * p) / np.where(use, c_h + t_h, 1.0), p)
        return p

    def token_losses(self, model: NGramLM) -> np.ndarray:
        """Per-byte cross-entropy in nats, (L,)."""
        return -np.log(self.probabilities(model))

    def bpb(self, model: NGramLM) -> float:
        """Bits per byte of ``model`` on the looked-up stream."""
        return float(self.token_losses(model).mean() / _LN2)


def _find(sorted_codes: np.ndarray, codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Index of each code in ``sorted_codes``, -1 where absent or not valid (int32: tables hold < 2**31)."""
    if sorted_codes.size == 0:
        return np.full(codes.size, -1, dtype=np.int32)
    i = np.searchsorted(sorted_codes, codes)
    i = np.minimum(i, sorted_codes.size - 1)
    hit = valid & (sorted_codes[i] == codes)
    return np.where(hit, i, -1).astype(np.int32)


def mixture_multiplicity(weights: np.ndarray, lengths: np.ndarray, budget_tokens: float) -> tuple[np.ndarray, np.ndarray]:
    """How a model trained on ``budget_tokens`` bytes drawn per ``weights`` reads each domain.

    Domain k gives w_k * B bytes: ``floor(a_k)`` full passes over its stream of n_k bytes plus its
    first ``round((a_k - floor(a_k)) * n_k)`` bytes, with a_k = w_k * B / n_k epochs. Streams are
    in a seeded document order, so the prefix is a uniform sample of the domain's documents.

    Returns
    -------
    full : numpy.ndarray of int64, shape (K,)
        Whole passes.
    prefix : numpy.ndarray of int64, shape (K,)
        Bytes of one more partial pass.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = np.asarray(lengths, dtype=np.float64)
    if w.shape != n.shape or w.ndim != 1:
        raise ValueError(f"weights {w.shape} and lengths {n.shape} must be 1-D of one length")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    if not (np.isfinite(budget_tokens) and budget_tokens > 0):
        raise ValueError(f"budget_tokens must be a positive number of bytes, got {budget_tokens}")
    epochs = np.where(n > 0, (w / w.sum()) * float(budget_tokens) / np.maximum(n, 1.0), 0.0)
    full = np.floor(epochs).astype(np.int64)
    prefix = np.round((epochs - full) * n).astype(np.int64)
    return full, prefix


class CountIndex:
    """The n-gram ids of every position of a set of domain streams, for models of weighted samples.

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}``, documents separated by byte 0.
    order : int
        N, 1 <= N <= 7 (default 5).
    max_grams : int, optional
        Most n-grams kept per order (the most frequent; ties by code). None: all (exact).

    Attributes
    ----------
    domains : list of str
    lengths : numpy.ndarray of int64, shape (K,)
        Bytes per domain stream.
    n_grams : list of int
        Distinct n-grams kept per order.
    pruned : list of int
        Distinct n-grams dropped per order by ``max_grams``.
    """

    def __init__(self, streams: Mapping[str, np.ndarray], order: int = 5, max_grams: int | None = None):
        if not isinstance(streams, Mapping) or not streams:
            raise ValueError("streams must be a non-empty mapping {domain: uint8 byte stream}")
        order = _check_order(order)
        if max_grams is not None:
            max_grams = check_int(max_grams, "max_grams", low=256)
        self.order = order
        self.domains = [str(k) for k in streams]
        arrays = [_check_stream(s, f"streams[{k!r}]") for k, s in streams.items()]
        self.lengths = np.array([a.size for a in arrays], dtype=np.int64)
        sym, self._starts = _symbols(arrays, order)
        code = _windows(sym, order)                                         # (P,) one per position
        self._positions = code.size
        perm = np.argsort(code, kind="stable")                              # radix-free: ~0.15 us a position
        sorted_codes = code[perm]
        del code
        self._tables: list[_Table] = []
        self._ids: list[np.ndarray] = []          # per order: n-gram id of each start position (U: none)
        self.n_grams, self.pruned = [], []
        for n, new, uniq, _freq, keep, dropped in _orders(sorted_codes, order, max_grams):
            u = int(keep.sum())
            remap = np.where(keep, np.cumsum(keep) - 1, u).astype(np.int32)    # unique -> kept id, u: none
            ids = np.empty(new.size, dtype=np.int32)
            ids[perm] = remap[np.cumsum(new, dtype=np.int32) - 1]
            self._ids.append(ids)
            self._tables.append(_Table(n, uniq[keep]))
            self.n_grams.append(u)
            self.pruned.append(dropped)
        del sorted_codes, perm

    # ------------------------------------------------------------------ models
    def fit_positions(self, multiplicity: np.ndarray) -> NGramLM:
        """The model of a weighted sample: ``multiplicity[i]`` copies of the byte at position i.

        Positions are those of :meth:`positions` (the streams back to back, each after a leading
        separator and before ``order - 1`` unused positions, which must have multiplicity 0); a
        byte's n-grams are the ones that predict it.
        """
        m = np.asarray(multiplicity, dtype=np.float64)
        if m.shape != (self._positions,):
            raise ValueError(f"multiplicity must have one value per position ({self._positions}), got {m.shape}")
        if not np.all(np.isfinite(m)) or np.any(m < 0):
            raise ValueError("multiplicity must be finite and >= 0")
        mp = np.concatenate([m, np.zeros(self.order)])
        counts = []
        for n in range(1, self.order + 1):
            u = self.n_grams[n - 1]
            # the n-gram starting at p predicts the byte at p + n - 1
            c = np.bincount(self._ids[n - 1], weights=mp[n - 1:n - 1 + self._positions], minlength=u + 1)
            counts.append(c[:u])
        return NGramLM(self._tables, counts)

    def fit_segments(self, segments) -> NGramLM:
        """The model of a weighted sample given as ``(start, stop, copies)`` runs of positions.

        The same model as :meth:`fit_positions` with ``copies`` on every position of each run,
        at a cost that follows the runs' total length, not the index's: a mixture at a budget B
        reads about B positions however large the streams are.
        """
        counts = []
        for n in range(1, self.order + 1):
            u = self.n_grams[n - 1]
            ids, w = [], []
            for start, stop, copies in segments:
                lo, hi = int(start) - (n - 1), int(stop) - (n - 1)   # the n-gram predicting q starts at q - n + 1
                lo = max(lo, 0)
                if hi > lo and copies > 0:
                    ids.append(self._ids[n - 1][lo:hi])
                    w.append(np.full(hi - lo, float(copies)))
            if ids:
                c = np.bincount(np.concatenate(ids), weights=np.concatenate(w), minlength=u + 1)[:u]
            else:
                c = np.zeros(u)
            counts.append(c)
        return NGramLM(self._tables, counts)

    def positions(self, domain: str) -> slice:
        """The positions of one domain's bytes."""
        k = self.domains.index(str(domain))
        start = int(self._starts[k]) + 1                  # after the stream's leading separator
        return slice(start, start + int(self.lengths[k]))

    def fit_all(self) -> NGramLM:
        """The model of every byte of every stream once."""
        m = np.zeros(self._positions)
        for d in self.domains:
            m[self.positions(d)] = 1.0
        return self.fit_positions(m)

    def segments(self, weights, budget_tokens: float, offsets: np.ndarray | None = None) -> list[tuple[int, int, int]]:
        """The ``(start, stop, copies)`` runs of positions a mixture at a token budget reads.

        Domain k is read ``floor(a_k)`` whole times, then ``prefix_k`` more bytes
        (:func:`mixture_multiplicity`) starting at ``offsets[k]`` and wrapping around the end of
        its stream: with the streams in a seeded document order, a seeded offset is a fresh
        uniform draw of the domain's documents (see :meth:`seeded_offsets`).
        """
        w = self._weight_vector(weights)
        full, prefix = mixture_multiplicity(w, self.lengths, budget_tokens)
        if offsets is None:
            offsets = np.zeros(len(self.domains), dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.shape != (len(self.domains),) or np.any(offsets < 0):
            raise ValueError(f"offsets must be {len(self.domains)} non-negative byte offsets, got {offsets.tolist()}")
        out = []
        for k, d in enumerate(self.domains):
            sl = self.positions(d)
            n, r = int(self.lengths[k]), int(prefix[k])
            if full[k]:
                out.append((sl.start, sl.stop, int(full[k])))
            if r:
                o = int(offsets[k]) % n
                first = min(r, n - o)
                out.append((sl.start + o, sl.start + o + first, 1))
                if r > first:
                    out.append((sl.start, sl.start + r - first, 1))      # the wrap-around
        return out

    def multiplicity(self, weights, budget_tokens: float, offsets: np.ndarray | None = None) -> np.ndarray:
        """Per-position multiplicity of a mixture at a token budget (the runs of :meth:`segments`)."""
        m = np.zeros(self._positions)
        for start, stop, copies in self.segments(weights, budget_tokens, offsets):
            m[start:stop] += copies
        return m

    def seeded_offsets(self, seed: int) -> np.ndarray:
        """One uniform start offset per domain stream, from ``seed``."""
        rng = np.random.default_rng(check_int(seed, "seed", low=0))
        return (rng.random(len(self.domains)) * self.lengths).astype(np.int64)

    def fit(self, weights, budget_tokens: float, offsets: np.ndarray | None = None) -> NGramLM:
        """A model trained on ``budget_tokens`` bytes drawn from the domains per ``weights``.

        Parameters
        ----------
        weights : mapping of str to float, or numpy.ndarray of shape (K,)
            Mixture weights (normalized here); a mapping may leave domains out (weight 0).
        budget_tokens : float
            Bytes the model trains on; see :func:`mixture_multiplicity`.
        offsets : numpy.ndarray of int, shape (K,), optional
            Where each domain's partial pass starts (:meth:`segments`).
        """
        return self.fit_segments(self.segments(weights, budget_tokens, offsets))

    def lookup(self, stream) -> Lookup:
        """The ids of ``stream``'s n-grams in this index's tables, to score many of its models fast."""
        return Lookup(self._tables, _check_stream(stream))

    def _weight_vector(self, weights) -> np.ndarray:
        if isinstance(weights, Mapping):
            extra = sorted(set(map(str, weights)) - set(self.domains))
            if extra:
                raise ValueError(f"weights name domains the index does not hold: {extra[:5]}")
            w = np.array([float(weights.get(d, 0.0)) for d in self.domains])
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.domains),):
                raise ValueError(f"weights must have one value per domain ({len(self.domains)}), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
        return w / w.sum()

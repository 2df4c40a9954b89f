"""Features of the student: words, word n-grams and character n-grams, hashed into buckets.

Features of a text:

- words (:func:`tokenize`): the text is lowercased; common non-ASCII punctuation and spaces
  become spaces; a word is a maximal run of ASCII letters, digits, ``_`` and non-ASCII
  characters (so accented, Greek, Cyrillic, CJK ... text forms words; ASCII punctuation and
  whitespace separate them). Working on UTF-8 bytes with one lookup table keeps this
  vectorized;
- word unigrams and, with ``word_ngrams=2``, bigrams of consecutive words (``word_ngrams``
  up to 3 is supported);
- optionally character n-grams of each word (``char_ngrams=(3, 5)``: lengths 3 to 5 of
  ``"<" + word + ">"``, as fastText does), for morphology and scripts without spaces.

Hashing is deterministic across processes and platforms (Python's ``hash()`` of ``str`` is
salted per process and is never used): a word's hash is a 64-bit polynomial hash of its UTF-8
bytes (base: the FNV-1 64-bit prime, modulo 2**64; all words of a batch from one prefix sum)
passed through the splitmix64 finalizer; an n-gram's hash combines its words' hashes as
fastText does (``h = h * 116049371 + next``, modulo 2**64); every feature goes through
splitmix64 again before ``% buckets``. Character n-grams hash as CRC-32 of
``b"\\x01" + bytes``.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

__all__ = ["Featurizer", "tokenize", "HASH_SCHEME"]


#: Identifies the tokenizer and hashing; stored with a saved model and checked on load.
HASH_SCHEME = "gem-student-v2: lower, ascii-alnum/_/non-ascii byte runs, poly64(utf8) words, fasttext-combine + splitmix64"

_MIX = np.uint64(116049371)
_P = np.uint64(0x100000001B3)  # the 64-bit FNV prime (odd, so invertible modulo 2**64)
_PINV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_CHUNK_BYTES = 1 << 18  # texts are featurized in chunks of about this many UTF-8 bytes (a chunk
# costs ~40 bytes of temporaries per byte, and the cached power tables grow to the largest chunk; 256 KiB
# keeps that near 10 MiB, and was faster than 2 MiB: 0.23 vs 0.38 s for the 2,225 BBC articles)
# common non-ASCII punctuation and spaces, turned into spaces before splitting
_UPUNCT = re.compile("[\u00a0-\u00bf\u00d7\u00f7\u2000-\u206f\u2190-\u23ff\u2500-\u27bf\u3000-\u303f\ufe30-\ufe4f"
                     "\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")
_WORD = re.compile(r"[0-9A-Za-z_\u0080-\U0010ffff]+")
_IS_WORD = np.zeros(256, dtype=bool)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_":
    _IS_WORD[_c] = True
_IS_WORD[0x80:] = True  # every byte of a non-ASCII character
_POWS: dict[str, np.ndarray] = {}


def _normalize(text: str) -> str:
    text = text.lower()
    return text if text.isascii() else _UPUNCT.sub(" ", text)


def tokenize(text: str) -> list[str]:
    """The words of a text as the student sees them.

    Lowercased; common non-ASCII punctuation and spaces (Latin-1 symbols, general
    punctuation, arrows, box drawing, CJK and full-width punctuation) become spaces; words
    are maximal runs of ASCII letters, digits, ``_`` and non-ASCII characters.
    """
    return _WORD.findall(_normalize(text))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i modulo 2**64 for i < n (cached, grown by doubling)."""
    have = _POWS.get("p")
    if have is None or have.size < n:
        size = max(n, 2 * (have.size if have is not None else 1 << 16))
        with np.errstate(over="ignore"):
            p = np.full(size, _P, dtype=np.uint64)
            p[0] = 1
            q = np.full(size, _PINV, dtype=np.uint64)
            q[0] = 1
            _POWS["p"], _POWS["q"] = np.cumprod(p, dtype=np.uint64), np.cumprod(q, dtype=np.uint64)
    return _POWS["p"], _POWS["q"]


def _word_spans(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end byte offsets of the words in ``data`` and their 64-bit polynomial hashes.

    The hash of bytes c_0..c_{m-1} is sum_j c_j P^(m-1-j) modulo 2**64, computed for all
    words at once from one prefix sum: S_i = sum_{j<i} c_j P^-j, hash = P^(e-1) (S_e - S_s).
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    isw = _IS_WORD[arr]
    edges = np.diff(isw.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return starts, ends, np.zeros(0, dtype=np.uint64)
    p, q = _powers(arr.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.empty(arr.size + 1, dtype=np.uint64)
        prefix[0] = 0
        np.cumsum(arr.astype(np.uint64) * q[: arr.size], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * p[ends - 1]
    return starts, ends, h


class Featurizer:
    """Texts to hashed feature ids, grouped per text (the ``input``/``offsets`` of an EmbeddingBag).

    Vectorized: a chunk of texts is lowercased and encoded as one byte string; word
    boundaries, word hashes (one prefix sum) and n-gram hashes are NumPy array operations,
    with no Python object per word. Character n-grams (optional) are computed per distinct
    word in Python and cached, so they are slower.

    Parameters
    ----------
    buckets : int
        Size of the hashed feature space (rows of the embedding table).
    word_ngrams : int
        1: unigrams; 2: unigrams and bigrams; 3: and trigrams.
    char_ngrams : (int, int) or None
        Inclusive range of character n-gram lengths of each word, or ``None``.
    """

    def __init__(self, buckets: int, word_ngrams: int = 2, char_ngrams: tuple[int, int] | None = None):
        self.buckets = int(buckets)
        self.word_ngrams = int(word_ngrams)
        self.char_ngrams = None if char_ngrams is None else (int(char_ngrams[0]), int(char_ngrams[1]))
        self._char_cache: dict[bytes, np.ndarray] = {}

    def _char_hashes(self, word: bytes) -> np.ndarray:
        lo, hi = self.char_ngrams
        chars = f"<{word.decode('utf-8')}>"
        out = [zlib.crc32(b"\x01" + chars[i : i + n].encode("utf-8"))
               for n in range(lo, hi + 1) for i in range(0, len(chars) - n + 1)]
        return np.asarray(out, dtype=np.uint64)

    def transform(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Feature ids of each text.

        Parameters
        ----------
        texts : sequence of str

        Returns
        -------
        ids : ndarray of int64
            Feature ids in ``[0, buckets)``, those of text 0 first, then text 1, ...
        offsets : ndarray of int64, shape (len(texts),)
            Where each text's ids start (a text with no word has an empty range).
        """
        n = len(texts)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        id_parts, count_parts = [], []
        start, size = 0, 0
        for i, t in enumerate(texts):
            size += len(t) + 1
            if size >= _CHUNK_BYTES or i == n - 1:
                ids, counts = self._transform_chunk(texts[start : i + 1])
                id_parts.append(ids)
                count_parts.append(counts)
                start, size = i + 1, 0
        ids = np.concatenate(id_parts)
        counts = np.concatenate(count_parts)
        offsets = np.zeros(n, dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        return ids, offsets

    def _transform_chunk(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(texts)
        # \x00 is not a word byte: it ends each text (a text's own \x00 would only split a word)
        joined = _normalize("\x00".join(texts) + "\x00")
        data = joined.encode("utf-8", errors="replace")
        seps = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0)
        if seps.size != n:  # texts containing \x00: locate the boundaries from each text's length
            seps = np.cumsum([len(_normalize(t).encode("utf-8", errors="replace")) + 1 for t in texts]) - 1
        starts, ends, wh = _word_spans(data)
        doc = np.searchsorted(seps, starts)
        wh = _splitmix64(wh)
        parts_ids, parts_doc = [wh], [doc]
        with np.errstate(over="ignore"):
            acc = wh
            for k in range(1, self.word_ngrams):
                m = wh.size - k
                if m <= 0:
                    break
                # acc[i] holds the hash of the k-gram starting at word i; extend it by word i + k
                acc = acc[:m] * _MIX + wh[k : k + m]
                pos = np.flatnonzero(doc[:m] == doc[k : k + m])
                parts_ids.append(acc[pos] + np.uint64(k))
                parts_doc.append(doc[pos])
        if self.char_ngrams is not None and starts.size:
            cc = self._char_cache
            if len(cc) > 1_000_000:
                cc.clear()
            words = [data[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
            for w in set(words).difference(cc):
                cc[w] = self._char_hashes(w)
            grams = [cc[w] for w in words]
            lengths = np.fromiter(map(len, grams), dtype=np.int64, count=len(grams))
            parts_ids.append(np.concatenate(grams) ^ np.uint64(0xA5A5A5A5A5A5A5A5))
            parts_doc.append(np.repeat(doc, lengths))
        ids = (_splitmix64(np.concatenate(parts_ids)) % np.uint64(self.buckets)).astype(np.int64)
        docs = np.concatenate(parts_doc)
        order = np.argsort(docs, kind="stable")  # sorted runs: timsort merges them in linear time
        return ids[order], np.bincount(docs, minlength=n)


def as_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__}, not str")
    return out

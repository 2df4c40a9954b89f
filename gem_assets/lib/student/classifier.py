"""A fastText-style student that labels documents without embedding them.

The teacher (sentence embeddings + GEM) is expensive; the student is a linear model over
hashed n-grams, distilled from the teacher's soft assignments, cheap enough to label every
document of every shard.

Model
-----
``text -> hashed features -> EmbeddingBag(buckets, dim, mode="mean") -> Linear(dim, K)``.

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

Where the time goes (BBC articles, ~2,200 characters, 2 shared CPU cores): a first version
with a regex split into Python strings and a per-word dictionary of CRC-32s featurized
~2,900 docs/s (regex 45%, per-word hashing 35%); the byte-level NumPy version replaced both.

Empty texts
-----------
A text with no word (empty, whitespace or punctuation only) has an empty bag; its bag vector
is defined as zero, so its logits are the output layer's bias alone: its prediction is
``softmax(bias)``, a learnt class prior, the same for every such text.

Training
--------
``fit(texts, targets)``: ``targets`` of shape (N,) are hard labels (cross-entropy); of shape
(N, K) they are the teacher's soft assignments, each row on the simplex, and the loss is
``KL(teacher || student)`` (plus ``hard_weight`` times the cross-entropy with the teacher's
argmax, default 0). Mini-batches: sparse Adagrad on the embedding table (only the rows a batch
touches are updated, so the cost of a step does not grow with ``buckets``, and each row has its
own step size), Adam on the small output layer; both learning rates decay linearly to zero, as
in fastText. Measured alternatives: sparse Adam's step took 5x the rest of a training step
together; sparse SGD needed about 20 epochs for the agreement Adagrad reaches in 1-2. Seeded: the same
``random_state`` and data give the same weights (on the same device and thread count).

Persistence
-----------
``save(dir)`` writes ``model.safetensors`` (embedding, output weight and bias) and
``config.json`` (parameters, hashing scheme, training history); ``load(dir)`` reads them
back with safetensors: nothing is unpickled.
"""

from __future__ import annotations

import math
import re
import time
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["StudentClassifier", "Featurizer", "tokenize", "label_parquet", "confusion_matrix", "confusion_png",
           "share_kl", "HASH_SCHEME"]

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


def _as_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__}, not str")
    return out


class StudentClassifier:
    """fastText-style document classifier in torch, distilled from a teacher.

    Parameters
    ----------
    n_classes : int
        Number of classes (teacher domains), >= 2.
    dim : int
        Embedding dimension.
    buckets : int
        Hashed feature space size.
    word_ngrams : int
        Longest word n-gram (1, 2 or 3).
    char_ngrams : (int, int) or None
        Character n-gram lengths, e.g. ``(3, 5)``; ``None`` (default) for none.
    epochs : int
        Passes over the training data.
    lr : float
        Initial learning rate of sparse Adagrad on the embedding table (decays linearly to 0).
    out_lr : float
        Initial learning rate of Adam on the output layer (decays linearly to 0).
    batch_size : int
        Training mini-batch size (texts).
    hard_weight : float
        Weight of the cross-entropy with the teacher's argmax added to the KL loss (soft
        targets only).
    predict_batch_size : int
        Texts per batch at inference.
    random_state : int or None
        Seed of the initialization and the shuffling.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).

    Attributes
    ----------
    history_ : list of dict
        One record per epoch: ``epoch``, ``loss``, ``train_agreement`` (top-1 agreement
        with the targets' argmax), ``seconds`` and, with ``eval_set``, ``eval_loss`` and
        ``eval_agreement``.
    """

    def __init__(self, n_classes: int, *, dim: int = 64, buckets: int = 1 << 20, word_ngrams: int = 2,
                 char_ngrams: tuple[int, int] | None = None, epochs: int = 10, lr: float = 0.5,
                 out_lr: float = 0.1, batch_size: int = 64, hard_weight: float = 0.0, predict_batch_size: int = 2048,
                 random_state: int | None = None, device: str = "cpu"):
        if int(n_classes) != n_classes or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if dim < 1 or buckets < 1 or epochs < 1 or batch_size < 1 or predict_batch_size < 1:
            raise ValueError("dim, buckets, epochs, batch_size and predict_batch_size must be >= 1")
        if word_ngrams not in (1, 2, 3):
            raise ValueError(f"word_ngrams must be 1, 2 or 3, got {word_ngrams!r}")
        if char_ngrams is not None:
            lo, hi = char_ngrams
            if not (1 <= lo <= hi):
                raise ValueError(f"char_ngrams must be (min, max) with 1 <= min <= max, got {char_ngrams!r}")
            char_ngrams = (int(lo), int(hi))
        for name, value in (("lr", lr), ("out_lr", out_lr)):
            if not (value > 0) or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if hard_weight < 0:
            raise ValueError(f"hard_weight must be >= 0, got {hard_weight!r}")
        if device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        self.n_classes = int(n_classes)
        self.dim = int(dim)
        self.buckets = int(buckets)
        self.word_ngrams = int(word_ngrams)
        self.char_ngrams = char_ngrams
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.out_lr = float(out_lr)
        self.batch_size = int(batch_size)
        self.hard_weight = float(hard_weight)
        self.predict_batch_size = int(predict_batch_size)
        self.random_state = random_state
        self.device = device
        self.featurizer = Featurizer(self.buckets, self.word_ngrams, self.char_ngrams)
        self.history_: list[dict] = []
        self._embedding = None
        self._linear = None

    # ------------------------------------------------------------------ helpers
    def get_params(self) -> dict:
        """Constructor parameters (JSON-serialisable)."""
        return {
            "n_classes": self.n_classes, "dim": self.dim, "buckets": self.buckets,
            "word_ngrams": self.word_ngrams,
            "char_ngrams": list(self.char_ngrams) if self.char_ngrams else None,
            "epochs": self.epochs, "lr": self.lr, "out_lr": self.out_lr, "batch_size": self.batch_size,
            "hard_weight": self.hard_weight, "predict_batch_size": self.predict_batch_size,
            "random_state": self.random_state, "device": self.device,
        }

    def _torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available")
        return torch.device(self.device)

    def _build(self, generator):
        import torch

        dev = self._torch_device()
        emb = torch.nn.EmbeddingBag(self.buckets, self.dim, mode="mean", sparse=True)
        lin = torch.nn.Linear(self.dim, self.n_classes)
        with torch.no_grad():
            bound = 1.0 / self.dim
            emb.weight.uniform_(-bound, bound, generator=generator)
            lin.weight.zero_()
            lin.bias.zero_()
        self._embedding, self._linear = emb.to(dev), lin.to(dev)

    def _check_fitted(self):
        if self._embedding is None:
            raise ValueError("this StudentClassifier is not fitted yet: call fit() or load()")

    def _validate_targets(self, targets, n: int) -> tuple[np.ndarray, bool]:
        y = np.asarray(targets)
        if y.shape[0:1] != (n,):
            raise ValueError(f"{n} texts but {y.shape[0] if y.ndim else 0} targets")
        if y.ndim == 1:
            if y.dtype.kind not in "iu":
                if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                    y = y.astype(np.int64)
                else:
                    raise ValueError(f"hard targets must be integer class labels, got dtype {y.dtype}")
            y = y.astype(np.int64)
            if n and (y.min() < 0 or y.max() >= self.n_classes):
                raise ValueError(f"hard targets must lie in [0, {self.n_classes}); got min {y.min()}, max {y.max()}")
            return y, False
        if y.ndim == 2:
            if y.shape[1] != self.n_classes:
                raise ValueError(f"soft targets have {y.shape[1]} columns but n_classes={self.n_classes}")
            y = y.astype(np.float64)
            if not np.all(np.isfinite(y)):
                raise ValueError("soft targets contain NaN or infinite values")
            if np.any(y < -1e-9):
                raise ValueError("soft targets must be non-negative (rows on the probability simplex)")
            sums = y.sum(axis=1)
            bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
            if bad.size:
                raise ValueError(f"soft target rows must sum to 1; row {bad[0]} sums to {sums[bad[0]]:.6g} "
                                 f"({bad.size} such rows)")
            y = np.clip(y, 0.0, None)
            return (y / y.sum(axis=1, keepdims=True)).astype(np.float32), True
        raise ValueError(f"targets must be of shape (N,) or (N, K), got {y.shape}")

    def _logits(self, ids, offsets):
        import torch

        dev = self._embedding.weight.device
        bag = self._embedding(torch.from_numpy(ids).to(dev), torch.from_numpy(offsets).to(dev))
        return self._linear(bag)

    # ------------------------------------------------------------------ training
    def fit(self, texts, targets, *, eval_set=None, callback=None) -> "StudentClassifier":
        """Train on texts and hard (N,) or soft (N, K) targets.

        Parameters
        ----------
        texts : sequence of str
        targets : array of shape (N,) or (N, K)
            Class labels in ``[0, n_classes)``, or rows on the simplex (the teacher's
            posterior), trained with KL.
        eval_set : (texts, targets), optional
            Evaluated after every epoch (``eval_loss``, ``eval_agreement`` in ``history_``).
        callback : callable, optional
            Called with each epoch's history record.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Mismatched lengths, labels out of range, soft rows off the simplex, no texts.
        """
        import torch
        import torch.nn.functional as F

        texts = _as_texts(texts)
        n = len(texts)
        if n == 0:
            raise ValueError("fit needs at least one text")
        y, soft = self._validate_targets(targets, n)
        eval_data = None
        if eval_set is not None:
            etexts = _as_texts(eval_set[0])
            ey, esoft = self._validate_targets(eval_set[1], len(etexts))
            eval_data = (etexts, ey, esoft)

        seed = self.random_state
        gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (1 << 63)))
        rng = np.random.default_rng(seed)
        self._build(gen)
        dev = self._embedding.weight.device
        ids_all, offsets_all = self.featurizer.transform(texts)
        counts = np.diff(np.append(offsets_all, ids_all.size))
        target_t = torch.from_numpy(y).to(dev)
        hard_t = target_t.argmax(dim=1) if soft else target_t
        # sparse Adagrad on the embedding table (each row gets its own step size: rare n-grams
        # move fast, frequent ones settle), Adam on the small output layer. Measured on BBC:
        # sparse Adam's step took 5x the rest of a training step; sparse SGD needed 20 epochs
        # to reach the held-out agreement Adagrad reaches in 1-2.
        opt_e = torch.optim.Adagrad(list(self._embedding.parameters()), lr=self.lr)
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        opt_l = torch.optim.Adam(list(self._linear.parameters()), lr=self.out_lr)
        n_batches = math.ceil(n / self.batch_size)
        total_steps = self.epochs * n_batches
        step = 0
        self.history_ = []
        for epoch in range(1, self.epochs + 1):
            t0 = time.perf_counter()
            self._embedding.train()
            perm = rng.permutation(n)
            loss_sum, agree = 0.0, 0
            for b in range(n_batches):
                idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
                # gather the batch's features from the precomputed CSR layout
                starts, lens = offsets_all[idx], counts[idx]
                bo = np.zeros(idx.size, dtype=np.int64)
                np.cumsum(lens[:-1], out=bo[1:])
                gather = np.repeat(starts - bo, lens) + np.arange(int(lens.sum()))
                logits = self._logits(ids_all[gather], bo)
                logp = F.log_softmax(logits, dim=1)
                it = torch.from_numpy(idx).to(dev)
                if soft:
                    loss = F.kl_div(logp, target_t[it], reduction="batchmean")
                    if self.hard_weight:
                        loss = loss + self.hard_weight * F.nll_loss(logp, hard_t[it])
                else:
                    loss = F.nll_loss(logp, target_t[it])
                decay = max(0.0, 1.0 - step / total_steps)
                for g in opt_e.param_groups:
                    g["lr"] = self.lr * decay
                for g in opt_l.param_groups:
                    g["lr"] = self.out_lr * decay
                opt_e.zero_grad()
                opt_l.zero_grad()
                loss.backward()
                opt_e.step()
                opt_l.step()
                step += 1
                loss_sum += float(loss.detach()) * idx.size
                agree += int((logp.detach().argmax(dim=1) == hard_t[it]).sum())
            rec = {"epoch": epoch, "loss": loss_sum / n, "train_agreement": agree / n,
                   "seconds": time.perf_counter() - t0}
            if eval_data is not None:
                rec.update(self._evaluate(*eval_data))
            self.history_.append(rec)
            if callback is not None:
                callback(rec)
        return self

    def _evaluate(self, texts, y, soft) -> dict:
        proba = self.predict_proba(texts)
        logp = np.log(np.clip(proba, 1e-12, None))
        if soft:
            loss = float(np.mean(np.sum(np.where(y > 0, y * (np.log(np.clip(y, 1e-12, None)) - logp), 0.0), axis=1)))
            hard = y.argmax(axis=1)
        else:
            loss = float(-np.mean(logp[np.arange(len(y)), y])) if len(y) else 0.0
            hard = y
        agreement = float(np.mean(proba.argmax(axis=1) == hard)) if len(y) else float("nan")
        return {"eval_loss": loss, "eval_agreement": agreement}

    # ------------------------------------------------------------------ inference
    def predict_proba(self, texts) -> np.ndarray:
        """Class probabilities, shape (N, n_classes), float32; batched by ``predict_batch_size``."""
        import torch

        self._check_fitted()
        texts = _as_texts(texts)
        out = np.empty((len(texts), self.n_classes), dtype=np.float32)
        self._embedding.eval()
        with torch.inference_mode():
            for s in range(0, len(texts), self.predict_batch_size):
                batch = texts[s : s + self.predict_batch_size]
                ids, offsets = self.featurizer.transform(batch)
                out[s : s + len(batch)] = torch.softmax(self._logits(ids, offsets), dim=1).cpu().numpy()
        return out

    def predict(self, texts) -> np.ndarray:
        """Most probable class of each text, shape (N,), int64."""
        return self.predict_proba(texts).argmax(axis=1).astype(np.int64)

    def predict_with_confidence(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, confidence)``: the argmax class and its probability."""
        proba = self.predict_proba(texts)
        labels = proba.argmax(axis=1).astype(np.int64)
        return labels, proba[np.arange(labels.size), labels].astype(np.float64)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into folder ``path`` (replaced atomically)."""
        from gem_assets.lib.io import storage

        self._check_fitted()
        path = storage.as_path(path)
        tensors = {
            "embedding": self._embedding.weight.detach().cpu().numpy(),
            "output_weight": self._linear.weight.detach().cpu().numpy(),
            "output_bias": self._linear.bias.detach().cpu().numpy(),
        }
        config = {"format": "gem-student", "version": 1, "hash_scheme": HASH_SCHEME,
                  "params": self.get_params(), "history": self.history_}
        with storage.atomic_dir(path) as tmp:
            storage.write_safetensors(tmp / "model.safetensors", tensors, metadata={"format": "gem-student"})
            storage.write_json(tmp / "config.json", config)
        return path

    @classmethod
    def load(cls, path, device: str | None = None) -> "StudentClassifier":
        """Load a model written by :meth:`save` (safetensors + JSON; nothing unpickled).

        Raises
        ------
        FileNotFoundError
            If the folder lacks ``config.json`` or ``model.safetensors``.
        ValueError
            If the files are not a student model of this hashing scheme.
        """
        import torch

        from gem_assets.lib.io import storage

        path = storage.as_path(path)
        cfg_path, st_path = path / "config.json", path / "model.safetensors"
        if not cfg_path.is_file() or not st_path.is_file():
            raise FileNotFoundError(f"no student model under {path} (config.json and model.safetensors)")
        config = storage.read_json(cfg_path)
        if config.get("format") != "gem-student":
            raise ValueError(f"{cfg_path} is not a gem-student model")
        if config.get("hash_scheme") != HASH_SCHEME:
            raise ValueError(f"{cfg_path} uses hashing scheme {config.get('hash_scheme')!r}, "
                             f"this code uses {HASH_SCHEME!r}")
        params = dict(config["params"])
        if device is not None:
            params["device"] = device
        params["char_ngrams"] = tuple(params["char_ngrams"]) if params.get("char_ngrams") else None
        model = cls(**params)
        tensors = storage.read_safetensors(st_path)
        emb, w, b = tensors["embedding"], tensors["output_weight"], tensors["output_bias"]
        if emb.shape != (model.buckets, model.dim) or w.shape != (model.n_classes, model.dim) \
                or b.shape != (model.n_classes,):
            raise ValueError(f"tensor shapes in {st_path} do not match config.json")
        model._build(torch.Generator().manual_seed(0))
        with torch.no_grad():
            model._embedding.weight.copy_(torch.from_numpy(emb))
            model._linear.weight.copy_(torch.from_numpy(w))
            model._linear.bias.copy_(torch.from_numpy(b))
        model.history_ = list(config.get("history", []))
        return model


def label_parquet(model: StudentClassifier, src, dest, *, text_column: str = "text", id_column: str = "id",
                  batch_rows: int = 8192) -> dict:
    """Label every row of a Parquet file with the student, streaming it in batches.

    Reads ``src`` one record batch at a time (only the id and text columns) and appends each
    labelled batch to a Parquet file written beside ``dest`` and moved into place at the end, so
    memory holds one batch, whatever the file's size, and a reader never sees half a file.

    Output columns: ``id`` (str), ``domain`` (int64, the argmax class), ``confidence``
    (float64, its probability), ``n_bytes`` (UTF-8 bytes of the text) and ``n_tokens``
    (whitespace-separated words of the text: ``len(text.split())``).

    Parameters
    ----------
    model : StudentClassifier
        Fitted student.
    src, dest : path
        Input Parquet (with ``id_column`` and ``text_column``) and output Parquet.
    text_column, id_column : str
        Column names in ``src``.
    batch_rows : int
        Rows per batch.

    Returns
    -------
    dict
        ``n`` (rows labelled), ``counts`` (documents per domain), ``bytes`` and ``tokens`` per
        domain, ``seconds`` and ``docs_per_s``.
    """
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gem_assets.lib.io import storage

    k = model.n_classes
    counts = np.zeros(k, dtype=np.int64)
    nbytes = np.zeros(k, dtype=np.int64)
    ntokens = np.zeros(k, dtype=np.int64)
    schema = pa.schema([("id", pa.string()), ("domain", pa.int64()), ("confidence", pa.float64()),
                        ("n_bytes", pa.int64()), ("n_tokens", pa.int64())])
    t0 = time.perf_counter()
    n = 0
    with storage.atomic_path(dest) as tmp:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as writer, storage.open_binary(src) as fsrc:
            pf = pq.ParquetFile(fsrc)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[id_column, text_column]):
                df = pl.from_arrow(batch)
                texts = df[text_column].fill_null("").cast(pl.String).to_list()
                labels, conf = model.predict_with_confidence(texts)
                sizes = df.select(pl.col(text_column).fill_null("").str.len_bytes().cast(pl.Int64).alias("b"),
                                  pl.col(text_column).fill_null("").str.count_matches(r"\S+").cast(pl.Int64).alias("t"))
                b, tk = sizes["b"].to_numpy(), sizes["t"].to_numpy()
                counts += np.bincount(labels, minlength=k)
                nbytes += np.bincount(labels, weights=b, minlength=k).astype(np.int64)
                ntokens += np.bincount(labels, weights=tk, minlength=k).astype(np.int64)
                out = pa.table({"id": pa.array(df[id_column].cast(pl.String).to_list(), pa.string()),
                                "domain": pa.array(labels, pa.int64()), "confidence": pa.array(conf, pa.float64()),
                                "n_bytes": pa.array(b, pa.int64()), "n_tokens": pa.array(tk, pa.int64())},
                               schema=schema)
                writer.write_table(out)
                n += len(texts)
    from gem_assets.lib.util.allocator import release_memory

    release_memory()  # a long-lived process labels one shard after another: give the freed pages back
    seconds = time.perf_counter() - t0
    return {"n": n, "counts": counts.tolist(), "bytes": nbytes.tolist(), "tokens": ntokens.tolist(),
            "seconds": seconds, "docs_per_s": n / seconds if seconds > 0 else 0.0}


def confusion_matrix(teacher: np.ndarray, student: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: row = teacher's domain, column = student's domain."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(teacher, dtype=np.int64), np.asarray(student, dtype=np.int64)), 1)
    return m


def confusion_png(matrix: np.ndarray, title: str = "student vs teacher (held out)") -> bytes:
    """The confusion matrix as a PNG heat map, rows normalized (each teacher domain sums to 1)."""
    from gem_assets.lib.util.plots import _figure, _png

    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    fig = _figure(max(3.5, 0.3 * k + 2.0), max(3.0, 0.3 * k + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(rows, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([str(i) for i in range(k)], fontsize=7)
    ax.set_yticklabels([str(i) for i in range(k)], fontsize=7)
    ax.set_xlabel("student domain")
    ax.set_ylabel("teacher domain")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the teacher's domain")
    return _png(fig)


def share_kl(counts, reference_shares, smoothing: float = 0.5) -> float:
    """KL(observed shares || reference shares) in nats.

    The observed shares are the counts smoothed with ``smoothing`` per domain (so a domain
    with no document gives a finite value); reference shares are floored at 1e-6.
    """
    c = np.asarray(counts, dtype=np.float64)
    p = (c + smoothing) / (c.sum() + smoothing * c.size)
    q = np.clip(np.asarray(reference_shares, dtype=np.float64), 1e-6, None)
    q = q / q.sum()
    return float(np.sum(p * (np.log(p) - np.log(q))))

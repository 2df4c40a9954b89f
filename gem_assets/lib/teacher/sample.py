"""The GEM teacher on the embedded sample: fit, summary, checks and plain-format outputs.

:func:`fit_teacher` fits :class:`gem_assets.lib.teacher.gem.GEM`; :func:`summarize_teacher` turns
the fitted model into tables (domains, assignments, MM history), checks and pictures;
:func:`write_teacher_outputs` writes them under ``outputs/teacher/`` so that a user needs
no Dagster API to consume them::

    outputs/teacher/model/model.safetensors, model.json   the fitted GEM (no pickle)
    outputs/teacher/means.npy            (K, d) float64 unit mean directions (isotropy space)
    outputs/teacher/concentrations.npy   (K,) kappa
    outputs/teacher/center.npy           (d,) isotropy centre (when isotropy is on)
    outputs/teacher/domains.csv          domain, n_docs, hard_share, soft_share, kappa[, top_source...]
    outputs/teacher/shares.json          soft and hard shares, effective K, dead domains
    outputs/teacher/assignments.parquet  shard, id[, source], domain, confidence of each sampled document
    outputs/teacher/history.csv          one row per MM iteration
    outputs/teacher/summary.json         parameters, final objective, checks, NMI vs source
    outputs/teacher/shares.png, objective.png
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from gem_assets.lib.util import plots
from gem_assets.lib.io import storage

__all__ = ["fit_teacher", "TeacherSummary", "summarize_teacher", "write_teacher_outputs"]

#: History fields logged per MM iteration (those the fit records).
HISTORY_METRICS = (
    "objective",
    "loglik",
    "assignment_entropy",
    "balance_term",
    "balance_entropy",
    "effective_k",
    "min_share",
    "max_share",
    "dead_domains",
    "mean_kappa",
    "inner_steps",
    "seconds",
)


def fit_teacher(vectors: np.ndarray, *, k: int, balance: float | None, max_iter: int, tol: float,
                n_init: int, seed: int, isotropy: bool = True, device: str = "auto"):
    """Fit GEM on unit-norm vectors.

    Parameters
    ----------
    vectors : ndarray of shape (N, d)
        The teacher sample.
    k : int
        Number of domains (2 <= k <= N).
    balance : float or None
        GEM's balance knob; ``None`` keeps the library default.
    max_iter, tol, n_init, seed, isotropy : see :class:`gem_assets.lib.teacher.gem.GEM`.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    GEM
        The fitted model.

    Raises
    ------
    ValueError
        If the sample is smaller than ``k``.
    """
    from gem_assets.lib.teacher.gem import GEM

    n = int(vectors.shape[0])
    if n < k:
        raise ValueError(
            f"the teacher sample has {n} documents, fewer than K={k} domains: lower GEM_K or add documents"
        )
    kwargs = dict(n_clusters=k, max_iter=max_iter, tol=tol, n_init=n_init, isotropy=isotropy,
                  random_state=seed, device=device)
    if balance is not None:
        kwargs["balance"] = balance
    return GEM(**kwargs).fit(vectors)


@dataclass
class TeacherSummary:
    """Tables, checks and pictures of a fitted teacher."""

    domains: pl.DataFrame
    assignments: pl.DataFrame
    history: pl.DataFrame
    summary: dict
    checks: dict[str, tuple[bool, str]]
    pictures: dict[str, bytes] = field(default_factory=dict)


def summarize_teacher(model, vectors: np.ndarray, sample: pl.DataFrame, params: dict) -> TeacherSummary:
    """Summarize a fitted GEM on its training sample.

    Parameters
    ----------
    model : GEM
        Fitted on ``vectors``.
    vectors : ndarray of shape (N, d)
        The sample it was fitted on.
    sample : DataFrame
        ``shard``, ``id`` and optionally ``source`` of each row of ``vectors``.
    params : dict
        Fit parameters to record (K, balance, profile, ...).

    Returns
    -------
    TeacherSummary
        ``checks`` holds ``no_dead_domain`` and ``objective_non_decreasing`` as
        ``(passed, detail)``.
    """
    from gem_assets.lib.util import metrics

    k = int(model.n_clusters)
    labels = np.asarray(model.labels_, dtype=np.int64)
    proba = model.predict_proba(vectors)
    confidence = proba[np.arange(labels.size), labels]
    soft = np.asarray(model.shares_, dtype=np.float64)
    hard = metrics.shares_from_labels(labels, k)
    kappa = np.asarray(model.concentrations_, dtype=np.float64)
    counts = np.bincount(labels, minlength=k)

    assignments = sample.with_columns(
        pl.Series("domain", labels, dtype=pl.Int64),
        pl.Series("confidence", confidence.astype(np.float64)),
    )
    domains = pl.DataFrame(
        {
            "domain": np.arange(k, dtype=np.int64),
            "n_docs": counts.astype(np.int64),
            "hard_share": hard,
            "soft_share": soft,
            "kappa": kappa,
        }
    )
    has_source = "source" in sample.columns and sample["source"].null_count() < sample.height
    nmi_source = None
    if has_source:
        top = (
            assignments.group_by("domain", "source").len()
            .sort(["domain", "len", "source"], descending=[False, True, False])
            .group_by("domain", maintain_order=True)
            .agg(pl.col("source").first().alias("top_source"),
                 (pl.col("len").first() / pl.col("len").sum()).alias("top_source_share"))
        )
        domains = domains.join(top, on="domain", how="left")
        src = assignments["source"].fill_null("").to_list()
        nmi_source = float(metrics.nmi(labels, src))

    history_rows = [{m: h.get(m) for m in ("iteration",) + HISTORY_METRICS} for h in model.history_]
    history = pl.DataFrame(history_rows, infer_schema_length=None)
    objective = np.array([h["objective"] for h in model.history_], dtype=np.float64)
    drops = np.diff(objective)
    worst = float(drops.min()) if drops.size else 0.0
    tol = 1e-9 * max(1.0, float(np.abs(objective).max(initial=0.0)))
    n_dead = int(metrics.dead_domains(hard))
    checks = {
        "no_dead_domain": (
            n_dead == 0,
            f"{n_dead} of {k} domains below 1/(10K) of the documents (smallest hard share {hard.min():.4f})",
        ),
        "objective_non_decreasing": (
            worst >= -tol,
            f"{len(objective)} recorded objectives; largest step-to-step change down {max(0.0, -worst):.3e}",
        ),
    }
    summary = {
        "params": params,
        "n_documents": int(labels.size),
        "dim": int(vectors.shape[1]),
        "k": k,
        "gamma": float(getattr(model, "gamma_", float("nan"))),
        "final_objective": float(model.objective_),
        "n_iter": int(len(model.history_) - 1),
        "converged": bool(getattr(model, "converged_", False)),
        "soft_shares": soft.tolist(),
        "hard_shares": hard.tolist(),
        "effective_k": float(metrics.effective_k(hard)),
        "share_entropy": float(metrics.share_entropy(hard)),
        "max_share": float(metrics.max_share(hard)),
        "dead_domains": n_dead,
        "nmi_vs_source": nmi_source,
        "checks": {name: {"passed": ok, "detail": d} for name, (ok, d) in checks.items()},
    }
    pictures = {
        "shares.png": plots.share_bar_chart(soft, hard, title=f"GEM domain shares (K={k}, N={labels.size})"),
        "objective.png": plots.objective_curve(model.history_, title="GEM MM objective per iteration"),
    }
    return TeacherSummary(domains=domains, assignments=assignments, history=history, summary=summary,
                          checks=checks, pictures=pictures)


def write_teacher_outputs(out_dir: str | Path, model, result: TeacherSummary) -> dict[str, Path]:
    """Write the teacher's user-facing outputs (plain formats) as one atomically replaced folder.

    Parameters
    ----------
    out_dir : path, URL or UPath
        ``outputs/teacher``.
    model : GEM
        The fitted model.
    result : TeacherSummary
        From :func:`summarize_teacher`.

    Returns
    -------
    dict of str to Path
        File name to final path.
    """
    out_dir = storage.as_path(out_dir)
    names: list[str] = []
    with storage.atomic_dir(out_dir) as tmp:
        model.save(tmp / "model")
        for f in (tmp / "model").iterdir():  # the model's own atomic writes leave 0600 files
            os.chmod(f, 0o644)
        storage.write_npy(tmp / "means.npy", np.asarray(model.means_, dtype=np.float64))
        storage.write_npy(tmp / "concentrations.npy", np.asarray(model.concentrations_, dtype=np.float64))
        names += ["model", "means.npy", "concentrations.npy"]
        if getattr(model, "center_", None) is not None:
            storage.write_npy(tmp / "center.npy", np.asarray(model.center_, dtype=np.float64))
            names.append("center.npy")
        result.domains.write_csv(tmp / "domains.csv")
        result.history.write_csv(tmp / "history.csv")
        result.assignments.write_parquet(tmp / "assignments.parquet", compression="zstd")
        storage.write_json(
            tmp / "shares.json",
            {k: result.summary[k] for k in ("soft_shares", "hard_shares", "effective_k", "dead_domains", "max_share")},
        )
        storage.write_json(tmp / "summary.json", result.summary)
        names += ["domains.csv", "history.csv", "assignments.parquet", "shares.json", "summary.json"]
        for name, png in result.pictures.items():
            (tmp / name).write_bytes(png)
            names.append(name)
    return {name: out_dir / name for name in names}

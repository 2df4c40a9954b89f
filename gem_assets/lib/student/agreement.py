"""How the student agrees with the teacher: the confusion matrix, its picture, and the share divergence."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "confusion_png", "share_kl"]


def confusion_matrix(teacher: np.ndarray, student: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: row = teacher's domain, column = student's domain."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(teacher, dtype=np.int64), np.asarray(student, dtype=np.int64)), 1)
    return m


def confusion_png(matrix: np.ndarray, title: str = "student vs teacher (held out)") -> bytes:
    """The confusion matrix as a PNG heat map, rows normalized (each teacher domain sums to 1)."""
    from gem_assets.lib.util.plots import _figure, _png

    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    fig = _figure(max(3.5, 0.3 * k + 2.0), max(3.0, 0.3 * k + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(rows, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([str(i) for i in range(k)], fontsize=7)
    ax.set_yticklabels([str(i) for i in range(k)], fontsize=7)
    ax.set_xlabel("student domain")
    ax.set_ylabel("teacher domain")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the teacher's domain")
    return _png(fig)


def share_kl(counts, reference_shares, smoothing: float = 0.5) -> float:
    """KL(observed shares || reference shares) in nats.

    The observed shares are the counts smoothed with ``smoothing`` per domain (so a domain
    with no document gives a finite value); reference shares are floored at 1e-6.
    """
    c = np.asarray(counts, dtype=np.float64)
    p = (c + smoothing) / (c.sum() + smoothing * c.size)
    q = np.clip(np.asarray(reference_shares, dtype=np.float64), 1e-6, None)
    q = q / q.sum()
    return float(np.sum(p * (np.log(p) - np.log(q))))

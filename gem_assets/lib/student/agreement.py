"""How the student agrees with the teacher: the confusion matrix, its picture, and the share divergence."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "confusion_png", "share_kl"]


def confusion_matrix(teacher: np.ndarray, student: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: row = teacher's domain, column = student's domain.

    scikit-learn's ``confusion_matrix`` over the labels 0..K-1, so that a domain neither side uses
    keeps its row and column of zeros (labels outside 0..K-1 are not counted).
    """
    from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

    return sklearn_confusion_matrix(teacher, student, labels=np.arange(k))


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

    The observed shares are p_k = (c_k + smoothing) / (n + K smoothing): ``smoothing`` pseudo-documents
    added to every domain, so a domain with no document gives a finite value. The reference shares are
    floored at 1e-6 and renormalized. The divergence is ``scipy.stats.entropy(p, q)`` (which normalizes
    both arguments to sum 1).
    """
    from scipy.stats import entropy

    c = np.asarray(counts, dtype=np.float64)
    q = np.clip(np.asarray(reference_shares, dtype=np.float64), 1e-6, None)
    return float(entropy(c + smoothing, q))

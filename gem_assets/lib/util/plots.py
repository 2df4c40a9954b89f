"""The pipeline's pictures, as PNG bytes (matplotlib, Agg backend, no display needed).

Teacher: :func:`share_bar_chart`, :func:`objective_curve`. Taxonomy: :func:`taxonomy_dendrogram`,
:func:`domain_map`. Mixing: :func:`weights_bar_chart`, :func:`weight_trajectory`,
:func:`values_bar_chart`. :func:`markdown_image` turns PNG bytes into a Markdown image with a base64
data URI, which the Dagster UI renders in materialization metadata.
"""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import numpy as np

__all__ = ["share_bar_chart", "objective_curve", "markdown_image", "taxonomy_dendrogram", "domain_map",
           "weights_bar_chart", "weight_trajectory", "values_bar_chart"]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def share_bar_chart(shares: Sequence[float], hard_shares: Sequence[float] | None = None,
                    title: str = "Domain shares") -> bytes:
    """Bar chart of the share of the corpus each domain receives.

    Parameters
    ----------
    shares : sequence of float
        Soft shares rho (sum to 1).
    hard_shares : sequence of float, optional
        Shares of the hard assignments, drawn as markers.
    title : str
        Figure title.

    Returns
    -------
    bytes
        PNG image. A dashed line marks the uniform share 1/K and a dotted one the
        dead-domain threshold 1/(10K).
    """
    s = np.asarray(shares, dtype=float)
    k = s.size
    fig = _figure(max(4.0, 0.35 * k + 2.0), 3.0)
    ax = fig.add_subplot()
    x = np.arange(k)
    ax.bar(x, s, color="#4C72B0", label="soft share ρ")
    if hard_shares is not None:
        ax.plot(x, np.asarray(hard_shares, dtype=float), "o", color="#DD8452", ms=4, label="hard share")
    if k:
        ax.axhline(1.0 / k, ls="--", lw=1, color="grey", label="uniform 1/K")
        ax.axhline(1.0 / (10 * k), ls=":", lw=1, color="#C44E52", label="dead < 1/(10K)")
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in x], fontsize=7)
    ax.set_xlabel("domain")
    ax.set_ylabel("share")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def objective_curve(history: Sequence[Mapping[str, float]], title: str = "MM objective") -> bytes:
    """The MM objective J per iteration, with effective K on a second axis.

    Parameters
    ----------
    history : sequence of dict
        Per-iteration records with at least ``objective`` (and optionally ``effective_k``).
    title : str
        Figure title.

    Returns
    -------
    bytes
        PNG image.
    """
    it = np.array([h.get("iteration", i) for i, h in enumerate(history)], dtype=float)
    obj = np.array([h.get("objective", np.nan) for h in history], dtype=float)
    fig = _figure(5.0, 3.0)
    ax = fig.add_subplot()
    ax.plot(it, obj, "-o", ms=2.5, color="#4C72B0", label="objective J")
    ax.set_xlabel("MM iteration")
    ax.set_ylabel("J")
    ax.set_title(title, fontsize=10)
    if history and "effective_k" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(it, [h.get("effective_k", np.nan) for h in history], "-", lw=1, color="#DD8452",
                 label="effective K")
        ax2.set_ylabel("effective K", color="#DD8452")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def markdown_image(png: bytes, alt: str) -> str:
    """A Markdown image with the PNG inlined as a base64 data URI."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def taxonomy_dendrogram(linkage, labels: Sequence[str], title: str = "GEM domain tree") -> bytes:
    """The taxonomy tree as a dendrogram (leaves: domains, labelled; heights: node dispersion).

    Parameters
    ----------
    linkage : array (K-1, 4)
        scipy linkage convention (``gem_assets.lib.taxonomy.build.agglomerate``).
    labels : sequence of str
        One label per domain.
    title : str
        Figure title.

    Returns
    -------
    bytes
        PNG image.
    """
    from scipy.cluster.hierarchy import dendrogram

    Z = np.asarray(linkage, dtype=float)
    k = Z.shape[0] + 1
    fig = _figure(7.5, max(3.0, 0.32 * k + 1.0))
    ax = fig.add_subplot()
    dendrogram(Z, labels=list(labels), orientation="right", ax=ax, color_threshold=0, above_threshold_color="#4C72B0",
               leaf_font_size=7)
    ax.set_xlabel("dispersion D (share-weighted cosine distance to the node direction)", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _shorten(label: str, max_chars: int) -> str:
    """``label`` cut to at most ``max_chars`` characters, an ellipsis marking the cut."""
    label = str(label)
    return label if len(label) <= max_chars else label[: max(1, max_chars - 1)].rstrip(" /") + "…"


def domain_map(means, shares: Sequence[float], labels: Sequence[str], title: str = "GEM domains, 2-D map",
               max_label_chars: int = 30) -> bytes:
    """Domain mean directions in 2-D (classical MDS of the unit means = their first two principal
    axes), one disc per domain with area proportional to its share, each labelled.

    Labels longer than ``max_label_chars`` are cut (with an ellipsis). They are placed greedily, the
    largest domain first: on the disc's centre if the label overlaps no label already placed, else at
    the first of 16 directions around the disc (farther out each round) where it overlaps none,
    joined to its disc by a thin line; when no position is free, the one that overlaps least.

    Parameters
    ----------
    means : array (K, d)
        Unit mean directions.
    shares : sequence of float
        Share of each domain.
    labels : sequence of str
        One label per domain (the pipeline passes ``"<id>: <GIS name>"``).
    title : str
        Figure title.
    max_label_chars : int
        Longest label drawn, in characters.

    Returns
    -------
    bytes
        PNG image; the axis labels give the share of the means' variance each axis keeps.
    """
    M = np.asarray(means, dtype=float)
    s = np.asarray(shares, dtype=float)
    C = M - M.mean(axis=0)
    U, sv, _ = np.linalg.svd(C, full_matrices=False)
    xy = U[:, :2] * sv[:2] if sv.size >= 2 else np.column_stack([U[:, 0] * sv[0], np.zeros(len(M))])
    var = sv ** 2 / max(float((sv ** 2).sum()), 1e-300)
    fig = _figure(8.0, 6.0)
    ax = fig.add_subplot()
    area = 3000.0 * s / max(float(s.max()), 1e-300)
    ax.scatter(xy[:, 0], xy[:, 1], s=area, alpha=0.45, color="#4C72B0", edgecolors="#1f3b63")
    ax.set_xlabel(f"axis 1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"axis 2 ({var[1]:.0%} of variance)" if var.size > 1 else "axis 2")
    ax.set_title(title + " (disc area ∝ share)", fontsize=10)
    ax.margins(0.2)
    _place_labels(fig, ax, xy, np.sqrt(area / np.pi), [_shorten(lab, max_label_chars) for lab in labels],
                  order=np.argsort(-s, kind="stable"))
    return _png(fig)


def _place_labels(fig, ax, xy, radius_pt, labels: Sequence[str], order) -> None:
    """Annotate point i of ``xy`` with ``labels[i]`` avoiding overlaps (see :func:`domain_map`).

    ``radius_pt`` is each disc's radius in points. The labels are left out of the layout, so placing
    them does not move the axes they were measured in.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the renderer that measures text, the one savefig uses
    fig.draw_without_rendering()  # fixes the layout, so that the extents measured below stay true
    renderer = canvas.get_renderer()
    box_ax = ax.get_window_extent(renderer)
    placed = []
    angles = np.deg2rad([90, 270, 0, 180, 45, 135, 315, 225, 20, 160, 340, 200, 65, 115, 295, 245])
    directions = [(float(np.cos(a)), float(np.sin(a))) for a in angles]

    def overlap(bb) -> float:
        area = 0.0
        for other in placed:
            w = min(bb.x1, other.x1) - max(bb.x0, other.x0)
            h = min(bb.y1, other.y1) - max(bb.y0, other.y0)
            if w > 0 and h > 0:
                area += w * h
        outside = (max(0.0, box_ax.x0 - bb.x0) + max(0.0, bb.x1 - box_ax.x1)
                   + max(0.0, box_ax.y0 - bb.y0) + max(0.0, bb.y1 - box_ax.y1))
        return area + 1e3 * outside

    def annotate(i, dx, dy, line):
        ha = "center" if abs(dx) < 1e-6 * (1 + abs(dy)) else ("left" if dx > 0 else "right")
        va = "center" if abs(dy) < 1e-6 * (1 + abs(dx)) else ("bottom" if dy > 0 else "top")
        text = ax.annotate(labels[i], tuple(xy[i]), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                           ha=ha, va=va, annotation_clip=False,
                           bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7),
                           arrowprops=dict(arrowstyle="-", lw=0.5, color="#1f3b63", shrinkA=0, shrinkB=0)
                           if line else None)
        text.set_in_layout(False)
        return text

    for i in order:
        r = float(radius_pt[i]) + 4.0
        candidates = [(0.0, 0.0)] + [(dx * (r + step), dy * (r + step)) for step in (0.0, 14.0, 30.0, 50.0, 75.0)
                                     for dx, dy in directions]
        best = None
        for dx, dy in candidates:
            text = annotate(i, dx, dy, line=False)  # measured without its line
            bb = text.get_window_extent(renderer).expanded(1.05, 1.2)
            text.remove()
            cost = overlap(bb)
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), bb)
            if cost == 0.0:
                break
        (dx, dy), bb = best[1], best[2]
        annotate(i, dx, dy, line=(dx, dy) != (0.0, 0.0))
        placed.append(bb)


def weights_bar_chart(weights: Sequence[float], natural: Sequence[float], labels: Sequence[str],
                      title: str = "Mixture weights vs natural shares") -> bytes:
    """Grouped bars of mixture weights beside each domain's natural token share.

    Parameters
    ----------
    weights, natural : sequence of float
        Mixture weight and natural share of each domain (each sums to 1).
    labels : sequence of str
        Domain names.
    title : str

    Returns
    -------
    bytes
        PNG image.
    """
    w = np.asarray(weights, dtype=float)
    n = np.asarray(natural, dtype=float)
    k = w.size
    fig = _figure(max(4.0, 0.45 * k + 2.0), 3.0)
    ax = fig.add_subplot()
    x = np.arange(k)
    ax.bar(x - 0.2, n, width=0.4, color="#BBBBBB", label="natural share")
    ax.bar(x + 0.2, w, width=0.4, color="#4C72B0", label="weight")
    ax.set_xticks(x)
    ax.set_xticklabels([str(s) for s in labels], fontsize=7)
    ax.set_xlabel("domain")
    ax.set_ylabel("share of tokens")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def weight_trajectory(trajectory, labels: Sequence[str], title: str = "Domain weights per step") -> bytes:
    """Lines of each domain's weight over the steps (e.g. DoReMi's smoothed weights).

    Parameters
    ----------
    trajectory : array (steps, K)
    labels : sequence of str
    title : str

    Returns
    -------
    bytes
        PNG image.
    """
    T = np.asarray(trajectory, dtype=float)
    fig = _figure(6.5, 3.2)
    ax = fig.add_subplot()
    steps = np.arange(1, T.shape[0] + 1)
    for j, lab in enumerate(labels):
        ax.plot(steps, T[:, j], lw=1, label=str(lab))
    ax.set_xlabel("step")
    ax.set_ylabel("weight")
    ax.set_title(title, fontsize=10)
    if len(labels) <= 20:
        ax.legend(fontsize=6, ncol=2, loc="upper right")
    return _png(fig)


def values_bar_chart(values: Sequence[float], labels: Sequence[str], title: str = "Value per domain",
                     ylabel: str = "value") -> bytes:
    """One bar per domain (e.g. DoReMi's mean excess loss per domain).

    Parameters
    ----------
    values : sequence of float
        One value per domain.
    labels : sequence of str
        Domain names.
    title, ylabel : str

    Returns
    -------
    bytes
        PNG image.
    """
    v = np.asarray(values, dtype=float)
    k = v.size
    fig = _figure(max(4.0, 0.35 * k + 2.0), 3.0)
    ax = fig.add_subplot()
    x = np.arange(k)
    ax.bar(x, v, width=0.7, color="#DD8452")
    ax.set_xticks(x)
    ax.set_xticklabels([str(s) for s in labels], fontsize=7)
    ax.set_xlabel("domain")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)

"""The GIS taxonomy: named domains, a hierarchy over them, exemplars, and the JSON tree.

Hierarchy (:func:`agglomerate`): agglomerative merging of the domains' mean directions on the
sphere, weighted by share. A node S (a set of domains) is summarized by its share-weighted resultant
``v_S = sum_{k in S} s_k mu_k``; its mean direction is ``m_S = v_S / ||v_S||`` and its dispersion

    D(S) = sum_{k in S} s_k (1 - mu_k^T m_S) = s_S - ||v_S||

(the share-weighted cosine distance of its domains to their best common direction). Each step merges
the pair (A, B) with the smallest increase ``D(A u B) - D(A) - D(B) = ||v_A|| + ||v_B|| - ||v_A + v_B||``
(>= 0 by the triangle inequality): Ward's criterion with cosine distance on the sphere. For two
domains of equal share the increase is a decreasing function of mu_A^T mu_B, so the nearest pair
merges first; a small domain merges earlier than a large one at the same angle. The node height is
``D(S)``, which never decreases towards the root (a proper dendrogram).

Each node is named by GIS of the merged domain (:func:`gem_assets.lib.taxonomy.gis.gis_scores` with the node's
domains as one group). Exemplars of a domain are the embedded documents of highest posterior for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from gem_assets.lib.taxonomy import gis as G
from gem_assets.lib.taxonomy.terms import STOP_WORDS

if TYPE_CHECKING:
    from gem_assets.lib.io.artifacts import ArtifactPaths

__all__ = ["Tree", "agglomerate", "build_taxonomy", "taxonomy_markdown", "stop_words_in", "shard_batches",
           "shard_texts", "name_quality"]

TAXONOMY_VERSION = 1


@dataclass
class Tree:
    """An agglomerative tree over K domains in scipy's linkage convention.

    Attributes
    ----------
    linkage : ndarray (K-1, 4)
        Row i merges nodes ``linkage[i, 0]`` and ``linkage[i, 1]`` into node ``K + i`` at height
        ``linkage[i, 2]`` (its dispersion D), with ``linkage[i, 3]`` domains under it.
    members : list of tuple of int
        Domains under each of the 2K-1 nodes (leaves first).
    parent : ndarray (2K-1,) int64
        Parent of each node; -1 for the root.
    shares : ndarray (2K-1,)
        Share of each node (sum of its domains' shares).
    resultants : ndarray (2K-1, d)
        Share-weighted resultant v of each node.
    merge_costs : ndarray (K-1,)
        Increase of dispersion of each merge.
    """

    linkage: np.ndarray
    members: list[tuple[int, ...]]
    parent: np.ndarray
    shares: np.ndarray
    resultants: np.ndarray
    merge_costs: np.ndarray

    @property
    def root(self) -> int:
        return len(self.members) - 1


def agglomerate(means, shares) -> Tree:
    """Merge K domains into a binary tree (spherical Ward criterion weighted by share).

    Parameters
    ----------
    means : array (K, d)
        Unit mean directions.
    shares : array (K,)
        Non-negative shares (normalized to sum 1 here).

    Returns
    -------
    Tree
        Ties between equal merge costs go to the pair with the smallest node ids.

    Raises
    ------
    ValueError
        If K < 2, the means are not finite unit vectors or the shares are negative/all zero.
    """
    mu = np.asarray(means, dtype=np.float64)
    s = np.asarray(shares, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] < 2:
        raise ValueError(f"means must be (K, d) with K >= 2 domains, got shape {mu.shape}")
    if not np.all(np.isfinite(mu)) or not np.allclose(np.linalg.norm(mu, axis=1), 1.0, atol=1e-6):
        raise ValueError("means must be finite unit vectors")
    if s.shape != (mu.shape[0],) or not np.all(np.isfinite(s)) or np.any(s < 0) or s.sum() <= 0:
        raise ValueError(f"shares must be {mu.shape[0]} non-negative numbers with a positive sum")
    s = s / s.sum()
    K = mu.shape[0]
    n_nodes = 2 * K - 1
    vec = np.zeros((n_nodes, mu.shape[1]))
    vec[:K] = s[:, None] * mu
    node_share = np.zeros(n_nodes)
    node_share[:K] = s
    members: list[tuple[int, ...]] = [(k,) for k in range(K)] + [()] * (K - 1)
    parent = np.full(n_nodes, -1, dtype=np.int64)
    active = list(range(K))
    Z = np.zeros((K - 1, 4))
    costs = np.zeros(K - 1)
    for step in range(K - 1):
        A = np.array(active)
        Vs = vec[A]
        gram = Vs @ Vs.T
        norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
        joint = np.sqrt(np.maximum(norms[:, None] ** 2 + norms[None, :] ** 2 + 2 * gram, 0.0))
        cost = norms[:, None] + norms[None, :] - joint
        iu = np.triu_indices(A.size, k=1)
        c = np.maximum(cost[iu], 0.0)
        best = int(np.flatnonzero(c <= c.min() + 1e-15)[0])  # ties: lexicographically smallest pair
        a, b = int(A[iu[0][best]]), int(A[iu[1][best]])
        new = K + step
        vec[new] = vec[a] + vec[b]
        node_share[new] = node_share[a] + node_share[b]
        members[new] = tuple(sorted(members[a] + members[b]))
        parent[a] = parent[b] = new
        height = max(0.0, node_share[new] - float(np.linalg.norm(vec[new])))
        Z[step] = (a, b, height, len(members[new]))
        costs[step] = float(c[best])
        active = [x for x in active if x not in (a, b)] + [new]
    # guard against rounding: heights never decrease towards the root
    for step in range(K - 1):
        kids = [int(Z[step, 0]), int(Z[step, 1])]
        floor = max((Z[k - K, 2] for k in kids if k >= K), default=0.0)
        Z[step, 2] = max(Z[step, 2], floor)
    return Tree(linkage=Z, members=members, parent=parent, shares=node_share, resultants=vec, merge_costs=costs)


def build_taxonomy(stats: G.TermStats, geometry: G.TeacherGeometry, *, posterior: str = "doc_posterior", n_top: int = 10,
                   name_terms: int = 3, params: dict | None = None) -> dict:
    """The taxonomy as a JSON-serialisable dict.

    Parameters
    ----------
    stats : TermStats
        From :func:`gem_assets.lib.taxonomy.gis.collect_term_stats`.
    geometry : TeacherGeometry
        The teacher.
    posterior : str
        The term posterior of GIS (:func:`gem_assets.lib.taxonomy.gis.term_posteriors`).
    n_top : int
        Top terms kept per node.
    name_terms : int
        Terms in a node's name.
    params : dict, optional
        Recorded as ``params``.

    Returns
    -------
    dict
        ``domains``: one entry per domain (``id``, ``name``, ``top_terms`` [{term, score}], ``share``,
        ``n_documents``, ``concentration``, ``exemplars`` [{id, posterior, snippet}], ``parent``);
        ``tree``: ``root``, ``nodes`` (internal nodes: ``id``, ``name``, ``top_terms``, ``share``,
        ``n_documents``, ``children``, ``domains``, ``height``, ``resultant_length``, ``parent``),
        ``linkage`` (scipy convention); counts, ``posterior`` and ``params``.
    """
    K = stats.k
    if geometry.k != K:
        raise ValueError(f"the teacher has {geometry.k} domains but the statistics {K}")
    n_total = int(stats.n_docs.sum())
    if n_total == 0:
        raise ValueError("no labelled document: nothing to name")
    shares = stats.n_docs / n_total
    tree = agglomerate(geometry.means, np.maximum(shares, 0.0) if shares.sum() > 0 else np.ones(K))
    post = G.term_posteriors(stats, geometry, posterior)
    scores = G.gis_scores(stats, post, groups=tree.members)
    tops = G.top_terms(scores, stats.vocabulary, n_top)

    def node_record(i: int) -> dict:
        ranked = [t for t, _ in tops[i]]
        return {
            "id": i,
            "name": G.name_from_terms(ranked, name_terms) or f"domain {i}",
            "top_terms": [{"term": t, "score": round(sc, 8)} for t, sc in tops[i]],
            "share": float(tree.shares[i]),
            "n_documents": int(stats.n_docs[list(tree.members[i])].sum()),
            "parent": int(tree.parent[i]) if tree.parent[i] >= 0 else None,
        }

    domains = []
    for k in range(K):
        rec = node_record(k)
        rec.update(concentration=float(geometry.concentrations[k]),
                   exemplars=stats.exemplars[k] if k < len(stats.exemplars) else [])
        domains.append(rec)
    internal = []
    for step in range(K - 1):
        i = K + step
        rec = node_record(i)
        norm = float(np.linalg.norm(tree.resultants[i]))
        rec.update(children=[int(tree.linkage[step, 0]), int(tree.linkage[step, 1])],
                   domains=list(tree.members[i]), height=float(tree.linkage[step, 2]),
                   resultant_length=float(norm / tree.shares[i]) if tree.shares[i] > 0 else 0.0)
        internal.append(rec)
    return {
        "version": TAXONOMY_VERSION,
        "k": K,
        "n_documents": int(stats.n_documents),
        "n_embedded": int(stats.n_embedded),
        "vocabulary_size": len(stats.vocabulary),
        "vocabulary_counting": dict(stats.counting),
        "posterior": posterior,
        "params": dict(params or {}),
        "domains": domains,
        "tree": {"root": tree.root, "nodes": internal, "linkage": tree.linkage.tolist()},
    }


def taxonomy_markdown(tax: dict, n_terms: int = 6) -> str:
    """A Markdown rendering: the tree as a nested list, then a table of the domains."""
    domains = {d["id"]: d for d in tax["domains"]}
    nodes = {n["id"]: n for n in tax["tree"]["nodes"]}
    lines = ["**Tree** (share of documents; internal nodes named by GIS of the merged domains)", ""]

    def walk(i: int, depth: int) -> None:
        rec = nodes.get(i) or domains[i]
        tag = f"domain {i}" if i in domains else f"node {i}"
        lines.append(f"{'  ' * depth}- **{rec['name']}** ({tag}, {rec['share']:.1%})")
        for c in rec.get("children", []):
            walk(c, depth + 1)

    walk(tax["tree"]["root"], 0)
    lines += ["", "| domain | name | share | kappa | top terms | exemplar |", "|---|---|---|---|---|---|"]
    for d in tax["domains"]:
        terms = ", ".join(t["term"] for t in d["top_terms"][:n_terms])
        ex = d["exemplars"][0]["snippet"][:80].replace("|", "/") if d["exemplars"] else ""
        lines.append(f"| {d['id']} | {d['name']} | {d['share']:.3f} | {d['concentration']:.1f} | {terms} | {ex} |")
    return "\n".join(lines)


def stop_words_in(tax: dict) -> list[tuple[int, str]]:
    """(node id, term) of every top term that is or contains a stop word or a digit (should be none)."""
    bad = []
    for rec in list(tax["domains"]) + list(tax["tree"]["nodes"]):
        for t in rec["top_terms"]:
            if any(w in STOP_WORDS or not w.isalpha() for w in t["term"].split()):
                bad.append((rec["id"], t["term"]))
    return bad


# --------------------------------------------------------------------------- reading the pipeline's shards
def shard_batches(layout: ArtifactPaths, keys: Sequence[str], skip=None) -> Iterator[G.TermBatch]:
    """One :class:`gem_assets.lib.taxonomy.gis.TermBatch` per shard from the pipeline's files.

    Texts from ``documents``, domains from the student's ``domain_assignments``, vectors from
    ``embeddings`` when the shard's embeddings were made from its current documents (otherwise the
    shard contributes counts but no vectors). ``skip`` (shard key to ids) names documents left out
    (the cross-shard duplicates, which have no assignment).

    Raises
    ------
    ValueError
        If a kept document has no assignment.
    """
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage

    for key in keys:
        docs = _without(artifacts.read_documents(layout, key).select("id", "text"), skip, key)
        assign = storage.read_parquet(layout.assignments_path(key), columns=["id", "domain"])
        docs = docs.join(assign, on="id", how="left", maintain_order="left")
        missing = docs["domain"].null_count()
        if missing:
            raise ValueError(f"shard {key!r}: {missing} kept documents have no domain assignment: "
                             "re-materialize its 'domain_assignments'")
        ids = docs["id"].to_list()
        vectors = rows = None
        emeta = artifacts.read_embeddings_meta(layout, key)
        dmeta = artifacts.read_documents_meta(layout, key) or {}
        if emeta is not None and emeta.get("documents_fingerprint") == dmeta.get("fingerprint") \
                and emeta.get("n_vectors", 0) > 0:
            vectors, index, _ = artifacts.read_embeddings(layout, key)
            pos = {i: j for j, i in enumerate(ids)}
            keep = [(r, pos[i]) for r, i in enumerate(index["id"].to_list()) if i in pos]
            vectors = vectors[[r for r, _ in keep]]
            rows = np.array([p for _, p in keep], dtype=np.int64)
        yield G.TermBatch(ids=ids, texts=docs["text"].to_list(), domains=docs["domain"].to_numpy(),
                          vectors=vectors, vector_rows=rows)


def shard_texts(layout: ArtifactPaths, keys: Sequence[str], skip=None) -> Iterator[list[str]]:
    """The texts of each shard's kept documents (less those ``skip`` names), one list per shard."""
    from gem_assets.lib.io import artifacts

    for key in keys:
        yield _without(artifacts.read_documents(layout, key), skip, key)["text"].to_list()


def _without(docs, skip, key: str):
    """``docs`` less the ids that ``skip`` (shard key to ids) names for shard ``key``."""
    import polars as pl

    ids = (skip or {}).get(key)
    if not ids:
        return docs
    return docs.filter(~pl.col("id").cast(pl.String).is_in(pl.Series(sorted(ids), dtype=pl.String).implode()))


def name_quality(tops: dict[str, Sequence[Sequence[str]]], texts, progress: bool = False) -> dict[str, dict]:
    """Mean NPMI coherence (on the corpus) and distinctiveness of each method's top terms.

    Parameters
    ----------
    tops : dict of str to list of list of str
        Method -> each domain's top terms.
    texts : callable returning an iterable of lists of str
        The corpus (e.g. ``lambda: shard_texts(layout, keys)``), streamed once.
    progress : bool
        A tqdm bar.

    Returns
    -------
    dict
        Method -> ``npmi`` (mean over domains), ``npmi_per_domain``, ``distinctiveness``.
    """
    from gem_assets.lib.taxonomy import coherence

    vocab = sorted({t for lists in tops.values() for row in lists for t in row})
    from gem_assets.lib.util.allocator import release_memory

    co, n = coherence.cooccurrence(texts, vocab, progress=progress)
    release_memory()  # a whole pass over the corpus's texts: hand the freed pages back
    out = {}
    for method, lists in tops.items():
        per = coherence.topic_coherence(lists, co, vocab, n)
        out[method] = {"npmi": float(per.mean()), "npmi_per_domain": per.tolist(),
                       "distinctiveness": coherence.distinctiveness(lists)}
    return out

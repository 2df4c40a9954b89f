"""The taxonomy tree (spherical Ward merging weighted by share), node names and the JSON/Markdown rendering."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gem_assets.lib.taxonomy import gis
from gem_assets.lib.util import plots
from gem_assets.lib.taxonomy import build as tx
from gem_assets.lib.taxonomy.gis import TeacherGeometry, TermBatch


def _unit(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([math.cos(r), math.sin(r), 0.0])


def _check_tree(tree: tx.Tree, k: int) -> None:
    Z = tree.linkage
    assert Z.shape == (k - 1, 4)                       # K-1 internal nodes
    assert tree.parent[-1] == -1 and np.all(tree.parent[:-1] >= k)  # one root; every other node has a parent
    for step, (a, b, h, n) in enumerate(Z):
        node = k + step
        assert tree.parent[int(a)] == node and tree.parent[int(b)] == node
        assert a < node and b < node                    # children exist before their parent
        assert set(tree.members[node]) == set(tree.members[int(a)]) | set(tree.members[int(b)])
        assert n == len(tree.members[node])
        assert tree.shares[node] == pytest.approx(tree.shares[int(a)] + tree.shares[int(b)])
    for step in range(k - 1):                            # heights never decrease from child to parent
        for c in Z[step, :2].astype(int):
            if c >= k:
                assert Z[step, 2] >= Z[c - k, 2]
    assert tree.members[tree.root] == tuple(range(k)) and tree.shares[tree.root] == pytest.approx(1.0)


def test_merge_order_follows_the_nearest_pairs():
    # two tight pairs far apart: (0, 1) at 10 degrees, (2, 3) at 20 degrees; equal shares
    means = np.stack([_unit(0), _unit(10), _unit(120), _unit(140)])
    tree = tx.agglomerate(means, np.ones(4))
    _check_tree(tree, 4)
    assert tree.linkage[:, :2].astype(int).tolist() == [[0, 1], [2, 3], [4, 5]]
    # hand-computed height of a pair of equal shares s at angle theta: D = 2s (1 - cos(theta / 2))
    assert tree.linkage[0, 2] == pytest.approx(2 * 0.25 * (1 - math.cos(math.radians(5))), rel=1e-12)
    assert tree.linkage[1, 2] == pytest.approx(2 * 0.25 * (1 - math.cos(math.radians(10))), rel=1e-12)
    # merge cost = ||v_a|| + ||v_b|| - ||v_a + v_b||
    v = 0.25 * means
    assert tree.merge_costs[0] == pytest.approx(0.5 - np.linalg.norm(v[0] + v[1]), rel=1e-12)


def test_a_small_domain_merges_before_a_large_one_at_the_same_angle():
    # domains 1 and 2 are both 30 degrees from domain 0 (60 degrees from each other); 1 is small
    means = np.stack([_unit(0), _unit(30), _unit(-30)])
    tree = tx.agglomerate(means, [0.4, 0.1, 0.5])
    _check_tree(tree, 3)
    assert tree.linkage[0, :2].astype(int).tolist() == [0, 1]
    tree = tx.agglomerate(means, [0.4, 0.5, 0.1])
    assert tree.linkage[0, :2].astype(int).tolist() == [0, 2]


def test_random_trees_are_consistent():
    rng = np.random.default_rng(0)
    for k in (2, 5, 17):
        means = rng.normal(size=(k, 8))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        _check_tree(tx.agglomerate(means, rng.random(k) + 0.01), k)


def test_agglomerate_rejects_bad_inputs():
    with pytest.raises(ValueError, match="K >= 2"):
        tx.agglomerate(np.eye(3)[:1], [1.0])
    with pytest.raises(ValueError, match="unit"):
        tx.agglomerate(np.ones((2, 3)), [1.0, 1.0])
    with pytest.raises(ValueError, match="shares"):
        tx.agglomerate(np.eye(3), [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="shares"):
        tx.agglomerate(np.eye(3), [0.0, 0.0, 0.0])


def _stats_and_geometry():
    """4 domains: 0 and 1 close (sport: football, tennis), 2 and 3 close (tech: chips, software).

    Every document also says "report"; the embeddings are the domain means (hand-made)."""
    means = np.stack([_unit(0), _unit(15), _unit(120), _unit(135)])
    words = {0: "football striker", 1: "tennis racket", 2: "chip wafer", 3: "software code"}
    shared = {0: "sport", 1: "sport", 2: "technology", 3: "technology"}
    ids, texts, doms, vecs = [], [], [], []
    for k in range(4):
        for i in range(3):
            ids.append(f"{k}-{i}")
            texts.append(f"{words[k]} {shared[k]} report number {i}")
            doms.append(k)
            vecs.append(means[k])
    geo = TeacherGeometry(means=means, concentrations=np.full(4, 20.0))
    batch = TermBatch(ids, texts, np.array(doms), np.array(vecs), np.arange(len(ids)))
    return gis.collect_term_stats(lambda: [batch], geo, min_df=2, n_exemplars=2), geo


def test_taxonomy_names_domains_and_merged_nodes_by_gis():
    stats, geo = _stats_and_geometry()
    tax = tx.build_taxonomy(stats, geo, n_top=4, name_terms=2, params={"min_df": 2})
    json.dumps(tax)  # JSON-serialisable as it is
    assert tax["k"] == 4 and len(tax["domains"]) == 4 and len(tax["tree"]["nodes"]) == 3
    names = [d["name"] for d in tax["domains"]]
    assert names == ["football / striker", "racket / tennis", "chip / wafer", "code / software"]
    nodes = {n["id"]: n for n in tax["tree"]["nodes"]}
    assert nodes[4]["domains"] == [0, 1] and nodes[5]["domains"] == [2, 3] and tax["tree"]["root"] == 6
    # a merged domain is named by the term its documents share and no other domain has:
    # p(sport | node 4) = 1 and post_4(sport) = post_0 + post_1 ~ 1, while "report" (in every
    # document) has a flat posterior, 2/4 of it on node 4
    assert nodes[4]["top_terms"][0] == {"term": "sport", "score": pytest.approx(1.0, abs=1e-6)}
    assert {"term": "report", "score": pytest.approx(0.5, abs=1e-6)} in nodes[4]["top_terms"]
    assert nodes[4]["name"] == "sport / number" and nodes[5]["name"] == "technology / number"
    # the root: "report" is in every document and the merged posterior sums to 1
    assert {"term": "report", "score": pytest.approx(1.0)} in nodes[6]["top_terms"]
    for d in tax["domains"]:
        assert d["share"] == pytest.approx(0.25) and d["n_documents"] == 3 and d["concentration"] == 20.0
        assert len(d["exemplars"]) == 2 and d["exemplars"][0]["id"].startswith(f"{d['id']}-")
        assert d["parent"] == (4 if d["id"] < 2 else 5)
    assert nodes[4]["parent"] == nodes[5]["parent"] == 6 and nodes[6]["parent"] is None
    # D = 2 s (1 - cos(theta / 2)) with s = 1/4, theta = 15 degrees
    assert nodes[4]["height"] == pytest.approx(0.5 * (1 - math.cos(math.radians(7.5))), rel=1e-9)
    assert tx.stop_words_in(tax) == []
    md = tx.taxonomy_markdown(tax).splitlines()
    assert md[2] == "- **number / report** (node 6, 100.0%)"
    assert md[3] == "  - **sport / number** (node 4, 50.0%)"
    assert md[4] == "    - **football / striker** (domain 0, 25.0%)"
    assert "| 0 | football / striker | 0.250 | 20.0 | football, football striker, striker, striker sport | " \
        "football striker sport report number 0 |" in md


def test_stop_words_in_finds_offending_terms():
    stats, geo = _stats_and_geometry()
    tax = tx.build_taxonomy(stats, geo)
    tax["domains"][0]["top_terms"].append({"term": "the match", "score": 0.1})
    tax["domains"][1]["top_terms"].append({"term": "2004", "score": 0.1})
    assert tx.stop_words_in(tax) == [(0, "the match"), (1, "2004")]


def test_build_taxonomy_rejects_a_mismatched_teacher():
    stats, _ = _stats_and_geometry()
    with pytest.raises(ValueError, match="domains"):
        tx.build_taxonomy(stats, TeacherGeometry(means=np.eye(3), concentrations=np.ones(3)))


def test_pictures_are_png():
    stats, geo = _stats_and_geometry()
    tax = tx.build_taxonomy(stats, geo)
    for png in (plots.taxonomy_dendrogram(tax["tree"]["linkage"], [d["name"] for d in tax["domains"]]),
                plots.domain_map(geo.means, [d["share"] for d in tax["domains"]], ["0", "1", "2", "3"])):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

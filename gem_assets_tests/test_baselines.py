"""Baselines on toy data whose answers are computed by hand, plus their shared behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gem_assets.lib.teacher.baselines import KMeans, SphericalKMeans, VMFMixtureEM, _relocate_empty
from gem_assets.lib.teacher.gem import GEM
from gem_assets.lib.util.metrics import dead_domains, nmi, shares_from_labels
from gem_assets.lib.teacher.synthetic import make_cone_clusters


def test_kmeans_two_groups_by_hand():
    X = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    km = KMeans(2, random_state=0).fit(X)
    centers = km.cluster_centers_[np.argsort(km.cluster_centers_[:, 0])]
    np.testing.assert_allclose(centers, [[0.0, 0.5], [10.0, 0.5]])
    # inertia: every point is 0.5 from its centre -> 4 * 0.25 = 1
    assert km.history_[-1]["inertia"] == pytest.approx(1.0)
    assert km.labels_[0] == km.labels_[1] != km.labels_[2] == km.labels_[3]
    np.testing.assert_array_equal(km.predict([[0.1, 0.2], [9.0, 3.0]]), km.labels_[[0, 2]])


def test_spherical_kmeans_by_hand():
    # two pairs of directions at +-10 degrees around 0 and 90 degrees: centres are 0 and 90 degrees
    ang = np.deg2rad([-10.0, 10.0, 80.0, 100.0])
    X = np.c_[np.cos(ang), np.sin(ang)] * np.array([[1.0], [2.0], [3.0], [0.5]])  # norms do not matter
    skm = SphericalKMeans(2, random_state=0).fit(X)
    centers = skm.cluster_centers_[np.argsort(skm.cluster_centers_[:, 1])]
    np.testing.assert_allclose(centers, [[1.0, 0.0], [0.0, 1.0]], atol=1e-12)
    assert skm.objective_ == pytest.approx(4 * np.cos(np.deg2rad(10.0)))


def test_vmf_em_loglik_never_decreases_and_weights_are_a_distribution():
    X, y, _ = make_cone_clusters(2000, 16, 5, kappa=80.0, cone_spread=1.0, dtype=np.float64, random_state=3)
    em = VMFMixtureEM(5, random_state=0, n_init=3).fit(X)
    ll = np.array([h["objective"] for h in em.history_])
    assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:]))
    assert em.weights_.sum() == pytest.approx(1.0)
    assert nmi(em.labels_, y) > 0.9
    np.testing.assert_array_equal(em.predict(X), em.labels_)


def test_vmf_em_learned_weights_starve_components_where_gem_does_not():
    # 4 Zipf-sized true clusters fitted with K = 10: the learned weights feed back into the
    # assignments (rich get richer) and some components die; GEM's decoupled prior keeps all alive
    # (vMF-EM starved 2-4 components on 5 of 8 data seeds, GEM none on any; this is one of the five)
    X, _, _ = make_cone_clusters(3000, 16, 4, exponent=1.5, kappa=60.0, cone_spread=1.0, dtype=np.float64,
                                 random_state=0)
    em = VMFMixtureEM(10, random_state=0, max_iter=300).fit(X)
    gem = GEM(10, random_state=0).fit(X)
    assert dead_domains(em.weights_) >= 1
    assert dead_domains(shares_from_labels(em.labels_, 10)) >= 1
    assert dead_domains(gem.shares_) == 0
    assert dead_domains(shares_from_labels(gem.labels_, 10)) == 0


def test_relocate_empty_moves_centre_to_worst_point():
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    centers = torch.tensor([[0.5, 0.0], [100.0, 100.0]], dtype=torch.float64)
    score = torch.tensor([-0.25, -0.25, -20.25], dtype=torch.float64)  # point 2 fits worst
    n = _relocate_empty(X, labels, centers, score, torch.bincount(labels, minlength=2))
    assert n == 1
    assert labels.tolist() == [0, 0, 1]
    assert centers[1].tolist() == [5.0, 0.0]


@pytest.mark.parametrize("cls", [KMeans, SphericalKMeans, VMFMixtureEM])
def test_baselines_share_history_fields_reproducibility_and_validation(cls):
    X, _, _ = make_cone_clusters(600, 8, 3, dtype=np.float64, random_state=1)
    a = cls(3, random_state=5).fit(X)
    b = cls(3, random_state=5).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    for key in ("objective", "effective_k", "min_share", "max_share", "n_empty", "seconds"):
        assert key in a.history_[-1]
    with pytest.raises(ValueError, match="exceeds the number of documents"):
        cls(700).fit(X)
    with pytest.raises(ValueError, match="NaN or inf"):
        cls(2).fit(np.r_[X, [[np.nan] * 8]])
    with pytest.raises(ValueError, match="not fitted"):
        cls(2).predict(X)

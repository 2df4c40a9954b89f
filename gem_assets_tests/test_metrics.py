"""Balance and agreement metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gem_assets.lib.util import metrics as M


def test_shares_and_entropies_by_hand():
    p = M.shares_from_labels([0, 0, 1, 3], 4)
    np.testing.assert_allclose(p, [0.5, 0.25, 0.0, 0.25])
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # = 1.5 log 2
    assert M.share_entropy(p) == pytest.approx(h)
    assert M.normalized_share_entropy(p) == pytest.approx(h / math.log(4))
    assert M.effective_k(p) == pytest.approx(2 ** 1.5)
    assert M.effective_k([0.25] * 4) == pytest.approx(4.0)
    assert M.normalized_share_entropy([1.0, 0.0, 0.0]) == 0.0
    assert M.max_share(p) == 0.5


def test_dead_domains_threshold_is_one_tenth_of_uniform():
    # K = 4: threshold 1/40 = 0.025
    assert M.dead_domains([0.5, 0.476, 0.024, 0.0]) == 2
    assert M.dead_domains([0.3, 0.3, 0.375, 0.025]) == 0
    assert M.dead_domains([0.5, 0.5], threshold=0.6) == 2


def test_balance_stats():
    s = M.balance_stats(np.array([0, 0, 0, 1]), 3)
    assert s == {"effective_k": pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))),
                 "min_share": 0.0, "max_share": 0.75, "dead_domains": 1}


def test_nmi_by_hand():
    assert M.nmi([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert M.nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # A = (0, 0, 1, 1), B = (x, x, x, y): cells (0, x) 2, (1, x) 1, (1, y) 1 of 4
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25))
    ha, hb = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert M.nmi([0, 0, 1, 1], ["x", "x", "x", "y"]) == pytest.approx(mi / ((ha + hb) / 2), rel=1e-12)  # 0.3437
    assert M.nmi([0, 0, 1, 1], ["x", "x", "x", "y"]) != pytest.approx(mi / math.sqrt(ha * hb), rel=1e-3)  # not geometric
    assert M.nmi([3, 3, 3], [1, 1, 1]) == 1.0 and M.nmi([3, 3, 3], [1, 2, 1]) == 0.0


@pytest.mark.parametrize("bad", [[], [0.5, -0.1], [np.nan, 1.0], [0.0, 0.0]])
def test_bad_shares_raise(bad):
    with pytest.raises(ValueError, match="shares must be"):
        M.share_entropy(bad)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="lie in"):
        M.shares_from_labels([0, 5], 3)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        M.nmi([0, 1], [0])
    with pytest.raises(ValueError, match="labelings are empty"):
        M.nmi([], [])

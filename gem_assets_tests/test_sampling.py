"""Seeded samples: the per-shard cap and the stratified teacher sample."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gem_assets.lib.mixing import sampling


def test_cap_sample_is_seeded_sorted_and_keyed():
    a = sampling.cap_sample(1000, 50, 0, "embed", "shard-a")
    assert a.size == 50 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert np.array_equal(a, sampling.cap_sample(1000, 50, 0, "embed", "shard-a"))
    assert not np.array_equal(a, sampling.cap_sample(1000, 50, 0, "embed", "shard-b"))
    assert not np.array_equal(a, sampling.cap_sample(1000, 50, 1, "embed", "shard-a"))
    assert np.array_equal(sampling.cap_sample(10, None, 0), np.arange(10))
    assert np.array_equal(sampling.cap_sample(10, 20, 0), np.arange(10))


def test_derive_seed_is_stable():
    assert sampling.derive_seed(0, "a", 1) == sampling.derive_seed(0, "a", 1)
    assert sampling.derive_seed(0, "a", 1) != sampling.derive_seed(0, "a", 2)


def test_allocate_proportional():
    assert sampling.allocate({"a": 100, "b": 300}, 40) == {"a": 10, "b": 30}
    assert sampling.allocate({"a": 5, "b": 5}, 100) == {"a": 5, "b": 5}
    assert sampling.allocate({"a": 0, "b": 10}, 4) == {"a": 0, "b": 4}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 500), min_size=1, max_size=8),
       st.integers(0, 3000))
def test_allocate_properties(sizes, n):
    out = sampling.allocate(sizes, n)
    assert sum(out.values()) == min(n, sum(sizes.values()))
    total = sum(sizes.values())
    for k, v in out.items():
        assert 0 <= v <= sizes[k]
        if total and n < total:  # within one of the proportional quota
            assert abs(v - n * sizes[k] / total) < 1 + 1e-9


def test_stratified_sample_per_stratum_streams():
    sizes = {"a": 100, "b": 100}
    s1 = sampling.stratified_sample(sizes, 50, seed=3)
    assert {k: v.size for k, v in s1.items()} == {"a": 25, "b": 25}
    s2 = sampling.stratified_sample({**sizes, "c": 0}, 50, seed=3)
    assert np.array_equal(s1["a"], s2["a"])  # an empty new shard changes nothing
    assert sampling.stratified_sample(sizes, 50, seed=4)["a"].tolist() != s1["a"].tolist()

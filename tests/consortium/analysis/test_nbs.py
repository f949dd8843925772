"""Network-based statistic (consortium.analysis.nbs) against bctpy's nbs_bct."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from consortium.analysis.effects import edges_to_matrix
from consortium.analysis.nbs import NbsNull, nbs_components, nbs_test

R = 14


def _two_groups(seed: int = 0, n_per_group: int = 30, effect: float = 0.9):
    """Two groups, two sites (no site effect), a planted component among ROIs 0-4."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    dx = np.repeat([1.0, 0.0], n_per_group)
    site = np.tile([0, 1], n_per_group)
    rows, cols = np.triu_indices(R, k=1)
    Y = rng.normal(size=(n, rows.size))
    planted = (rows < 5) & (cols < 5)
    Y[:, planted] += effect * dx[:, None]
    return pd.DataFrame({"dx": dx, "site": site}), Y, planted


def _bct_adjacency(Y: np.ndarray, dx: np.ndarray):
    mats = np.stack([edges_to_matrix(y) for y in Y], axis=-1)
    return mats[:, :, dx == 1], mats[:, :, dx == 0]


def test_components_equal_bctpy_for_the_same_t():
    bct = pytest.importorskip("bct")
    data, Y, _ = _two_groups()
    x, y = _bct_adjacency(Y, data["dx"].to_numpy())
    # the t statistic nbs_bct computes: pooled-variance two-sample t of x - y
    t = stats.ttest_ind(Y[data["dx"] == 1], Y[data["dx"] == 0]).statistic
    threshold = 2.0
    _, adj, _ = bct.nbs_bct(x, y, threshold, k=5, tail="both", seed=0)
    rows, cols = np.triu_indices(R, k=1)
    labels = adj[rows, cols]
    expected = sorted(
        tuple(np.flatnonzero(labels == k)) for k in np.unique(labels[labels > 0])
    )
    ours = nbs_components(t, threshold, tail="abs")
    assert sorted(tuple(c.edges) for c in ours) == expected
    for c in ours:
        assert c.extent == len(c.edges)
        assert c.intensity == pytest.approx(float((np.abs(t[c.edges]) - threshold).sum()))
        assert set(c.nodes) == set(rows[c.edges]) | set(cols[c.edges])


def test_pvalues_and_null_agree_with_bctpy():
    bct = pytest.importorskip("bct")
    data, Y, planted = _two_groups(seed=1, effect=0.35)
    threshold, B = 2.3, 300
    x, y = _bct_adjacency(Y, data["dx"].to_numpy())
    p_bct, adj, null_bct = bct.nbs_bct(x, y, threshold, k=B, tail="both", seed=0)
    res = nbs_test(Y, data, ["dx"], "site", "dx", threshold, tail="abs", reml=True,
                   n_permutations=B, seed=0)
    rows, cols = np.triu_indices(R, k=1)
    largest = res.components[0]
    bct_largest = int(np.argmax([np.sum(adj[rows, cols] == k + 1) for k in range(len(p_bct))]))
    assert planted[largest.edges].mean() >= 0.8  # the planted component is found
    # Monte Carlo error of a difference of two p estimates from B permutations each
    p_ref = p_bct[bct_largest]
    se = np.sqrt(max(p_ref * (1 - p_ref), 1 / B) * 2 / B)
    assert abs(largest.p_extent - p_ref) < 4 * se + 2 / B
    # same null distribution of the max component extent (two-sample KS test)
    assert stats.ks_2samp(res.null_extent, null_bct).pvalue > 0.001


def test_null_kernel_matches_components():
    rng = np.random.default_rng(3)
    t = rng.normal(0, 1.5, size=(25, R * (R - 1) // 2))
    for tail in ("positive", "negative", "both", "abs"):
        null = NbsNull(1.5, tail)(t)
        for b in range(t.shape[0]):
            comps = nbs_components(t[b], 1.5, tail)
            assert null[b, 0] == max([c.extent for c in comps], default=0)
            assert null[b, 1] == pytest.approx(max([c.intensity for c in comps], default=0.0))


def test_both_tails_and_table():
    data, Y, planted = _two_groups(seed=2, effect=1.0)
    res = nbs_test(Y, data, ["dx"], "site", "dx", 3.0, tail="both",
                   n_permutations=99, seed=4, batch_size=10)
    assert res.components[0].sign == 1 and res.components[0].p_extent == pytest.approx(0.01)
    assert res.null_extent.shape == (99,) and res.permutation.seed == 4
    labels = [f"roi{i}" for i in range(R)]
    networks = ["A"] * 5 + ["B"] * (R - 5)
    table = res.table(labels, networks)
    first = table[table["component"] == 0]
    assert len(first) == res.components[0].extent
    assert set(first["network_a"]) == {"A"} and first["roi_a"].str.startswith("roi").all()
    again = nbs_test(Y, data, ["dx"], "site", "dx", 3.0, n_permutations=99, seed=4,
                     batch_size=40)
    assert np.array_equal(again.null_extent, res.null_extent)
    assert np.array_equal(again.null_intensity, res.null_intensity)
    with pytest.raises(ValueError, match="tail must be one of"):
        nbs_test(Y, data, ["dx"], "site", "dx", 3.0, tail="two")
    with pytest.raises(ValueError, match="positive t"):
        nbs_test(Y, data, ["dx"], "site", "dx", -1.0)
    with pytest.raises(ValueError, match="not a number of edges"):
        nbs_components(np.zeros(10 + 1), 2.0)

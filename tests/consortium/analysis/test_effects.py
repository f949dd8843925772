"""d from t and its CI, edge vector <-> matrix, network-block summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from consortium.analysis import (
    cohens_d_ci,
    d_from_t,
    edges_to_matrix,
    matrix_to_edges,
    network_block_summary,
)


def test_d_from_t_for_a_two_sample_t():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 40), rng.normal(0, 1, 55)
    t = stats.ttest_ind(a, b).statistic
    df = a.size + b.size - 2
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / df)
    d, low, high = d_from_t(t, a.size, b.size, df)
    # the published conversion is the pooled-SD d scaled by sqrt((n1 + n2) / df)
    assert d == pytest.approx((a.mean() - b.mean()) / pooled * np.sqrt(95 / df), rel=1e-12)
    se = np.sqrt((40 + 55) / (40 * 55) + d**2 / (2 * 95))
    assert (low, high) == pytest.approx((d - 1.959964 * se, d + 1.959964 * se), rel=1e-6)


def test_d_ci_is_vectorized_and_widens_with_level():
    low95, high95, _ = cohens_d_ci(np.array([-0.2, 0.5]), 848, 794)
    low99, high99, _ = cohens_d_ci(np.array([-0.2, 0.5]), 848, 794, level=0.99)
    assert np.all(low99 < low95) and np.all(high99 > high95)


def test_edges_matrix_round_trip_in_triu_order():
    n = 6
    rng = np.random.default_rng(1)
    full = rng.normal(size=(n, n))
    full = full + full.T
    np.fill_diagonal(full, 0)
    edges = full[np.triu_indices(n, k=1)]
    np.testing.assert_array_equal(matrix_to_edges(full), edges)
    np.testing.assert_array_equal(edges_to_matrix(edges), full)
    stacked = edges_to_matrix(np.stack([edges, 2 * edges]))
    assert stacked.shape == (2, n, n)
    np.testing.assert_array_equal(stacked[1], 2 * full)
    with pytest.raises(ValueError, match="not a number of edges"):
        edges_to_matrix(np.zeros(7))


def test_network_block_summary_against_a_loop():
    networks = ["dmn", "dmn", "vis", "dmn", "vis", "sal"]
    n = len(networks)
    rng = np.random.default_rng(2)
    edges = rng.normal(size=n * (n - 1) // 2)
    table = network_block_summary(edges, networks)
    full = edges_to_matrix(edges)
    for a in table.index:
        for b in table.columns:
            vals = [full[i, j] for i in range(n) for j in range(i + 1, n)
                    if {networks[i], networks[j]} == {a, b} and
                    (a != b or networks[i] == networks[j] == a)]
            expected = np.mean(vals) if vals else np.nan
            assert table.loc[a, b] == pytest.approx(expected, nan_ok=True)
    assert np.isnan(table.loc["sal", "sal"])  # one ROI: no within-network pair
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["dmn", "sal", "vis"]

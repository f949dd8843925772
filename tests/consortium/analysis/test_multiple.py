"""BH FDR against statsmodels; within-site max-statistic permutation test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import fdrcorrection

from consortium.analysis import fdr_bh, maxstat_permutation
from consortium.analysis.multiple import max_stat_permutation, permute_within


def test_fdr_bh_matches_statsmodels():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=300), rng.uniform(0, 1e-3, 30)])
    rng.shuffle(p)
    q = fdr_bh(p)
    reject_sm, q_sm = fdrcorrection(p, alpha=0.05)
    np.testing.assert_allclose(q, q_sm, rtol=1e-12)
    np.testing.assert_array_equal(q <= 0.05, reject_sm)
    q_nan = fdr_bh(np.r_[p[:10], np.nan])
    assert np.isnan(q_nan[-1])
    np.testing.assert_allclose(q_nan[:10], fdrcorrection(p[:10])[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fdr_bh([0.1, 1.2])


def test_permutation_keeps_site_counts_and_is_reproducible():
    rng = np.random.default_rng(1)
    site = np.repeat(["a", "b", "c"], [10, 20, 15])
    dx = rng.choice([-1.0, 1.0], site.size)
    perm = permute_within(site, np.random.default_rng(5))
    assert not np.array_equal(perm, np.arange(site.size))
    for s in "abc":
        assert np.all(site[perm][site == s] == s)
        assert sorted(dx[perm][site == s]) == sorted(dx[site == s])
    again = permute_within(site, np.random.default_rng(5))
    np.testing.assert_array_equal(perm, again)


def _ols_dx_t(Y: np.ndarray, site_codes: np.ndarray):
    """t of Dx with site fixed effects, all features at once (a fast statistic)."""
    S = np.eye(site_codes.max() + 1)[site_codes]

    def statistic(dx: np.ndarray) -> np.ndarray:
        X = np.column_stack([dx, S])
        beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
        resid = Y - X @ beta
        df = Y.shape[0] - X.shape[1]
        se = np.sqrt((resid**2).sum(0) / df * np.linalg.inv(X.T @ X)[0, 0])
        return beta[0] / se

    return statistic


def test_max_stat_fwe_is_not_anticonservative_under_the_null():
    n_sims, n_perm, n_features = 60, 99, 30
    site = np.repeat(np.arange(4), [20, 25, 30, 25])
    rejections = 0
    for sim in range(n_sims):
        rng = np.random.default_rng(100 + sim)
        dx = rng.permutation(np.r_[np.ones(50), -np.ones(50)])
        Y = rng.normal(size=(site.size, n_features)) + rng.normal(size=(4, n_features))[site]
        res = max_stat_permutation(_ols_dx_t(Y, site), dx, site, n_permutations=n_perm,
                                   seed=sim)
        rejections += bool((res.p_fwe <= 0.05).any())
    # family-wise rate at most nominal: reject only if P(X >= observed | 5 %) < 0.001
    assert stats.binom.sf(rejections - 1, n_sims, 0.05) > 0.001, rejections


def test_max_stat_detects_a_planted_effect():
    rng = np.random.default_rng(3)
    site = np.repeat(np.arange(4), 30)
    dx = np.tile(np.r_[np.ones(15), -np.ones(15)], 4)
    Y = rng.normal(size=(120, 20))
    Y[:, 0] += 0.8 * dx
    res = max_stat_permutation(_ols_dx_t(Y, site), dx, site, n_permutations=199, seed=0)
    assert res.p_fwe[0] == 1 / 200
    assert np.all(res.p_fwe[1:] > 0.05)
    assert res.threshold < res.observed[0]


def test_maxstat_permutation_mass_model_is_bit_reproducible():
    rng = np.random.default_rng(4)
    site = np.repeat(np.arange(5), 24)
    data = pd.DataFrame({"site": site, "dx": np.tile([1.0, -1.0], 60),
                         "age": rng.normal(40, 9, 120)})
    Y = rng.normal(size=(120, 8)) + rng.normal(size=(5, 8))[site]
    one = maxstat_permutation(Y, data, ["dx", "age"], "site", term="dx", n_permutations=9,
                              seed=42)
    two = maxstat_permutation(Y, data, ["dx", "age"], "site", term="dx", n_permutations=9,
                              seed=42)
    np.testing.assert_array_equal(one.null_max, two.null_max)
    np.testing.assert_array_equal(one.p_fwe, two.p_fwe)
    other = maxstat_permutation(Y, data, ["dx", "age"], "site", term="dx", n_permutations=9,
                                seed=43)
    assert not np.array_equal(one.null_max, other.null_max)
    assert np.all((one.p_fwe >= 0.1) & (one.p_fwe <= 1))

"""Freedman-Lane permutation inference for the mass mixed model (analysis.permutation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import block_diag

from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.permutation import (
    BlockMeanNull,
    block_fwe,
    generate_permutations,
    generate_signflips,
    permutation_test,
    permuted_statistics,
    tail_approximation,
)

FIXED = ["dx", "age"]


def _data(seed: int = 1, n_sites: int = 5, m: int = 6):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(12, 25, n_sites)
    site = np.repeat(np.arange(n_sites), sizes)
    rng.shuffle(site)  # sites interleaved, as in real data
    n = site.size
    dx = rng.choice([0.0, 1.0], n)
    age = rng.normal(40, 10, n)
    Y = (
        rng.normal(0, 0.6, (n_sites, m))[site]
        + rng.normal(0, 0.4, (n_sites, m))[site] * dx[:, None]
        + 0.02 * age[:, None]
        + rng.normal(size=(n, m))
    )
    Y[:, 0] += 0.8 * dx
    return pd.DataFrame({"dx": dx, "age": age, "site": site}), Y


def _direct_t(y, data, s, slope: bool, reml: bool = False) -> float:
    """GLS t of dx with explicit H = I + Z L^2 Z' (relative SDs ``s``), sigma^2 profiled."""
    X = np.column_stack([np.ones(len(data)), data[FIXED].to_numpy(float)])
    blocks = []
    order = np.argsort(data["site"].to_numpy(), kind="stable")
    for g in np.unique(data["site"]):
        rows = np.flatnonzero(data["site"].to_numpy()[order] == g)
        Zg = np.ones((rows.size, 1))
        if slope:
            Zg = np.column_stack([Zg, data["dx"].to_numpy()[order][rows]])
        blocks.append(np.eye(rows.size) + Zg @ np.diag(s**2) @ Zg.T)
    Hinv = np.linalg.inv(block_diag(*blocks))
    Xo, yo = X[order], y[order]
    A = np.linalg.inv(Xo.T @ Hinv @ Xo)
    beta = A @ Xo.T @ Hinv @ yo
    e = yo - Xo @ beta
    scale = (e @ Hinv @ e) / (len(y) - (X.shape[1] if reml else 0))
    return beta[1] / np.sqrt(scale * A[1, 1])


def _reduced_residuals(y, data, s, slope: bool) -> np.ndarray:
    """Residuals of the GLS fit without dx, with the same H, in the order of ``data``."""
    Xr = np.column_stack([np.ones(len(data)), data["age"].to_numpy(float)])
    n = len(y)
    H = np.zeros((n, n))
    site = data["site"].to_numpy()
    for g in np.unique(site):
        rows = np.flatnonzero(site == g)
        Zg = np.ones((rows.size, 1))
        if slope:
            Zg = np.column_stack([Zg, data["dx"].to_numpy()[rows]])
        H[np.ix_(rows, rows)] = np.eye(rows.size) + Zg @ np.diag(s**2) @ Zg.T
    Hinv = np.linalg.inv(H)
    b = np.linalg.solve(Xr.T @ Hinv @ Xr, Xr.T @ Hinv @ y)
    return y - Xr @ b


@pytest.mark.parametrize("slope, reml", [(False, False), (True, False), (True, True)])
def test_fast_statistic_equals_direct_gls(slope, reml):
    data, Y = _data()
    slopes = ("dx",) if slope else ()
    fit = mass_mixed_model(Y, data, FIXED, "site", random_slopes=slopes, reml=reml)
    # observed statistic = the mass model's t
    t_obs = permuted_statistics(
        Y, data, FIXED, "site", "dx", np.arange(len(data))[None], slopes, reml=reml, fit=fit
    )[0]
    np.testing.assert_allclose(t_obs, fit.tvalues["dx"].to_numpy(), rtol=0, atol=1e-8)
    # permuted statistics = direct GLS t on permuted reduced residuals, explicit H
    rng = np.random.default_rng(5)
    site = data["site"].to_numpy()
    draws = np.tile(np.arange(len(data)), (4, 1))
    for b in range(4):
        for g in np.unique(site):
            idx = np.flatnonzero(site == g)
            draws[b, idx] = idx[rng.permutation(idx.size)]
    fast = permuted_statistics(Y, data, FIXED, "site", "dx", draws, slopes, reml=reml, fit=fit)
    s = np.sqrt(fit.variance_components.to_numpy() / fit.scale.to_numpy()[:, None])
    for f in range(Y.shape[1]):
        r = _reduced_residuals(Y[:, f], data, s[f], slope)
        assert _direct_t(Y[:, f], data, s[f], slope, reml) == pytest.approx(t_obs[f], abs=1e-10)
        for b in range(4):
            direct = _direct_t(r[draws[b]], data, s[f], slope, reml)
            assert fast[b, f] == pytest.approx(direct, rel=1e-10, abs=1e-10)


def test_signflip_statistic_equals_direct_gls():
    data, Y = _data(seed=2)
    fit = mass_mixed_model(Y, data, FIXED, "site", reml=False)
    s = np.sqrt(fit.variance_components.to_numpy() / fit.scale.to_numpy()[:, None])
    flips = generate_signflips(5, 3, seed=0)
    fast = permuted_statistics(Y, data, FIXED, "site", "dx", flips, scheme="signflip", fit=fit)
    codes = pd.factorize(data["site"], sort=True)[0]
    for f in range(Y.shape[1]):
        r = _reduced_residuals(Y[:, f], data, s[f], False)
        for b in range(3):
            direct = _direct_t(flips[b][codes] * r, data, s[f], False)
            assert fast[b, f] == pytest.approx(direct, rel=1e-10, abs=1e-10)


def test_same_seed_bitwise_and_batch_size_independent():
    data, Y = _data(seed=3, m=9)
    kwargs = dict(random_slopes=("dx",), n_permutations=200, seed=11)
    # batches are rounded up to whole blocks of MICRO draws: 7 -> 4 tasks, 150 -> 2 tasks
    calls = []
    a = permutation_test(
        Y,
        data,
        FIXED,
        "site",
        "dx",
        batch_size=7,
        progress=lambda done, total: calls.append((done, total)),
        **kwargs,
    )
    assert calls[-1] == (4, 4)
    b = permutation_test(Y, data, FIXED, "site", "dx", batch_size=150, **kwargs)
    c = permutation_test(Y, data, FIXED, "site", "dx", batch_size=7, scheduler="sync", **kwargs)
    for other in (b, c):
        assert np.array_equal(a.p_fwe, other.p_fwe)
        assert np.array_equal(a.p_uncorrected, other.p_uncorrected)
        assert np.array_equal(a.null_max, other.null_max)
    assert a.seed == 11 and a.n_permutations == 200 and a.null_max.shape == (200,)
    different = permutation_test(
        Y, data, FIXED, "site", "dx", random_slopes=("dx",), n_permutations=200, seed=12
    )
    assert not np.array_equal(a.null_max, different.null_max)


def test_pvalues_and_planted_effect():
    data, Y = _data(seed=4, m=8)
    Y[:, 0] += 0.7 * data["dx"].to_numpy()
    res = permutation_test(Y, data, FIXED, "site", "dx", n_permutations=199, seed=0)
    B = res.n_permutations
    expected = (1 + (res.null_max[None] >= np.abs(res.t)[:, None]).sum(1)) / (B + 1)
    np.testing.assert_array_equal(res.p_fwe, expected)
    assert (res.p_uncorrected <= res.p_fwe).all()
    assert res.p_fwe[0] == pytest.approx(1 / 200)  # the planted 0.8 SD effect
    assert res.tail is None and res.p_fwe_tail is None


def test_permutations_within_blocks_and_reproducible():
    codes = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    draws = generate_permutations(codes, 30, seed=1)
    assert (codes[draws] == codes[None]).all()
    assert (np.sort(draws, axis=1) == np.arange(9)).all()
    assert np.array_equal(draws, generate_permutations(codes, 30, seed=1))
    assert np.array_equal(draws[:10], generate_permutations(codes, 10, seed=1))


def test_tail_approximation_reported():
    data, Y = _data(seed=6, m=5)
    res = permutation_test(Y, data, FIXED, "site", "dx", n_permutations=300, seed=2, tail=True)
    assert res.tail is not None and res.tail.n_exceedances == 30
    above = np.abs(res.t) > res.tail.threshold
    assert above.any()
    assert (res.p_fwe_tail[above] < 1).all() and (res.p_fwe_tail[above] > 0).all()
    np.testing.assert_array_equal(res.p_fwe_tail[~above], res.p_fwe[~above])
    # a GPD fitted to exponential exceedances has shape close to 0
    null = np.random.default_rng(0).exponential(size=20000)
    fit = tail_approximation(null, 0.9)
    assert abs(fit.shape) < 0.05 and fit.scale == pytest.approx(1.0, rel=0.05)


def test_signflip_for_one_sample_and_errors():
    data, Y = _data(seed=7, n_sites=12, m=4)
    data["age_c"] = data["age"] - data["age"].mean()
    Y = Y - Y.mean(axis=0)
    Y[:, 0] += 1.0
    with pytest.raises(ValueError, match="constant within every 'site' block"):
        permutation_test(Y, data, ["age_c"], "site", "Intercept", n_permutations=10)
    res = permutation_test(
        Y, data, ["age_c"], "site", "Intercept", scheme="signflip", n_permutations=99, seed=0
    )
    # 2^12 whole-site flips; flipping all sites gives -t, so ties with the observed occur
    assert res.scheme == "signflip" and res.p_fwe[0] <= 0.05
    assert (res.p_fwe[1:] > 0.05).all()
    with pytest.raises(ValueError, match="scheme must be one of"):
        permutation_test(Y, data, FIXED, "site", "dx", scheme="bootstrap")
    with pytest.raises(ValueError, match="not a fixed effect"):
        permutation_test(Y, data, FIXED, "site", "sex")
    fit = mass_mixed_model(Y, data, FIXED, "site", reml=False)
    with pytest.raises(ValueError, match="variance components of shape"):
        permutation_test(Y, data, FIXED, "site", "dx", random_slopes=("dx",), fit=fit)
    bad = Y.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        permutation_test(bad, data, FIXED, "site", "dx")


def test_local_cluster_bit_identical():
    distributed = pytest.importorskip("distributed")
    data, Y = _data(seed=8, m=7)
    kwargs = dict(random_slopes=("dx",), n_permutations=150, seed=5, batch_size=6)  # 3 tasks
    local = permutation_test(Y, data, FIXED, "site", "dx", **kwargs)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = permutation_test(Y, data, FIXED, "site", "dx", client=client, **kwargs)
    assert np.array_equal(local.t, remote.t)
    assert np.array_equal(local.null_max, remote.null_max)
    assert np.array_equal(local.p_fwe, remote.p_fwe)
    assert np.array_equal(local.p_uncorrected, remote.p_uncorrected)


def test_max_t_agrees_with_nilearn_permuted_ols():
    """Without site effects the model is OLS: FWE p agree with nilearn within MC error."""
    from nilearn.mass_univariate import permuted_ols

    rng = np.random.default_rng(21)
    n, m, B = 90, 25, 400
    data = pd.DataFrame({
        "dx": np.tile([0.0, 1.0], n // 2), "age": rng.normal(40, 10, n),
        "site": np.repeat([0, 1], n // 2),
    })  # fmt: skip
    Y = rng.normal(size=(n, m)) + 0.01 * data["age"].to_numpy()[:, None]
    Y[:, :3] += np.array([0.45, 0.6, 0.75]) * data["dx"].to_numpy()[:, None]
    ours = permutation_test(Y, data, FIXED, "site", "dx", reml=True, n_permutations=B, seed=0)
    ref = permuted_ols(
        data[["dx"]].to_numpy(), Y, confounding_vars=data[["age"]].to_numpy(),
        model_intercept=True, n_perm=B, two_sided_test=True, random_state=0, n_jobs=1,
        verbose=0,
    )  # fmt: skip
    p_ref = 10 ** -np.asarray(ref["logp_max_t"]).ravel()
    se = np.sqrt(np.maximum(p_ref * (1 - p_ref), 1 / B) * 2 / B)
    assert (np.abs(ours.p_fwe - p_ref) < 4 * se + 2 / B).all()
    assert 0.005 < ours.p_fwe[0] < 0.9  # a p in the range where the comparison bites


def test_network_blocks_corrected_over_blocks():
    data, Y = _data(seed=9, m=12)
    Y[:, 8:12] += 0.5 * data["dx"].to_numpy()[:, None]
    blocks = [np.arange(0, 4), np.arange(4, 8), np.arange(8, 12)]
    res = permutation_test(
        Y,
        data,
        FIXED,
        "site",
        "dx",
        n_permutations=99,
        seed=1,
        null_statistics={"blocks": BlockMeanNull(blocks)},
    )
    means, p = block_fwe(res.t, blocks, res.null["blocks"])
    np.testing.assert_allclose(means, [res.t[b].mean() for b in blocks])
    assert p[2] <= 0.03 and (p[:2] > 0.05).all()
    assert res.null["blocks"].shape == (99,)


def test_null_components_hold_the_h0_fit_for_observed_and_flipped_t():
    """components='null': s(f) from the model without dx (slope of dx kept), for every t."""
    data, Y = _data(seed=4)
    h0 = mass_mixed_model(Y, data, ["age"], "site", random_slopes=["dx"], reml=False)
    s = np.sqrt(h0.variance_components.to_numpy() / h0.scale.to_numpy()[:, None])
    flips = generate_signflips(5, 3, seed=1)
    fast = permuted_statistics(
        Y, data, FIXED, "site", "dx", flips, ("dx",), scheme="signflip", components="null"
    )
    # the fit may also be passed in: the same numbers
    given = permuted_statistics(
        Y, data, FIXED, "site", "dx", flips, ("dx",), scheme="signflip", fit=h0,
        components="null",
    )  # fmt: skip
    np.testing.assert_array_equal(fast, given)
    codes = pd.factorize(data["site"], sort=True)[0]
    res = permutation_test(
        Y, data, FIXED, "site", "dx", ("dx",), scheme="signflip", components="null",
        n_permutations=64, seed=0,
    )  # fmt: skip
    assert res.components == "null" and res.scheme == "signflip"
    for f in range(Y.shape[1]):
        assert res.t[f] == pytest.approx(_direct_t(Y[:, f], data, s[f], True), rel=1e-9)
        r = _reduced_residuals(Y[:, f], data, s[f], True)
        for b in range(3):
            direct = _direct_t(flips[b][codes] * r, data, s[f], True)
            assert fast[b, f] == pytest.approx(direct, rel=1e-9, abs=1e-10)
    with pytest.raises(ValueError, match="components must be one of"):
        permutation_test(Y, data, FIXED, "site", "dx", components="h1", n_permutations=5)


def test_the_kinds_flip_whole_sites_with_a_slope_and_enough_sites():
    from consortium.analysis.inference import MIN_FLIP_SITES, permutation_scheme

    assert permutation_scheme(MIN_FLIP_SITES, random_slope=True) == ("signflip", "null")
    assert permutation_scheme(MIN_FLIP_SITES - 1, True) == ("permute", "observed")
    assert permutation_scheme(17, random_slope=False) == ("permute", "observed")

"""The parametric-bootstrap CI of d (consortium.analysis.d_bootstrap) and its use in dmn_model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from consortium.analysis import dmn_model, mixed_model
from consortium.analysis.d_bootstrap import (
    N_BOOT,
    bootstrap_d_ci,
    bootstrap_t,
    d_factor,
    simulate_from_fits,
)
from consortium.analysis.effects import cohens_d_ci, d_from_t
from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.mixed import build_design
from tests.consortium.analysis.conftest import simulate_sites

FIXED = ["Dx", "age"]


def _data(seed: int, slope_sd: float, n_sites: int = 8):
    return simulate_sites(seed, n_sites=n_sites, slope_sd=slope_sd).rename(columns={"dx": "Dx"})


def test_draws_follow_the_fitted_model():
    data = _data(0, 0.0, n_sites=12)
    design = build_design(data, FIXED, "site", ["Dx"])
    params = np.array([[0.5, -0.2, 0.01]])
    vc, scale = np.array([[0.3, 0.05]]), np.array([1.5])
    Y = simulate_from_fits(design, params, vc, scale, 400, np.random.default_rng(0))
    assert Y.shape == (len(data), 400)
    fit = mass_mixed_model(Y, data, FIXED, "site", random_slopes=["Dx"], reml=True)
    # REML estimates are unbiased for the fixed effects and close for the variances
    np.testing.assert_allclose(fit.params.mean().to_numpy(), params[0], atol=0.03)
    assert fit.scale.mean() == pytest.approx(1.5, rel=0.02)
    assert fit.variance_components["Intercept"].mean() == pytest.approx(0.3, rel=0.2)
    assert fit.variance_components["Dx"].mean() == pytest.approx(0.05, rel=0.35)
    with pytest.raises(ValueError, match="same fits"):
        simulate_from_fits(design, params, vc[:, :1], scale, 2, np.random.default_rng(0))


def test_same_seed_same_bits_and_shape():
    data = _data(1, 0.1)
    fit = mixed_model(data, "y", FIXED, "site", random_slopes=["Dx"], reml=False)
    args = (data, FIXED, "site", "Dx", ["Dx"], fit.params.to_numpy(),
            np.array([list(fit.variance_components.values())]), np.array([fit.scale]))  # fmt: skip
    a = bootstrap_t(*args, 50, seed=3)
    assert a.shape == (1, 50)
    np.testing.assert_array_equal(a, bootstrap_t(*args, 50, seed=3))
    assert not np.array_equal(a, bootstrap_t(*args, 50, seed=4))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_t(*args, 1, seed=0)


def test_without_site_variance_the_se_is_the_large_sample_se():
    """No slope: t* spreads like N(t, 1), so c sd(t*) is close to the Hedges-Olkin SE."""
    data = _data(2, 0.0, n_sites=10)
    fit = mixed_model(data, "y", FIXED, "site", reml=False)
    n1, n2 = int((data.Dx > 0).sum()), int((data.Dx < 0).sum())
    d = float(d_from_t(fit.tvalues["Dx"], n1, n2, fit.df_resid)[0])
    t_boot = bootstrap_t(
        data, FIXED, "site", "Dx", [], fit.params.to_numpy(),
        np.array([[fit.variance_components["Intercept"]]]), np.array([fit.scale]), 2000, 0,
    )  # fmt: skip
    low, high, se = bootstrap_d_ci(t_boot, n1, n2, fit.df_resid)
    assert se[0] == pytest.approx(cohens_d_ci(d, n1, n2)[2], rel=0.06)
    # the percentile interval is centred near d and about 2 z se wide
    assert (low[0] + high[0]) / 2 == pytest.approx(d, abs=0.2 * se[0])
    assert high[0] - low[0] == pytest.approx(2 * stats.norm.ppf(0.975) * se[0], rel=0.08)


def test_interval_is_the_percentile_of_d_star():
    t_boot = np.random.default_rng(0).normal(2.0, 1.3, (3, 500))
    low, high, se = bootstrap_d_ci(t_boot, 100, 120, 215, level=0.9)
    d_star = d_factor(100, 120, 215) * t_boot
    for f in range(3):
        ordered = np.sort(d_star[f])
        # numpy's linear interpolation between order statistics (Hyndman-Fan type 7)
        assert low[f] == pytest.approx(np.interp(0.05 * 499, np.arange(500), ordered))
        assert high[f] == pytest.approx(np.interp(0.95 * 499, np.arange(500), ordered))
        assert se[f] == pytest.approx(d_star[f].std(ddof=1))


def test_dmn_model_reports_the_bootstrap_interval():
    data = _data(5, 0.3)
    res = dmn_model(
        data.assign(dx=np.where(data.Dx > 0, "MDD", "HC"), sex=1.0, education_years=12.0,
                    mean_fd=0.1),
        "y", "MDD", "HC", covariates=["age"], site="site",
    )  # fmt: skip
    assert res.d_ci_method == "parametric bootstrap"
    fit = res.fit
    t_boot = bootstrap_t(
        data, FIXED, "site", "Dx", ["Dx"], fit.params.to_numpy(),
        np.array([[fit.variance_components["Intercept"], fit.variance_components["Dx"]]]),
        np.array([fit.scale]), N_BOOT, 0,
    )  # fmt: skip
    low, high, se = bootstrap_d_ci(t_boot, res.n_case, res.n_control, res.df)
    assert res.d_ci == pytest.approx((low[0], high[0]), rel=1e-10)
    assert res.d_se == pytest.approx(se[0], rel=1e-10)
    assert res.d_ci[0] < res.d < res.d_ci[1]


def test_no_bootstrap_asked_gives_the_large_sample_interval():
    data = _data(6, 0.1)
    res = dmn_model(
        data.assign(dx=np.where(data.Dx > 0, "MDD", "HC")), "y", "MDD", "HC",
        covariates=["age"], site="site", n_boot=0,
    )  # fmt: skip
    assert res.d_ci_method == "large-sample (no bootstrap asked)"
    low, high, _ = cohens_d_ci(res.d, res.n_case, res.n_control)
    assert res.d_ci == pytest.approx((low, high))

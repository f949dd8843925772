"""The CI of d: the site jackknife (kept for the benchmark), and dmn_model's interval."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from consortium.analysis import dmn_model, mixed_model
from consortium.analysis.effects import (
    cohens_d_ci,
    d_from_t,
    jackknife_d_ci,
    leave_one_site_out_d,
)
from tests.consortium.analysis.conftest import simulate_sites

FIXED = ["Dx", "age"]


def _data(seed: int, slope_sd: float):
    return simulate_sites(seed, n_sites=8, slope_sd=slope_sd).rename(columns={"dx": "Dx"})


def test_jackknife_ci_is_the_interval_algebra_on_refitted_models():
    data = _data(3, slope_sd=0.3)
    n1, n2 = int((data.Dx > 0).sum()), int((data.Dx < 0).sum())
    d_out = leave_one_site_out_d(data["y"].to_numpy(), data, FIXED, "site", "Dx", ["Dx"])
    # independently: refit without each site, d from its t, jackknife SE, t quantile
    manual = []
    for g in sorted(data.site.unique()):
        sub = data[data.site != g]
        fit = mixed_model(sub, "y", FIXED, "site", random_slopes=["Dx"], reml=False)
        m1, m2 = int((sub.Dx > 0).sum()), int((sub.Dx < 0).sum())
        manual.append(float(d_from_t(fit.tvalues["Dx"], m1, m2, fit.df_resid)[0]))
    np.testing.assert_allclose(d_out[:, 0], manual, rtol=1e-5)
    full = mixed_model(data, "y", FIXED, "site", random_slopes=["Dx"], reml=False)
    d = float(d_from_t(full.tvalues["Dx"], n1, n2, full.df_resid)[0])
    low, high, se = jackknife_d_ci(d, d_out[:, 0], n1, n2)
    G = len(manual)
    se_j = np.sqrt((G - 1) / G * np.sum((np.array(manual) - np.mean(manual)) ** 2))
    expected_se = max(se_j, float(cohens_d_ci(d, n1, n2)[2]))
    q = stats.t.ppf(0.975, G - 1)
    assert se == pytest.approx(expected_se, rel=1e-4)
    assert (low, high) == pytest.approx((d - q * se, d + q * se), rel=1e-12)
    assert low < d < high


def test_floor_is_the_large_sample_interval_with_t_quantiles():
    d, n1, n2 = np.array(0.3), 400, 380
    flat = np.full(10, 0.3)  # no spread between sites: se_J = 0
    low, high, se = jackknife_d_ci(d, flat, n1, n2)
    ho = cohens_d_ci(d, n1, n2)[2]
    assert se == pytest.approx(ho)
    assert high - low == pytest.approx(2 * stats.t.ppf(0.975, 9) * ho)


def test_interval_widens_with_the_site_slope_variance():
    widths = []
    for slope_sd in (0.0, 1.0):  # the same draws, slopes scaled
        data = _data(5, slope_sd=slope_sd).assign(sex=1.0)
        res = dmn_model(
            data.assign(dx=np.where(data.Dx > 0, "MDD", "HC"), education_years=12.0, mean_fd=0.1),
            "y", "MDD", "HC", covariates=["age"], site="site",
        )  # fmt: skip
        assert res.d_ci_method == "parametric bootstrap"
        assert res.d_ci[0] < res.d < res.d_ci[1]
        widths.append(res.d_ci[1] - res.d_ci[0])
    assert widths[1] > 1.2 * widths[0], widths


def test_few_sites_fall_back_and_bad_input_is_named():
    data = _data(1, slope_sd=0.1)
    two = data[data.site < 2].assign(dx=lambda x: np.where(x.Dx > 0, "MDD", "HC"))
    res = dmn_model(two, "y", "MDD", "HC", covariates=["age"], site="site")
    assert res.d_ci_method.startswith("large-sample")
    low, high, _ = cohens_d_ci(res.d, res.n_case, res.n_control)
    assert res.d_ci == pytest.approx((low, high))
    with pytest.raises(ValueError, match="at least 3 sites"):
        jackknife_d_ci(0.1, np.zeros(2), 10, 10)
    with pytest.raises(ValueError, match="d_leave_out"):
        jackknife_d_ci(np.zeros(3), np.zeros((5, 2)), 10, 10)

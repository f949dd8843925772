"""random_effects against metafor's published BCG results; g and vi; site effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special
from statsmodels.stats.meta_analysis import combine_effects

from consortium.analysis import random_effects
from consortium.analysis.meta import hedges_g_from_t, leave_one_out, site_effects


def r4(x: float) -> float:
    return round(float(x), 4)


def test_bcg_reml_matches_metafor(bcg):
    res = random_effects(*bcg, method="REML", test="z")
    assert r4(res.estimate) == -0.7145
    assert r4(res.se) == 0.1798
    assert r4(res.statistic) == -3.9744
    assert (r4(res.ci_low), r4(res.ci_high)) == (-1.0669, -0.3622)
    assert r4(res.tau2) == 0.3132
    assert r4(res.tau2_se) == 0.1664
    assert (r4(res.tau2_ci[0]), r4(res.tau2_ci[1])) == (0.1197, 1.1115)
    assert round(res.i2, 2) == 92.22
    assert round(res.h2, 2) == 12.86
    assert r4(res.q) == 152.2330 and res.q_df == 12


def test_bcg_dl_matches_metafor(bcg):
    res = random_effects(*bcg, method="DL")
    assert r4(res.estimate) == -0.7141
    assert (r4(res.ci_low), r4(res.ci_high)) == (-1.0644, -0.3638)
    assert r4(res.statistic) == -3.9952
    assert r4(res.tau2) == 0.3088
    assert r4(res.i2) == 92.1173
    assert r4(res.h2) == 12.6861


def test_bcg_knapp_hartung_matches_metafor(bcg):
    res = random_effects(*bcg, method="REML", test="knha")
    assert r4(res.se) == 0.1808
    assert r4(res.statistic) == -3.9522 and res.df == 12
    assert r4(res.pvalue) == 0.0019
    assert (r4(res.ci_low), r4(res.ci_high)) == (-1.1084, -0.3206)


@pytest.mark.parametrize("method,sm_method", [("DL", "dl"), ("PM", "pm")])
def test_dl_pm_match_statsmodels(bcg, method, sm_method):
    yi, vi = bcg
    res = random_effects(yi, vi, method=method)
    sm = combine_effects(yi, vi, method_re=sm_method)
    assert res.tau2 == pytest.approx(sm.tau2, rel=1e-6)
    assert res.estimate == pytest.approx(sm.mean_effect_re, rel=1e-8)
    assert res.se == pytest.approx(sm.sd_eff_w_re, rel=1e-6)


def test_pm_solves_its_estimating_equation(bcg):
    yi, vi = bcg
    res = random_effects(yi, vi, method="PM")
    w = 1 / (vi + res.tau2)
    mu = np.sum(w * yi) / w.sum()
    assert np.sum(w * (yi - mu) ** 2) == pytest.approx(len(yi) - 1, rel=1e-8)


def test_homogeneous_studies_give_zero_tau2():
    yi = np.array([0.1, 0.1001, 0.0999, 0.1])
    vi = np.full(4, 0.05)
    for method in ("REML", "DL", "PM"):
        res = random_effects(yi, vi, method=method)
        assert res.tau2 == 0.0
        assert res.tau2_ci == (0.0, 0.0)
        assert res.se == pytest.approx(np.sqrt(0.05 / 4))


def test_hedges_g_exact_j_and_ub_variance():
    t, n1, n2 = -2.5, 30, 25
    g, vi = hedges_g_from_t(t, n1, n2)
    m = n1 + n2 - 2
    j = special.gamma(m / 2) / (np.sqrt(m / 2) * special.gamma((m - 1) / 2))
    assert j == pytest.approx(1 - 3 / (4 * m - 1), rel=1e-4)  # Hedges' approximation
    assert g == pytest.approx(j * t * np.sqrt(1 / n1 + 1 / n2))
    assert vi == pytest.approx(1 / n1 + 1 / n2 + (1 - (m - 2) / (m * j**2)) * g**2)
    g_big, _ = hedges_g_from_t(2.0, 5000, 5000)  # gamma() would overflow here
    assert np.isfinite(g_big)


def test_site_effects_ols_t_and_min_group_size():
    rng = np.random.default_rng(2)
    rows = []
    for site, (n1, n2) in enumerate([(30, 25), (40, 42), (8, 30)]):
        dx = np.r_[np.ones(n1), -np.ones(n2)]
        age = rng.normal(40, 8, dx.size)
        rows.append(pd.DataFrame({"site": f"S{site}", "dx": dx, "age": age,
                                  "y": -0.2 * dx + 0.01 * age + rng.normal(size=dx.size)}))
    data = pd.concat(rows, ignore_index=True)
    out = site_effects(data, "y", "dx", "site", covariates=["age"])
    assert list(out.included) == [True, True, False]
    assert "fewer than 10" in out.reason[2]
    import statsmodels.api as sm

    block = data[data.site == "S0"]
    ols = sm.OLS(block.y, sm.add_constant(block[["dx", "age"]])).fit()
    assert out.t[0] == pytest.approx(ols.tvalues["dx"], rel=1e-10)
    g, v = hedges_g_from_t(ols.tvalues["dx"], 30, 25)
    assert (out.yi[0], out.vi[0]) == pytest.approx((g, v))
    with pytest.raises(TypeError, match="'dx'"):
        site_effects(data.assign(dx=np.where(data.dx > 0, "MDD", "HC")), "y", "dx", "site")


def test_leave_one_out(bcg):
    yi, vi = bcg
    table = leave_one_out(yi, vi)
    assert len(table) == len(yi)
    again = random_effects(np.delete(yi, 3), np.delete(vi, 3))
    assert table.estimate[3] == pytest.approx(again.estimate)


def test_bad_input():
    with pytest.raises(ValueError, match="positive"):
        random_effects([0.1, 0.2], [0.1, 0.0])
    with pytest.raises(ValueError, match="method"):
        random_effects([0.1, 0.2], [0.1, 0.1], method="HS")
    with pytest.raises(ValueError, match="at least 2"):
        random_effects([0.1], [0.1])

"""mixed_model against lme4's published sleepstudy fit and statsmodels MixedLM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from consortium.analysis import mixed_model
from tests.consortium.analysis.conftest import simulate_sites, statsmodels_fit


def sig4(value: float, reference: float) -> bool:
    """Equal to 4 significant digits (relative difference below 5e-4 of the reference)."""
    return abs(value - reference) <= 5e-4 * abs(reference)


def test_sleepstudy_reml_matches_lme4(sleepstudy):
    res = mixed_model(sleepstudy, "Reaction", ["Days"], "Subject", reml=True)
    assert res.converged
    for got, ref in [
        (res.params["Intercept"], 251.4051),
        (res.params["Days"], 10.4673),
        (res.bse["Intercept"], 9.7467),
        (res.bse["Days"], 0.8042),
        (res.variance_components["Intercept"], 1378.2),
        (res.scale, 960.5),
        (-2 * res.llf, 1786.465),
    ]:
        assert sig4(got, ref), (got, ref)
    assert res.df_resid == 178
    assert res.pvalues["Days"] == pytest.approx(2 * stats.t.sf(res.tvalues["Days"], 178))


def test_sleepstudy_ml_matches_lme4(sleepstudy):
    res = mixed_model(sleepstudy, "Reaction", ["Days"], "Subject", reml=False)
    for got, ref in [
        (res.bse["Intercept"], 9.5063),
        (res.bse["Days"], 0.8017),
        (res.variance_components["Intercept"], 1296.9),
        (res.scale, 954.5),
    ]:
        assert sig4(got, ref), (got, ref)
    assert sig4(res.params["Days"], 10.4673)


@pytest.mark.parametrize("reml", [True, False])
def test_sleepstudy_llf_matches_statsmodels(sleepstudy, reml):
    sm = smf.mixedlm("Reaction ~ Days", sleepstudy, groups=sleepstudy["Subject"]).fit(reml=reml)
    res = mixed_model(sleepstudy, "Reaction", ["Days"], "Subject", reml=reml)
    assert res.llf == pytest.approx(sm.llf, abs=1e-6)


@pytest.mark.parametrize("reml", [True, False])
def test_random_slope_matches_statsmodels(reml):
    data = simulate_sites(seed=3)
    res = mixed_model(data, "y", ["dx", "age", "fd"], "site", random_slopes=["dx"], reml=reml)
    sm = statsmodels_fit("y ~ dx + age + fd", data, reml, slope="dx")
    assert res.llf >= sm.llf - 1e-7
    np.testing.assert_allclose(res.params.to_numpy(), sm.fe_params.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(res.scale, sm.scale, rtol=1e-4)
    vc = res.variance_components
    np.testing.assert_allclose(vc["Intercept"], sm.cov_re.iloc[0, 0], rtol=1e-4)
    np.testing.assert_allclose(vc["dx"], sm.vcomp[0], rtol=1e-4)
    # statsmodels' bse_fe inverts the joint observed information of fixed effects and
    # variance parameters; the conditional covariance scale (X'V^-1 X)^-1 that lme4 and
    # fitlme report is the fixed-effects block of its Hessian.
    k = len(res.params)
    hess = sm.model.hessian(sm.params_object)[0][:k, :k]
    sm_bse = np.sqrt(np.diag(np.linalg.inv(-hess)))
    np.testing.assert_allclose(res.bse.to_numpy(), sm_bse, rtol=1e-5)


def test_variance_on_the_boundary_gives_ols():
    rng = np.random.default_rng(7)
    site = np.repeat(np.arange(8), 30)
    y = rng.normal(size=site.size)
    y -= pd.Series(y).groupby(site).transform("mean").to_numpy()  # identical site means
    data = pd.DataFrame({"y": y, "site": site})
    res = mixed_model(data, "y", [], "site", reml=False)
    # site means all equal: the ML site variance is exactly 0 and the fit is OLS.
    assert res.variance_components["Intercept"] == 0.0
    assert res.scale == pytest.approx(np.mean((y - y.mean()) ** 2), rel=1e-10)
    assert res.llf == pytest.approx(stats.norm.logpdf(y, y.mean(), np.sqrt(res.scale)).sum())


def test_bad_input_names_the_column(sleepstudy):
    bad = sleepstudy.copy()
    bad.loc[3, "Days"] = np.nan
    with pytest.raises(ValueError, match="'Days'"):
        mixed_model(bad, "Reaction", ["Days"], "Subject")
    with pytest.raises(KeyError, match="'Nope'"):
        mixed_model(sleepstudy, "Reaction", ["Nope"], "Subject")
    text = sleepstudy.assign(Days=sleepstudy.Days.astype(str))
    with pytest.raises(TypeError, match="'Days'"):
        mixed_model(text, "Reaction", ["Days"], "Subject")
    collinear = sleepstudy.assign(D2=2 * sleepstudy.Days)
    with pytest.raises(ValueError, match="rank deficient"):
        mixed_model(collinear, "Reaction", ["Days", "D2"], "Subject")

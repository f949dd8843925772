"""The REST-meta-MDD model: contrasts, d and CI, slope LRT, and planted-effect simulations."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from consortium.analysis import d_from_t, dmn_model, mass_mixed_model, mixed_model
from consortium.analysis.dmn import contrast_sample
from tests.consortium.analysis.conftest import restmeta_phenotypes, simulate_dmn

FIXED = ["Dx", "age", "sex", "education_years", "mean_fd"]


@pytest.fixture(scope="module")
def pheno(restmeta_design) -> pd.DataFrame:
    return restmeta_phenotypes(restmeta_design)


def test_published_design_recovers_planted_effect(pheno):
    y = simulate_dmn(pheno, 1, d=-0.2, seed=2019)[:, 0]
    data = pheno.assign(dmn=y)
    start = time.perf_counter()
    res = dmn_model(data, "dmn", case="MDD", control="HC")
    elapsed = time.perf_counter() - start
    assert (res.n_case, res.n_control, res.n_sites) == (848, 794, 17)
    assert res.df == 1642 - 6
    assert res.d_ci[0] < -0.2 < res.d_ci[1]
    assert res.d_ci[1] < 0  # detected
    # independent check of the d formula and the mixed-model t
    manual = data.assign(Dx=np.where(data.dx == "MDD", 1.0, -1.0),
                         sex=np.where(data.sex == "M", 1.0, 2.0))
    fit = mixed_model(manual, "dmn", FIXED, "site", random_slopes=["Dx"], reml=False)
    assert res.t == pytest.approx(fit.tvalues["Dx"], rel=1e-6)
    assert res.d == pytest.approx(res.t * 1642 / (np.sqrt(1636) * np.sqrt(848 * 794)))
    # two ML fits (with and without the slope) on 1,642 subjects
    assert elapsed < 5.0, elapsed


def test_planted_effect_is_unbiased_over_simulations(pheno):
    n_sims = 100
    Y = simulate_dmn(pheno, n_sims, d=-0.2, seed=7)
    data = pheno.assign(Dx=np.where(pheno.dx == "MDD", 1.0, -1.0),
                        sex=np.where(pheno.sex == "M", 1.0, 2.0))
    res = mass_mixed_model(Y, data, FIXED, "site", random_slopes=["Dx"], reml=False)
    d, low, high = d_from_t(res.tvalues["Dx"].to_numpy(), 848, 794, res.df_resid)
    assert abs(d.mean() + 0.2) < 3 * d.std(ddof=1) / np.sqrt(n_sims)
    coverage = np.mean((low < -0.2) & (-0.2 < high))
    assert stats.binom.cdf(round(coverage * n_sims), n_sims, 0.95) > 0.001, coverage


def test_no_effect_gives_nominal_false_positive_rate(pheno):
    n_sims = 200
    Y = simulate_dmn(pheno, n_sims, d=0.0, seed=11)
    data = pheno.assign(Dx=np.where(pheno.dx == "MDD", 1.0, -1.0),
                        sex=np.where(pheno.sex == "M", 1.0, 2.0))
    res = mass_mixed_model(Y, data, FIXED, "site", random_slopes=["Dx"], reml=False)
    hits = int((res.pvalues["Dx"] < 0.05).sum())
    # two-sided 99.9 % binomial acceptance region for 200 tests at the nominal 5 %
    low, high = stats.binom.ppf([0.0005, 0.9995], n_sims, 0.05)
    assert low <= hits <= high, hits


def test_contrasts_select_the_published_subgroups(pheno):
    data = pheno.assign(dmn=simulate_dmn(pheno, 1, d=0.0, seed=1)[:, 0])
    sizes = {}
    for name in ("all", "recurrent", "fedn", "fedn_vs_recurrent"):
        sample = contrast_sample(data, name, "MDD", "HC")
        sizes[name] = ((sample.Dx > 0).sum(), (sample.Dx < 0).sum())
    recurrent = ((pheno.dx == "MDD") & (pheno.episode == "recurrent")).sum()
    fedn = ((pheno.dx == "MDD") & (pheno.episode == "first") & (pheno.medication == "naive")).sum()
    assert sizes["all"] == (848, 794)
    assert sizes["recurrent"] == (recurrent, 794)
    assert sizes["fedn"] == (fedn, 794)
    assert sizes["fedn_vs_recurrent"] == (fedn, recurrent)
    res = dmn_model(data, "dmn", "MDD", "HC", contrast="fedn_vs_recurrent")
    assert (res.n_case, res.n_control) == (fedn, recurrent)
    with pytest.raises(KeyError, match="episode"):
        contrast_sample(data.drop(columns="episode"), "recurrent", "MDD", "HC")


def test_slope_lrt_detects_a_varying_effect(pheno):
    y = simulate_dmn(pheno, 1, d=-0.2, seed=5, slope_sd=0.4)[:, 0]
    res = dmn_model(pheno.assign(dmn=y), "dmn", "MDD", "HC")
    assert res.slope_lrt == pytest.approx(2 * (res.fit.llf - res.fit_no_slope.llf))
    assert res.slope_lrt_pvalue == pytest.approx(0.5 * res.slope_lrt_pvalue_chi2)
    assert res.slope_lrt_pvalue < 1e-3
    assert res.fit.variance_components["Dx"] > 0.05


def test_missing_covariates_are_counted_and_text_covariates_rejected(pheno):
    data = pheno.assign(dmn=simulate_dmn(pheno, 1, d=0.0, seed=3)[:, 0])
    data.loc[data.index[:5], "education_years"] = np.nan
    res = dmn_model(data, "dmn", "MDD", "HC")
    assert res.n_excluded == {"education_years": 5}
    assert res.n_case + res.n_control == 1642 - 5
    with pytest.raises(TypeError, match="'handedness'"):
        dmn_model(data.assign(handedness="R"), "dmn", "MDD", "HC",
                  covariates=("age", "handedness"))

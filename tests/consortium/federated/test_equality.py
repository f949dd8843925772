"""Federated algorithms equal the pooled computation on the same subjects.

The design is the published REST-meta-MDD design (1,642 subjects, real sites, ages,
sexes, education and motion); outcomes are simulated on it. Each site's message goes
through JSON and the leakage validator (see ``exchange.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.meta import random_effects, site_effects
from consortium.analysis.mixed import mixed_model
from consortium.federated.combine import (
    combine_combat_coefficients,
    combine_combat_variance,
    combine_mass,
    combine_meta,
    combine_mixed,
    combine_standardize,
)
from harmonization.combat import ComBat, CovariateEncoder
from harmonization.standardize import standardize
from tests.consortium.analysis.conftest import restmeta_phenotypes, simulate_dmn
from tests.consortium.federated.exchange import (
    COVARIATES,
    design,
    exchange,
    pooled_frame,
)

TOL = 1e-8


@pytest.fixture(scope="module")
def pheno(shared_dir) -> pd.DataFrame:
    path = shared_dir / "data" / "restmeta-pnas-design" / "design_848MDD_794NC.csv"
    return restmeta_phenotypes(pd.read_csv(path), seed=4)


@pytest.fixture(scope="module")
def dmn(pheno) -> np.ndarray:
    return simulate_dmn(pheno, n_outcomes=1, d=0.2, seed=5, slope_sd=0.1)[:, 0]


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=tol, atol=tol)


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("slope", [False, True])
def test_dmn_mixed_model_equals_pooled(pheno, dmn, reml, slope):
    seen = []
    params = {"design": design(slope), "dims": {"feature": 1}}
    messages, _ = exchange("mixed_stats", params, pheno, dmn, seen=seen)
    got = combine_mixed(messages, params["design"], reml)
    data = pooled_frame(pheno).assign(y=dmn)
    ref = mixed_model(data, "y", ["dx", *COVARIATES], "site", ["dx"] if slope else [], reml)
    _close(got.params, ref.params)
    _close(got.bse, ref.bse)
    _close(got.tvalues, ref.tvalues)
    _close(got.llf, ref.llf)
    _close(list(got.variance_components.values()), list(ref.variance_components.values()))
    assert got.nobs == ref.nobs == len(pheno)
    assert got.n_groups == ref.n_groups == pheno.site.nunique()
    assert len(seen) == pheno.site.nunique()


def test_mass_edges_equal_pooled(pheno):
    Y = simulate_dmn(pheno, n_outcomes=120, d=0.1, seed=6, slope_sd=0.05)
    params = {"design": design(True), "dims": {"feature": Y.shape[1]}}
    messages, _ = exchange("mass_stats", params, pheno, Y)
    got = combine_mass(messages, params["design"], reml=False)
    ref = mass_mixed_model(Y, pooled_frame(pheno), ["dx", *COVARIATES], "site", ["dx"], reml=False)
    for name in ("params", "bse", "tvalues", "variance_components"):
        _close(getattr(got, name).to_numpy(), getattr(ref, name).to_numpy())
    _close(got.llf, ref.llf)


def test_meta_from_site_summaries_equals_site_effects(pheno, dmn):
    params = {"design": design(False), "min_per_group": 10}
    messages, _ = exchange("meta_summary", params, pheno, dmn)
    table, pooled = combine_meta(messages)
    data = pooled_frame(pheno).assign(y=dmn)
    ref = site_effects(data, "y", "dx", "site", COVARIATES, min_per_group=10)
    ref_pooled = random_effects(ref[ref.included].yi, ref[ref.included].vi)
    assert table.site.tolist() == ref.site.tolist()
    assert table.included.tolist() == ref.included.tolist()
    inc = ref.included.to_numpy()
    for col in ("t", "df", "yi", "vi"):
        _close(table[col].to_numpy()[inc], ref[col].to_numpy()[inc], 1e-12)
    assert pooled.k == ref_pooled.k
    _close([pooled.estimate, pooled.se, pooled.tau2, pooled.q],
           [ref_pooled.estimate, ref_pooled.se, ref_pooled.tau2, ref_pooled.q], 1e-10)
    refused = [m for m in messages if m["status"] == "refused"]
    assert all("minimum cell size" in m["reason"] for m in refused)


@pytest.fixture(scope="module")
def maps(pheno) -> np.ndarray:
    rng = np.random.default_rng(8)
    site = pd.factorize(pheno.site)[0]
    scale = rng.gamma(5, 0.2, site.max() + 1)[site]
    offset = rng.normal(1.0, 0.2, site.max() + 1)[site]
    return offset[:, None] + scale[:, None] * rng.normal(1, 0.3, (len(pheno), 200))


@pytest.mark.parametrize("method", ["mean_regression", "mean_regression_sd"])
def test_consortium_wide_standardization_equals_pooled(pheno, maps, method):
    sums, _ = exchange("standardize_sums", {"dims": {"feature": 200}}, pheno, maps)
    pooled = combine_standardize(sums)
    params = {"method": method, "pooled": {k: np.asarray(v).tolist() if np.ndim(v) else v
                                           for k, v in pooled.items()}}
    acks, kept = exchange("standardize_apply", params, pheno, maps)
    got = np.empty_like(maps)
    for site, out in kept.items():
        got[(pheno.site == site).to_numpy()] = out
    np.testing.assert_allclose(got, standardize(maps, method), rtol=0, atol=1e-10)
    assert sum(m["scalars"]["n_written"] for m in acks) == len(pheno)
    # the site-local version differs: the federated one really is consortium-wide
    first = (pheno.site == sorted(kept)[0]).to_numpy()
    assert np.abs(standardize(maps[first], method) - got[first]).max() > 1e-3


def test_distributed_combat_equals_pooled(pheno, maps):
    from harmonization.distributed import DesignSpec

    cov = pheno[["age", "sex"]].reset_index(drop=True)
    encoder = CovariateEncoder().fit(cov)
    sites = tuple(sorted(pheno.site.unique()))
    base = {"sites": list(sites), "encoder": {"columns": encoder.columns, "levels": encoder.levels},
            "dims": {"feature": maps.shape[1]}}
    spec = DesignSpec(sites, encoder)
    stats, _ = exchange("combat_stats", base, pheno, maps)
    coef = combine_combat_coefficients(spec, stats)
    resid, _ = exchange("combat_residuals", {**base, "coef": coef.coef.tolist()}, pheno, maps)
    model = combine_combat_variance(spec, {m["site"]: m["n"] for m in stats}, coef, resid)
    wire = {"coef": model.coef.tolist(), "grand_mean": model.grand_mean.tolist(),
            "var_pooled": model.var_pooled.tolist(), "n_sites": model.n_sites, "ref_site": None}
    _, kept = exchange("combat_apply", {**base, "model": wire}, pheno, maps)
    got = np.empty_like(maps)
    for site, out in kept.items():
        got[(pheno.site == site).to_numpy()] = out
    expected = ComBat().fit_transform(maps, pheno.site.to_numpy(), cov)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_pooled_and_federated_cross_products_are_bit_identical(pheno):
    """The pooled fit stacks the very sums the sites send (one definition, same order)."""
    from consortium.analysis.mixed import build_design, cross_products
    from consortium.federated.combine import cross_products_of

    Y = simulate_dmn(pheno, n_outcomes=40, d=0.1, seed=8, slope_sd=0.05)
    params = {"design": design(True), "dims": {"feature": Y.shape[1]}}
    messages, _ = exchange("mass_stats", params, pheno, Y)
    got = cross_products_of(messages)
    ref = cross_products(build_design(pooled_frame(pheno), ["dx", *COVARIATES], "site", ["dx"]), Y)
    for name in ("ZZ", "ZW", "WW"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    assert got.nobs == ref.nobs

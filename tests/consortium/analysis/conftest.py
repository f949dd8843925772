"""Fixtures of the analysis tests: published data sets and small simulated consortia."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def sleepstudy(reference_dir) -> pd.DataFrame:
    return pd.read_csv(reference_dir / "mixed" / "sleepstudy.csv")


@pytest.fixture(scope="session")
def bcg(reference_dir) -> tuple[np.ndarray, np.ndarray]:
    d = pd.read_csv(reference_dir / "meta" / "bcg.csv")
    yi = np.log((d.tpos / (d.tpos + d.tneg)) / (d.cpos / (d.cpos + d.cneg)))
    vi = 1 / d.tpos - 1 / (d.tpos + d.tneg) + 1 / d.cpos - 1 / (d.cpos + d.cneg)
    return yi.to_numpy(), vi.to_numpy()


@pytest.fixture(scope="session")
def restmeta_design(shared_dir) -> pd.DataFrame:
    return pd.read_csv(shared_dir / "data" / "restmeta-pnas-design" / "design_848MDD_794NC.csv")


def simulate_sites(seed: int, n_sites: int = 10, slope_sd: float = 0.3) -> pd.DataFrame:
    """An unbalanced multi-site sample with site intercepts and site Dx slopes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(20, 70, n_sites)
    site = np.repeat(np.arange(n_sites), sizes)
    n = site.size
    dx = rng.choice([-1.0, 1.0], n)
    age = rng.normal(40, 10, n)
    fd = rng.gamma(2.0, 0.05, n)
    y = (
        0.3
        + 0.2 * dx
        + 0.01 * age
        + rng.normal(0, 0.5, n_sites)[site]
        + rng.normal(0, slope_sd, n_sites)[site] * dx
        + rng.normal(0, 1, n)
    )
    return pd.DataFrame({"y": y, "dx": dx, "age": age, "fd": fd, "site": site})


def statsmodels_fit(formula: str, data: pd.DataFrame, reml: bool, slope: str | None = None):
    """statsmodels MixedLM with site groups, Nelder-Mead run to tight tolerances.

    statsmodels' default optimizer often stops early on these likelihoods (above all
    REML with a variance-component slope); its Nelder-Mead with tight tolerances
    reaches the optimum (the tests also require our log-likelihood to be at least as high).
    """
    import warnings

    import statsmodels.formula.api as smf

    vc = {slope: f"0 + {slope}"} if slope else None
    model = smf.mixedlm(formula, data, groups="site", re_formula="1", vc_formula=vc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(reml=reml, method=["nm"], xtol=1e-12, ftol=1e-14, maxiter=20000)


def restmeta_phenotypes(design: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Canonical phenotype columns for the published design (episode/medication simulated).

    The design file has no episode or medication; patients are split at random into
    first-episode drug-naive, first-episode treated and recurrent to exercise contrasts.
    """
    rng = np.random.default_rng(seed)
    mdd = design.Dx.to_numpy() == 1
    kind = rng.choice(["fedn", "first_treated", "recurrent"], size=len(design), p=[0.3, 0.2, 0.5])
    return pd.DataFrame({
        "site": design.Site.astype(str).radd("S").to_numpy(),
        "dx": np.where(mdd, "MDD", "HC"),
        "age": design.Age.astype(float).to_numpy(),
        "sex": np.where(design.Sex.to_numpy() == 1, "M", "F"),
        "education_years": design.Edu.to_numpy(),
        "mean_fd": design.Motion.to_numpy(),
        "episode": np.where(mdd, np.where(kind == "recurrent", "recurrent", "first"), None),
        "medication": np.where(mdd, np.where(kind == "fedn", "naive", "treated"), None),
    })


def expected_d_per_unit_beta(pheno: pd.DataFrame, site_sd: float, slope_sd: float) -> float:
    """The published d (from the mixed-model t) that a Dx coefficient of 1 produces.

    Computed densely and independently of the package: GLS variance of the Dx
    coefficient with the true covariance V = I + site_sd^2 S + slope_sd^2 S o (dx dx'),
    expected t = 1 / se, then d = t (n1 + n2) / (sqrt(n - p) sqrt(n1 n2)). It is below
    2 (the coefficient-scale d of +1/-1 coding) because Dx is correlated with the
    covariates and unevenly spread over sites, and because slopes add variance.
    """
    dx = np.where(pheno.dx == "MDD", 1.0, -1.0)
    sex = np.where(pheno.sex == "M", 1.0, 2.0)
    X = np.column_stack([np.ones(len(pheno)), dx, pheno.age, sex, pheno.education_years,
                         pheno.mean_fd])
    site = pd.factorize(pheno.site)[0]
    same = (site[:, None] == site[None, :]).astype(float)
    V = np.eye(len(pheno)) + site_sd**2 * same + slope_sd**2 * same * np.outer(dx, dx)
    se = np.sqrt(np.linalg.inv(X.T @ np.linalg.solve(V, X))[1, 1])
    n1, n2 = int((dx > 0).sum()), int((dx < 0).sum())
    return float((1 / se) * (n1 + n2) / (np.sqrt(len(dx) - X.shape[1]) * np.sqrt(n1 * n2)))


def simulate_dmn(pheno: pd.DataFrame, n_outcomes: int, d: float, seed: int,
                 site_sd: float = 0.3, slope_sd: float = 0.02) -> np.ndarray:
    """Outcomes (subjects x n_outcomes) with a planted effect of MDD vs HC.

    The Dx coefficient is set so that the expected d of the published analysis (d from
    the mixed-model t) equals ``d`` on this design (see expected_d_per_unit_beta).
    """
    rng = np.random.default_rng(seed)
    beta = d / expected_d_per_unit_beta(pheno, site_sd, slope_sd) if d else 0.0
    dx = np.where(pheno.dx == "MDD", 1.0, -1.0)[:, None]
    site = pd.factorize(pheno.site)[0]
    n_sites = site.max() + 1
    covariates = (0.004 * (pheno.age.to_numpy() - 35) - 0.3 * (pheno.mean_fd.to_numpy() - 0.1)
                  + 0.02 * (pheno.sex == "M").to_numpy())[:, None]
    return (
        0.25 + beta * dx + covariates
        + rng.normal(0, site_sd, (n_sites, n_outcomes))[site]
        + rng.normal(0, slope_sd, (n_sites, n_outcomes))[site] * dx
        + rng.normal(0, 1, (len(pheno), n_outcomes))
    )

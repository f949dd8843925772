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
    """statsmodels MixedLM with site groups, the best of several optimizers.

    statsmodels' default optimizer sometimes stops early on these likelihoods (above
    all REML with a variance-component slope), so the fit with the highest
    log-likelihood among several optimizers, run to tight tolerances, is the reference.
    """
    import warnings

    import statsmodels.formula.api as smf

    vc = {slope: f"0 + {slope}"} if slope else None
    model = smf.mixedlm(formula, data, groups="site", re_formula="1", vc_formula=vc)
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in (["bfgs"], ["nm"]):
            try:
                fit = model.fit(
                    reml=reml, method=method, gtol=1e-12, xtol=1e-12, ftol=1e-14, maxiter=20000
                )
            except (np.linalg.LinAlgError, ValueError):
                continue
            if best is None or fit.llf > best.llf:
                best = fit
    return best

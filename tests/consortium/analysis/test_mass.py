"""mass_mixed_model against statsmodels MixedLM fitted feature by feature."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from consortium.analysis import mass_mixed_model, mixed_model
from tests.consortium.analysis.conftest import statsmodels_fit

N_FEATURES = 20


@pytest.fixture(scope="module")
def consortium_features() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(11)
    sizes = rng.integers(25, 60, 8)
    site = np.repeat(np.arange(8), sizes)
    n = site.size
    data = pd.DataFrame({
        "site": site,
        "dx": rng.choice([-1.0, 1.0], n),
        "age": rng.normal(35, 10, n),
        "fd": rng.gamma(2.0, 0.05, n),
    })
    site_sd = rng.uniform(0.0, 0.6, N_FEATURES)  # some features with no site effect
    slope_sd = rng.uniform(0.0, 0.4, N_FEATURES)
    Y = (
        -0.15 * data.dx.to_numpy()[:, None]
        + 0.01 * data.age.to_numpy()[:, None]
        + rng.normal(size=(8, N_FEATURES))[site] * site_sd
        + rng.normal(size=(8, N_FEATURES))[site] * slope_sd * data.dx.to_numpy()[:, None]
        + rng.normal(size=(n, N_FEATURES))
    )
    return data, Y


def _assert_close(ours: np.ndarray, ref: np.ndarray, bse: np.ndarray) -> None:
    # relative 1e-5; a coefficient close to zero is judged on the scale of its SE
    err = np.abs(ours - ref)
    assert np.all(err <= 1e-5 * np.maximum(np.abs(ref), bse)), err.max()


@pytest.mark.parametrize(
    "slopes,reml", [((), True), (("dx",), False)], ids=["intercept-reml", "dx-slope-ml"]
)
def test_matches_statsmodels_feature_by_feature(consortium_features, slopes, reml):
    data, Y = consortium_features
    fixed = ["dx", "age", "fd"]
    res = mass_mixed_model(Y, data, fixed, "site", random_slopes=slopes, reml=reml)
    assert res.params.shape == (N_FEATURES, 4)
    assert res.converged.all()
    k = len(fixed) + 1
    for f in range(N_FEATURES):
        sm = statsmodels_fit("y ~ dx + age + fd", data.assign(y=Y[:, f]), reml,
                             slope=slopes[0] if slopes else None)
        assert res.llf.iloc[f] >= sm.llf - 1e-7
        hess = sm.model.hessian(sm.params_object)[0][:k, :k]
        sm_bse = np.sqrt(np.diag(np.linalg.inv(-hess)))
        sm_t = sm.fe_params.to_numpy() / sm_bse
        _assert_close(res.params.iloc[f].to_numpy(), sm.fe_params.to_numpy(), sm_bse)
        _assert_close(res.tvalues.iloc[f].to_numpy(), sm_t, np.ones(k))


def test_equals_single_model_fits_and_dask(consortium_features):
    data, Y = consortium_features
    fixed = ["dx", "age"]
    res = mass_mixed_model(Y, data, fixed, "site", random_slopes=["dx"], reml=False,
                           chunk_size=7)
    for f in (0, 9, 19):
        one = mixed_model(data.assign(y=Y[:, f]), "y", fixed, "site", random_slopes=["dx"],
                          reml=False)
        np.testing.assert_allclose(res.tvalues.iloc[f], one.tvalues, rtol=1e-5, atol=1e-6)
        assert res.llf.iloc[f] == pytest.approx(one.llf, abs=1e-6)
    # batched linear algebra may round differently for another chunking, not for the same
    same = mass_mixed_model(Y, data, fixed, "site", random_slopes=["dx"], reml=False,
                            chunk_size=6)
    np.testing.assert_allclose(same.params.to_numpy(), res.params.to_numpy(), rtol=1e-9)
    lazy = mass_mixed_model(da.from_array(Y, chunks=(50, 6)), data, fixed, "site",
                            random_slopes=["dx"], reml=False, chunk_size=6)
    np.testing.assert_array_equal(lazy.params.to_numpy(), same.params.to_numpy())
    np.testing.assert_array_equal(lazy.pvalues.to_numpy(), same.pvalues.to_numpy())


def test_dask_distributed_client(consortium_features):
    import distributed

    data, Y = consortium_features
    ref = mass_mixed_model(Y[:, :6], data, ["dx"], "site")
    with distributed.Client(n_workers=1, threads_per_worker=1, processes=False,
                            dashboard_address=":0"):
        res = mass_mixed_model(da.from_array(Y[:, :6], chunks=(-1, 3)), data, ["dx"], "site",
                               chunk_size=3)
    # Equal up to rounding: BLAS may sum in another order on a worker thread.
    np.testing.assert_allclose(res.tvalues.to_numpy(), ref.tvalues.to_numpy(), rtol=1e-12)


def test_bad_features_are_named(consortium_features):
    data, Y = consortium_features
    bad = Y.copy()
    bad[4, 13] = np.nan
    with pytest.raises(ValueError, match="feature 13"):
        mass_mixed_model(bad, data, ["dx"], "site")
    with pytest.raises(ValueError, match="rows"):
        mass_mixed_model(Y[:-1], data, ["dx"], "site")

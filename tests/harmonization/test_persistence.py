"""to_bytes / from_bytes round trips on both engines; sklearn parameters and clone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from harmonization.combat import ComBat
from harmonization.dask_combat import DaskComBat
from harmonization.gam import GAMComBat


def _data(n=80, V=10, seed=3):
    rng = np.random.default_rng(seed)
    sites = np.repeat(["s1", "s2", "s3", "s4"], n // 4)
    idx = np.unique(sites, return_inverse=True)[1]
    age = rng.uniform(10, 70, n)
    X = age[:, None] / 30 + rng.normal(0, 1, (4, V))[idx] + rng.normal(size=(n, V))
    return X, sites, pd.DataFrame({"age": age, "sex": rng.choice(["F", "M"], n)})


def _as_numpy(out):
    return out.compute() if hasattr(out, "compute") else out


@pytest.mark.parametrize(
    "make",
    [
        lambda: ComBat(),
        lambda: ComBat(ref_site="s2"),
        lambda: ComBat(engine="dask", chunk=4),
        lambda: DaskComBat(),
        lambda: DaskComBat(ref_site="s3", chunk=3),
        lambda: GAMComBat(),
        lambda: GAMComBat(engine="dask"),
    ],
    ids=["combat", "combat-ref", "combat-dask-engine", "dask", "dask-ref", "gam", "gam-dask"],
)
def test_round_trip_bit_for_bit(make):
    X, sites, cov = _data()
    est = make().fit(X, sites, cov)
    loaded = type(est).from_bytes(est.to_bytes())
    assert loaded.get_params() == {**est.get_params(), **_json_normalised(est)}
    got = _as_numpy(loaded.transform(X, sites, cov))
    np.testing.assert_array_equal(got, _as_numpy(est.transform(X, sites, cov)))
    for name in ("lambda_", "edf_"):
        if hasattr(est, name):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(est, name))


def _json_normalised(est):
    """Tuple parameters come back from the JSON metadata as lists."""
    return {k: list(v) for k, v in est.get_params().items() if isinstance(v, tuple)}


def test_client_is_not_stored_and_class_is_checked():
    X, sites, cov = _data()
    est = ComBat().fit(X, sites, cov)
    with pytest.raises(ValueError, match="holds a ComBat model; load it with that class"):
        DaskComBat.from_bytes(est.to_bytes())
    with pytest.raises(ValueError, match="not a saved ComBat model"):
        ComBat.from_bytes(b"not a model")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ComBat().to_bytes()


def test_clone_get_set_params_and_validation_at_fit():
    est = ComBat(eb="yes", chunk=-1)  # no validation in __init__
    assert clone(est).get_params() == est.get_params()
    X, sites, cov = _data()
    with pytest.raises(ValueError, match="eb must be True or False"):
        est.fit(X, sites, cov)
    est.set_params(eb=True, chunk=None)
    assert not hasattr(est, "coef_")
    fitted = est.fit(X, sites, cov)
    assert fitted is est and not hasattr(clone(est), "coef_")
    gam = GAMComBat(smooth_terms="age")
    with pytest.raises(ValueError, match="smooth_terms must be a non-empty sequence"):
        gam.fit(X, sites, cov)
    assert DaskComBat().get_params()["new_sites"] == "error"
    assert "engine" not in DaskComBat().get_params()


def test_sites_positional_keyword_and_missing():
    X, sites, cov = _data()
    a = ComBat().fit_transform(X, sites, cov)
    b = ComBat().fit(X, sites=sites, covariates=cov).transform(X, sites=sites, covariates=cov)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="pass the site labels"):
        ComBat().fit(X)


def test_numpy_engine_refuses_a_client():
    X, sites, cov = _data()
    with pytest.raises(ValueError, match="client is used only by engine='dask'"):
        ComBat(client=object()).fit(X, sites, cov)

"""Distributed ComBat (Chen et al. 2022) equals pooled ComBat; messages hold no subject rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harmonization.combat import ComBat, CovariateEncoder
from harmonization.distributed import (
    DesignSpec,
    pool_coefficients,
    pool_variance,
    site_harmonize,
    site_residuals,
    site_stats,
)


def _run(X, sites, cov, ref=None, **options):
    labels = tuple(sorted(set(sites)))
    spec = DesignSpec(labels, CovariateEncoder().fit(cov), ref_site=ref)
    local = {s: (X[sites == s], cov[sites == s].reset_index(drop=True)) for s in labels}
    messages = []
    stats = [site_stats(spec, s, *local[s]) for s in labels]
    coef = pool_coefficients(spec, stats)
    resid = [site_residuals(spec, s, local[s][0], coef, local[s][1]) for s in labels]
    model = pool_variance(spec, {m.site: m.n for m in stats}, coef, resid)
    messages += stats + [coef] + resid + [model]
    out = np.empty_like(X)
    for s in labels:
        out[sites == s] = site_harmonize(spec, s, local[s][0], model, local[s][1], **options)[0]
    return out, messages


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    sizes = [31, 17, 45, 23, 12, 38]
    sites = np.repeat([f"h{k}" for k in range(len(sizes))], sizes)
    n, V = sites.size, 70
    idx = np.unique(sites, return_inverse=True)[1]
    cov = pd.DataFrame({"age": rng.uniform(20, 70, n), "sex": rng.choice(["F", "M"], n)})
    X = (
        rng.normal(size=(n, V)) * rng.gamma(4, 0.3, (6, V))[idx]
        + rng.normal(0, 1, (6, V))[idx]
        + cov[["age"]].to_numpy() / 25
    )
    return X, sites, cov


@pytest.mark.parametrize(
    "options, ref",
    [({}, None), ({"eb": False}, None), ({"parametric": False}, None), ({"mean_only": True}, None),
     ({}, "h2")],
)  # fmt: skip
def test_equals_pooled_combat(data, options, ref):
    X, sites, cov = data
    got, messages = _run(X, sites, cov, ref=ref, **options)
    expected = ComBat(ref_site=ref, **options).fit_transform(X, sites, cov)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    site_sizes = {int((sites == s).sum()) for s in set(sites)} | {X.shape[0]}
    for m in messages:
        for name, arr in m.arrays().items():
            assert not set(arr.shape) & site_sizes, f"{type(m).__name__}.{name} {arr.shape}"
            assert arr.ndim <= 2 and arr.shape[-1] in (X.shape[1], arr.shape[0])


def test_errors_name_the_site(data):
    X, sites, cov = data
    spec = DesignSpec(("h0", "h1"), CovariateEncoder().fit(cov))
    with pytest.raises(ValueError, match="site 'h9' is not in the agreed design"):
        site_stats(spec, "h9", X[:5], cov[:5])
    bad = X[:5].copy()
    bad[2, 7] = np.inf
    with pytest.raises(ValueError, match="site 'h0': .*subject row 2, feature index 7"):
        site_stats(spec, "h0", bad, cov[:5])
    with pytest.raises(ValueError, match=r"expected statistics from sites \['h0', 'h1'\]"):
        pool_coefficients(spec, [site_stats(spec, "h0", X[:5], cov[:5])])

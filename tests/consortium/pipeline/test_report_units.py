"""Units behind the report: harmonization diagnostics and covariate sensitivity."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from consortium.analysis.diagnostics import HarmonizationDiagnostics, harmonization_diagnostics
from consortium.analysis.sensitivity import (
    CovariateSensitivity,
    MainEffect,
    covariate_sensitivity,
)
from harmonization.registry import make_harmonizer


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    sites = np.repeat(["s1", "s2", "s3"], [12, 15, 10])
    X = rng.normal(0, 1, (len(sites), 40))
    X += np.select([sites == "s2", sites == "s3"], [1.0, -0.5], 0.0)[:, None]
    X *= np.select([sites == "s3"], [2.0], 1.0)[:, None]
    covariates = pd.DataFrame({"age": rng.uniform(20, 60, len(sites))})
    model = make_harmonizer("combat")
    after = model.fit_transform(X, sites, covariates)
    return X, after, sites, model


def test_site_moments_and_estimates_equal_numpy(arrays):
    X, after, sites, model = arrays
    diag = harmonization_diagnostics(X, after, sites, harmonizer="combat", model=model)
    for row in diag.sites:
        m = sites == row.site
        assert (row.n, row.mean_before, row.mean_after) == (
            m.sum(), pytest.approx(X[m].mean()), pytest.approx(after[m].mean()))
        assert row.var_before == pytest.approx(X[m].var(axis=0, ddof=1).mean())
        assert row.var_after == pytest.approx(after[m].var(axis=0, ddof=1).mean())
    low, q1, med, q3, high = np.percentile(model.delta_star_[2], [5, 25, 50, 75, 95])
    s3 = diag.scale[2]
    assert (s3.site, s3.low, s3.q1, s3.median, s3.q3, s3.high) == (
        "s3", pytest.approx(low), pytest.approx(q1), pytest.approx(med), pytest.approx(q3),
        pytest.approx(high))
    assert diag.between_site_sd("after") < diag.between_site_sd("before") / 5
    assert HarmonizationDiagnostics.from_dict(diag.to_dict()) == diag


def test_dask_input_gives_the_same_moments(arrays):
    X, after, sites, model = arrays
    eager = harmonization_diagnostics(X, after, sites, harmonizer="combat")
    lazy = harmonization_diagnostics(da.from_array(X, chunks=(len(X), 7)),
                                     da.from_array(after, chunks=(len(X), 7)), sites,
                                     harmonizer="combat")
    assert [vars(r) == pytest.approx(vars(s)) for r, s in zip(lazy.sites, eager.sites,
                                                              strict=True)] == [True] * 3
    assert lazy.location == () and lazy.scale == ()  # no model: no estimates


def test_diagnostics_refuse_mismatched_inputs(arrays):
    X, after, sites, _ = arrays
    with pytest.raises(ValueError, match="before .* and after .* differ"):
        harmonization_diagnostics(X, after[:, :3], sites, harmonizer="combat")
    with pytest.raises(ValueError, match="sites has 2 labels for 37 subjects"):
        harmonization_diagnostics(X, after, sites[:2], harmonizer="combat")


def test_sensitivity_refits_each_covariate_left_out_and_records_failures():
    calls = []

    def fit(covariates):
        calls.append(covariates)
        if covariates == ("age", "sex"):
            raise ValueError("singular design")
        return MainEffect(t=float(len(covariates)), d=0.1 * len(covariates), estimate=1.0, p=0.5)

    table = covariate_sensitivity(fit, ["age", "sex", "mean_fd"], outcome="y", harmonizer="none")
    assert calls == [("age", "sex", "mean_fd"), ("sex", "mean_fd"), ("age", "mean_fd"),
                     ("age", "sex")]
    assert [r.left_out for r in table.rows] == [None, "age", "sex", "mean_fd"]
    assert table.rows[0].effect.t == 3.0 and table.rows[3].effect is None
    assert table.rows[3].error == "singular design"
    assert CovariateSensitivity.from_dict(table.to_dict()) == table
    main = MainEffect(t=9.0, d=0.9)
    table = covariate_sensitivity(fit, ["age"], outcome="y", harmonizer="none", main=main)
    assert table.rows[0].effect is main and calls[-1] == ()


def test_mass_summary_counts_fdr_and_takes_the_peak():
    effect = MainEffect.from_mass(np.array([1.0, -4.0, 2.5]), np.array([0.1, -0.8, 0.4]),
                                  np.array([0.2, 0.01, 0.04]))
    assert (effect.t, effect.d, effect.n_significant, effect.n_features) == (-4.0, -0.8, 2, 3)

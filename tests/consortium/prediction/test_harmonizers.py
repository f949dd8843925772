"""In-fold harmonization through the harmonizer registry (``--harmonize NAME``).

The in-fold harmonized features must equal the library's estimator fitted
directly on the training fold (diagnosis as a covariate) and applied to the
test fold with the diagnosis fixed at the training case fraction.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from consortium.analysis import prediction as P
from consortium.analysis.encodings import encode_sex
from consortium.analysis.prediction import crossval as CV
from consortium.cli.main import app
from harmonization.combat import ComBat
from harmonization.gam import GAMComBat
from harmonization.registry import register_harmonizer, unregister_harmonizer
from tests.helpers.bundles import synthetic_bundle
from tests.helpers.keys import make_keys

from .conftest import simulate_sites

HELD_OUT = "site3"


def _fold():
    """Simulated features and one leave-site-out fold whose test ages lie in the training range."""
    feats = simulate_sites(seed=8, n_sites=5, n_per_site=24, n_features=40, effect=1.0)
    test = np.flatnonzero(feats.sites == HELD_OUT)
    train = np.flatnonzero(feats.sites != HELD_OUT)
    ages = feats.subjects["age"].to_numpy()
    lo, hi = ages[train].min(), ages[train].max()
    feats.subjects.loc[test, "age"] = np.clip(ages[test], lo, hi)
    return feats, train, test


def _design(subjects: pd.DataFrame, dx: np.ndarray | float) -> pd.DataFrame:
    """age, sex (the shared coding) and dx, built here independently of the prediction code."""
    return pd.DataFrame({
        "age": subjects["age"].to_numpy(dtype=float),
        "sex": encode_sex(subjects["sex"]),
        "dx": dx,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("name", "library"),
    [("combat-gam", lambda: GAMComBat(smooth_terms=("age",))), ("combat", ComBat)],
)
def test_in_fold_features_equal_the_library_fitted_on_the_training_fold(name, library):
    feats, train, test = _fold()
    config = P.PredictionConfig(harmonize=name, models=["logistic"], grid=[0.1])
    data = CV._prepare(feats, config)
    Xtr, Xte = CV._harmonized(data, train, test, feats.y[train], config)

    subjects = feats.subjects
    model = library()
    fill = feats.y[train].mean()
    expected_tr = model.fit_transform(
        feats.X[train], feats.sites[train], _design(subjects.iloc[train], feats.y[train] * 1.0)
    )
    expected_te = model.transform(feats.X[test], feats.sites[test],
                                  _design(subjects.iloc[test], fill))  # fmt: skip
    np.testing.assert_allclose(Xtr, expected_tr, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Xte, expected_te, rtol=1e-10, atol=1e-12)
    assert not np.allclose(Xte, feats.X[test])  # the held-out site was adjusted


def test_gam_fold_harmonizer_records_its_estimator():
    feats, train, _ = _fold()
    harm = P.FoldHarmonizer("combat-gam")
    harm.fit_transform(feats.X[train], feats.sites[train], feats.subjects.iloc[train],
                       feats.y[train])  # fmt: skip
    assert isinstance(harm.harmonizer_, GAMComBat) and harm.columns_ == ["age", "sex", "dx"]
    assert harm.harmonizer_.lambda_.shape == (feats.X.shape[1],)  # one smoothing per feature


class _Demean:
    """A toy harmonizer: site means removed (registered only inside the test)."""

    def fit(self, X, sites, covariates=None):
        return self

    def transform(self, X, sites, covariates=None):
        X = np.asarray(X, dtype=float).copy()
        sites = np.asarray(sites)
        for s in np.unique(sites):
            X[sites == s] -= X[sites == s].mean(axis=0)
        return X

    def fit_transform(self, X, sites, covariates=None):
        return self.fit(X, sites, covariates).transform(X, sites, covariates)


def test_any_registered_harmonizer_runs_in_the_folds():
    register_harmonizer("toy-demean", _Demean, description="site means removed")
    try:
        feats = simulate_sites(seed=9, n_sites=4, n_per_site=20, n_features=20, effect=2.0)
        config = P.PredictionConfig(schemes=["leave-one-site-out"], models=["logistic"],
                                    grid=[0.1], harmonize="toy-demean")  # fmt: skip
        data = CV._prepare(feats, config)
        test = np.flatnonzero(feats.sites == "site0")
        train = np.flatnonzero(feats.sites != "site0")
        _, Xte = CV._harmonized(data, train, test, feats.y[train], config)
        np.testing.assert_allclose(Xte.mean(axis=0), 0, atol=1e-12)
        [res] = P.cross_validate(feats, config)
        assert res["pooled"]["n"] == 80
    finally:
        unregister_harmonizer("toy-demean")
    with pytest.raises(P.PredictionError, match="unknown harmonizer 'toy-demean'"):
        P.cross_validate(feats, config)


def test_combat_ref_options_are_checked():
    feats = simulate_sites(seed=9, n_sites=4, n_per_site=20, n_features=20)
    with pytest.raises(P.PredictionError, match="needs the option 'ref_site'"):
        P.cross_validate(feats, P.PredictionConfig(harmonize="combat-ref"))
    with pytest.raises(P.PredictionError, match="has no option 'smooth'"):
        P.cross_validate(feats, P.PredictionConfig(harmonize_options={"smooth": ["age"]}))


def _edge_ages(arrays: dict) -> None:
    """Every site spans the same age range, so a held-out site lies inside the spline's."""
    arrays["subjects"].loc[0, "age"] = 8.0
    arrays["subjects"].loc[1, "age"] = 40.0


def test_cli_predict_with_combat_gam(tmp_path):
    folder = tmp_path / "bundles"
    for i, site in enumerate(("S01", "S02", "S03", "S04")):
        private, _ = make_keys(tmp_path / "keys", site)
        synthetic_bundle(folder / site, site, private, seed=i, edit=_edge_ages)
    out = tmp_path / "pred"
    args = ["predict", "run", "--bundles", str(folder), "--out", str(out), "--grid", "1",
            "--scheme", "leave-one-site-out", "--model", "logistic",
            "--harmonize", "combat-gam"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "prediction.json").read_text())
    assert doc["config"]["harmonize"] == "combat-gam" and doc["data"]["n_subjects"] == 96
    assert all(row["accuracy"] is not None for row in doc["results"][0]["folds"])


def test_cli_refuses_an_unknown_harmonizer(tmp_path):
    args = ["predict", "run", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
            "--harmonize", "fancy"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown harmonizer 'fancy'" in result.output and "combat-gam" in result.output

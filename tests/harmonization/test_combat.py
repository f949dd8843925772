"""ComBat against R neuroCombat reference outputs and neuroHarmonize."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from harmonization.combat import ComBat, combat

R_CASES = {
    "parametric_adjusted": (True, {}),
    "parametric_unadjusted": (False, {}),
    "nonparametric_adjusted": (True, {"parametric": False}),
    "nonparametric_unadjusted": (False, {"parametric": False}),
    "parametric_adjusted_noeb": (True, {"eb": False}),
    "parametric_unadjusted_noeb": (False, {"eb": False}),
    "parametric_adjusted_meanonly": (True, {"mean_only": True}),
    "parametric_adjusted_batchref": (True, {"ref_site": 1}),
}


@pytest.fixture(scope="module")
def r_data(reference_dir):
    d = reference_dir / "combat"
    X = pd.read_csv(d / "testdata.csv").to_numpy().T  # scans x features
    batch = np.array([1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    pheno = pd.DataFrame({"pheno": [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]})
    return d, X, batch, pheno


@pytest.mark.parametrize("case", sorted(R_CASES))
def test_matches_r_neurocombat(r_data, case):
    d, X, batch, pheno = r_data
    adjusted, options = R_CASES[case]
    expected = pd.read_csv(d / f"expected_{case}_r.csv").to_numpy().T
    got = combat(X, batch, pheno if adjusted else None, **options)
    assert got.shape == X.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def _consortium(seed=0, n_sites=25, V=60):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 40, size=n_sites)
    sites = np.repeat([f"S{k:02d}" for k in range(n_sites)], sizes)
    n = sites.size
    age = rng.uniform(8, 80, n)
    sex = rng.choice(["F", "M"], n)
    scanner = rng.choice(["ge", "philips", "siemens"], n)
    site_idx = np.unique(sites, return_inverse=True)[1]
    loc = rng.normal(0, 1, (n_sites, V))[site_idx]
    scale = rng.gamma(4, 0.25, (n_sites, V))[site_idx]
    signal = 0.03 * age[:, None] * rng.normal(1, 0.2, V) + 0.5 * (sex == "M")[:, None]
    X = 10 + signal + loc + scale * rng.normal(size=(n, V))
    cov = pd.DataFrame({"age": age, "sex": sex, "scanner": scanner})
    return X, sites, cov


def _neuroharmonize(X, sites, cov, **kw):
    from neuroHarmonize import harmonizationLearn

    covars = pd.DataFrame(
        {
            "SITE": sites,
            "age": cov["age"],
            "sex_M": (cov["sex"] == "M").astype(float),
            "sc_p": (cov["scanner"] == "philips").astype(float),
            "sc_s": (cov["scanner"] == "siemens").astype(float),
        }
    )
    return harmonizationLearn(X, covars, **kw)


@pytest.fixture(scope="module")
def consortium():
    return _consortium()


def _float32_age(cov):
    # neuroHarmonize casts numeric covariates to float32; mimic it to compare exactly
    out = cov.copy()
    out["age"] = out["age"].astype(np.float32).astype(np.float64)
    return out


def test_matches_neuroharmonize_25_unequal_sites(consortium):
    X, sites, cov = consortium
    model, expected = _neuroharmonize(X, sites, cov)
    est = ComBat().fit(X, sites, _float32_age(cov))
    got = est.transform(X, sites, _float32_age(cov))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(est.gamma_star_, model["gamma_star"], atol=1e-9)
    np.testing.assert_allclose(est.delta_star_, model["delta_star"], atol=1e-9)
    np.testing.assert_allclose(est.var_pooled_, model["var_pooled"].ravel(), rtol=1e-12)
    # without the float32 cast, ours differs (float64 covariates)
    assert np.abs(combat(X, sites, cov) - expected).max() > 1e-12


def test_matches_neuroharmonize_with_subjects_in_random_order(consortium):
    # the engine sorts subjects by site internally; the output must be in input order
    X, sites, cov = consortium
    perm = np.random.default_rng(5).permutation(len(sites))
    Xp, sp, cp = X[perm], sites[perm], cov.iloc[perm].reset_index(drop=True)
    _, expected = _neuroharmonize(Xp, sp, cp)
    np.testing.assert_allclose(combat(Xp, sp, _float32_age(cp)), expected, rtol=0, atol=1e-9)
    _, expected = _neuroharmonize(Xp, sp, cp, ref_batch="S03")
    got = combat(Xp, sp, _float32_age(cp), ref_site="S03")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got[sp == "S03"], Xp[sp == "S03"])


def test_matches_neuroharmonize_reference_site(consortium):
    X, sites, cov = consortium
    _, expected = _neuroharmonize(X, sites, cov, ref_batch="S03")
    got = combat(X, sites, _float32_age(cov), ref_site="S03")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got[sites == "S03"], X[sites == "S03"])


def test_chunking_does_not_change_result(consortium):
    X, sites, cov = consortium
    np.testing.assert_allclose(
        ComBat(chunk=7).fit_transform(X, sites, cov), combat(X, sites, cov), rtol=0, atol=1e-12
    )


def test_float32_input_and_pandas_categorical(consortium):
    X, sites, cov = consortium
    cat = cov.assign(scanner=pd.Categorical(cov["scanner"]))
    got = combat(X.astype(np.float32), sites, cat)
    expected = combat(X.astype(np.float32).astype(np.float64), sites, cov)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_removes_site_effect(consortium):
    X, sites, cov = consortium
    out = combat(X, sites, cov)
    idx = np.unique(sites, return_inverse=True)[1]
    site_means_before = np.array([X[idx == k].mean(0) for k in range(25)]).std(0).mean()
    site_means_after = np.array([out[idx == k].mean(0) for k in range(25)]).std(0).mean()
    assert site_means_after < 0.35 * site_means_before


def test_new_site_equals_training_site_estimate(consortium):
    """A training site relabelled as new gets the same effects from its own data."""
    X, sites, cov = consortium
    for options in ({}, {"eb": False}, {"parametric": False}, {"mean_only": True}):
        est = ComBat(**options).fit(X, sites, cov)
        fitted = est.transform(X, sites, cov)
        renamed = np.where(sites == "S05", "HOSPITAL_NEW", sites)
        got = est.transform(X, renamed, cov)
        np.testing.assert_allclose(got, fitted, rtol=0, atol=1e-10)


def test_held_out_site_matches_direct_formula(consortium):
    X, sites, cov = consortium
    train = sites != "S07"
    est = ComBat(eb=False).fit(X[train], sites[train], cov[train])
    Xn, cn = X[~train], cov[~train].reset_index(drop=True)
    got = est.transform(Xn, sites[~train], cn)
    # independent: design from scratch, standardize with stored model, per-site moments
    K = len(est.sites_)
    C = np.column_stack(
        [cn["age"], cn["sex"] == "M", cn["scanner"] == "philips", cn["scanner"] == "siemens"]
    ).astype(float)
    m = est.grand_mean_ + C @ est.coef_[K:]
    s = (Xn - m) / np.sqrt(est.var_pooled_)
    g, d = s.mean(0), s.var(0, ddof=1)
    expected = (s - g) / np.sqrt(d) * np.sqrt(est.var_pooled_) + m
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_new_sites_error_mode(consortium):
    X, sites, cov = consortium
    est = ComBat(new_sites="error").fit(X, sites, cov)
    with pytest.raises(ValueError, match="site 'ZZ' was not seen at fit"):
        est.transform(X[:3], ["ZZ"] * 3, cov[:3])


def test_save_load_roundtrip_without_pickle(tmp_path, consortium):
    X, sites, cov = consortium
    est = ComBat(ref_site="S01").fit(X, sites, cov)
    path = tmp_path / "model.npz"
    path.write_bytes(est.to_bytes())
    loaded = ComBat.from_bytes(path.read_bytes())
    np.testing.assert_array_equal(loaded.transform(X, sites, cov), est.transform(X, sites, cov))
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["__metadata__"]))
        n = X.shape[0]
        for name in data.files:
            assert data[name].dtype != object
            assert n not in data[name].shape, f"{name} has a subject dimension"
    assert meta["sites"][1] == "S01" and meta["encoder"]["levels"]["sex"] == ["F", "M"]
    with zipfile.ZipFile(path) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())


def test_zero_variance_feature_passed_through(consortium):
    X, sites, cov = consortium
    X = X.copy()
    X[:, 4] = 3.25
    X[sites == "S02", 9] = 1.0  # constant within one site only
    est = ComBat()
    out = est.fit_transform(X, sites, cov)
    np.testing.assert_array_equal(out[:, 4], X[:, 4])
    np.testing.assert_array_equal(out[:, 9], X[:, 9])
    assert est.constant_features_.nonzero()[0].tolist() == [4, 9]
    keep = np.ones(X.shape[1], bool)
    keep[[4, 9]] = False
    np.testing.assert_allclose(out[:, keep], combat(X[:, keep], sites, cov), atol=1e-12)


def test_single_subject_site_is_an_error(consortium):
    X, sites, cov = consortium
    sites = sites.astype(object)
    sites[0] = "LONELY"
    with pytest.raises(ValueError, match="site 'LONELY' has a single subject"):
        combat(X, sites, cov)


def test_nan_in_data_names_row_and_feature(consortium):
    X, sites, cov = consortium
    X = X.copy()
    X[12, 33] = np.nan
    with pytest.raises(ValueError, match="subject row 12, feature index 33"):
        combat(X, sites, cov)


def test_small_blocks_same_result_and_nan_at_transform_names_row(consortium, monkeypatch):
    import harmonization._engine as module

    X, sites, cov = consortium
    expected = ComBat().fit_transform(X, sites, cov)
    monkeypatch.setattr(module, "_BLOCK_BYTES", 8 * X.shape[0] * 3)  # 3 columns per block
    monkeypatch.setattr(module, "_ADJUST_BYTES", 8 * 25 * 5)  # blocks of 5 rows x 25 columns
    monkeypatch.setattr(module, "_ADJUST_COLS", 25)
    est = ComBat()
    np.testing.assert_allclose(est.fit_transform(X, sites, cov), expected, rtol=0, atol=1e-12)
    X = X.copy()
    X[301, 17] = np.inf
    with pytest.raises(ValueError, match="subject row 301, feature index 17"):
        est.transform(X, sites, cov)


def test_nan_in_covariate_names_column(consortium):
    X, sites, cov = consortium
    bad = cov.copy()
    bad.loc[5, "age"] = np.nan
    with pytest.raises(ValueError, match=r"covariate column 'age'.*rows \[5\]"):
        combat(X, sites, bad)
    bad = cov.copy()
    bad.loc[7, "sex"] = None
    with pytest.raises(ValueError, match=r"covariate column 'sex'.*rows \[7\]"):
        combat(X, sites, bad)


def test_covariate_collinear_with_site_names_column(consortium):
    X, sites, cov = consortium
    bad = cov.assign(field_strength=np.where(np.isin(sites, ["S00", "S01"]), 1.5, 3.0))
    with pytest.raises(ValueError, match="'field_strength' is collinear with site"):
        combat(X, sites, bad)


def test_unknown_level_and_missing_column_at_transform(consortium):
    X, sites, cov = consortium
    est = ComBat().fit(X, sites, cov)
    with pytest.raises(ValueError, match=r"'scanner' has level\(s\) \['toshiba'\]"):
        est.transform(X[:2], sites[:2], cov[:2].assign(scanner="toshiba"))
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['age'\]"):
        est.transform(X[:2], sites[:2], cov[:2].drop(columns="age"))


def test_unknown_reference_site(consortium):
    X, sites, cov = consortium
    with pytest.raises(ValueError, match="reference site 'nope'"):
        combat(X, sites, cov, ref_site="nope")


def test_no_covariates_equals_empty_frame(consortium):
    X, sites, _ = consortium
    np.testing.assert_array_equal(
        combat(X, sites, None), combat(X, sites, pd.DataFrame(index=range(len(sites))))
    )

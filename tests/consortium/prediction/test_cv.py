"""Splits, metrics, permutations and the building blocks of the prediction pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from consortium.analysis import prediction as P
from consortium.analysis.cv import (
    classification_metrics,
    inner_splits,
    outer_splits,
    permute_within_site,
)
from consortium.analysis.prediction import crossval as CV

from .conftest import simulate_sites


@pytest.fixture
def labels():
    rng = np.random.default_rng(3)
    sites = np.repeat([f"s{k}" for k in range(6)], 20)
    y = rng.integers(0, 2, sites.size)
    return y, sites


def test_leave_one_site_out_holds_out_each_site_once(labels):
    y, sites = labels
    splits = outer_splits("leave-one-site-out", y, sites)
    held = [set(sites[te]) for _, te in splits]
    assert all(len(h) == 1 for h in held)
    assert sorted(s for h in held for s in h) == sorted(set(sites))
    for tr, te in splits:
        assert not set(sites[tr]) & set(sites[te])
        assert len(tr) + len(te) == y.size


def test_grouped_kfold_never_splits_a_site(labels):
    y, sites = labels
    splits = outer_splits("grouped-kfold", y, sites, n_folds=3, seed=1)
    assert len(splits) == 3
    for tr, te in splits:
        assert not set(sites[tr]) & set(sites[te])
    assert sorted(np.concatenate([te for _, te in splits])) == list(range(y.size))


def test_stratified_kfold_mixes_sites_and_keeps_class_balance(labels):
    y, sites = labels
    splits = outer_splits("stratified-kfold", y, sites, n_folds=5, seed=0)
    for tr, te in splits:
        assert set(sites[tr]) == set(sites)
        assert abs(y[te].mean() - y.mean()) < 0.06


def test_split_errors_name_the_problem(labels):
    y, sites = labels
    with pytest.raises(ValueError, match="unknown cross-validation scheme"):
        outer_splits("random", y, sites)
    with pytest.raises(ValueError, match="at least 3 sites"):
        outer_splits("leave-one-site-out", y[:40], sites[:40])


def test_inner_splits_are_grouped_by_site(labels):
    _, sites = labels
    folds = list(inner_splits(sites, 4))
    assert len(folds) == 4
    for tr, va in folds:
        assert not set(sites[tr]) & set(sites[va])
    with pytest.raises(ValueError, match="at least 2 training sites"):
        inner_splits(np.array(["a"] * 5), 3)


def test_inner_splits_keep_two_training_sites_for_combat():
    sites = np.repeat(["a", "b", "c"], 10)
    assert len(inner_splits(sites, 2)) == 2  # one inner training set holds a single site
    folds = inner_splits(sites, 2, min_train_sites=2)
    assert len(folds) == 3
    assert all(len(set(sites[tr])) == 2 for tr, _ in folds)
    with pytest.raises(ValueError, match="at least 3 training sites"):
        inner_splits(sites[:20], 2, min_train_sites=2)


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = y + rng.normal(0, 1.2, 200)
    pred = (score > 0.5).astype(int)
    m = classification_metrics(y, pred, score)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, score))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert (m["n"], m["n_case"], m["n_control"]) == (200, y.sum(), 200 - y.sum())


def test_metrics_with_one_class_are_undefined_not_invented():
    m = classification_metrics(np.ones(5), np.array([1, 1, 0, 1, 1]), np.arange(5.0))
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] is None and m["auc"] is None and m["balanced_accuracy"] is None


def test_permutation_within_site_keeps_each_site_case_count(labels):
    y, sites = labels
    perm = permute_within_site(y, sites, np.random.default_rng(0))
    assert not np.array_equal(perm, y)
    for s in set(sites):
        assert perm[sites == s].sum() == y[sites == s].sum()
    again = permute_within_site(y, sites, np.random.default_rng(0))
    assert np.array_equal(perm, again)


@pytest.mark.parametrize("clf", [LogisticRegression(C=0.05, solver="liblinear", tol=1e-8),
                                 LinearSVC(C=0.01, tol=1e-8, max_iter=100000)])
def test_row_space_projection_gives_the_same_classifier(clf):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(70, 500))
    y = (X[:, :5].sum(axis=1) + rng.normal(size=70) > 0).astype(int)
    Xtr, Xte, ytr = X[:50], X[50:], y[:50]
    direct = Pipeline([("s", StandardScaler()), ("c", clone(clf))]).fit(Xtr, ytr)
    fast = Pipeline([("s", StandardScaler()), ("r", P.RowSpaceProjection()), ("c", clone(clf))])
    fast.fit(Xtr, ytr)
    assert fast[1].basis_.shape == (50, 49)  # centred data: rank n - 1
    d1, d2 = direct.decision_function(Xte), fast.decision_function(Xte)
    assert np.abs(d1 - d2).max() < 1e-4 * np.abs(d1).max()
    assert np.array_equal(direct.predict(Xte), fast.predict(Xte))


def test_row_space_projection_passes_tall_data_unchanged():
    X = np.random.default_rng(0).normal(size=(30, 5))
    proj = P.RowSpaceProjection()
    assert np.array_equal(proj.fit_transform(X), X)
    assert np.array_equal(proj.transform(X[:3]), X[:3])


def test_a_test_fold_never_sees_its_labels():
    """Flipping the held-out subjects' labels leaves their scores unchanged."""
    feats = simulate_sites(seed=2, n_sites=5, n_per_site=20, n_features=60, effect=2.0)
    config = P.PredictionConfig(models=["logistic", "svm"], grid=[0.01, 0.1], inner_folds=2)
    data = CV._prepare(feats, config)
    test = np.flatnonzero(feats.sites == "site1")
    train = np.flatnonzero(feats.sites != "site1")
    specs = [P.make_model(name, config.grid) for name in config.models]
    first = CV._fit_fold(data, 0, train, test, specs, config, None)
    flipped = CV._Data(data.X, data.y.copy(), data.sites, data.phenotypes, data.extra)
    flipped.y[test] = 1 - flipped.y[test]
    second = CV._fit_fold(flipped, 0, train, test, specs, config, None)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a["score"], b["score"])
        assert a["value"] == b["value"]
    # ... while the training labels do matter (the check can fail)
    changed = CV._Data(data.X, data.y.copy(), data.sites, data.phenotypes, data.extra)
    changed.y[train] = 1 - changed.y[train]
    third = CV._fit_fold(changed, 0, train, test, specs, config, None)
    assert not np.allclose(first[0]["score"], third[0]["score"])


def test_fold_combat_uses_training_case_fraction_for_test_subjects():
    feats = simulate_sites(seed=4, n_sites=4, n_per_site=15, n_features=30)
    train = np.flatnonzero(feats.sites != "site3")
    test = np.flatnonzero(feats.sites == "site3")
    harm = P.FoldHarmonizer("combat")
    harm.fit_transform(feats.X[train], feats.sites[train], feats.subjects.iloc[train],
                       feats.y[train])
    assert harm.dx_fill_ == pytest.approx(feats.y[train].mean())
    assert harm.columns_ == ["age", "sex", "dx"]
    out = harm.transform(feats.X[test], feats.sites[test], feats.subjects.iloc[test])
    assert out.shape == (test.size, 30) and np.isfinite(out).all()
    # the held-out site is centred like the training sites (its shift is removed)
    train_mean = feats.X[train].mean(axis=0)
    raw_gap = np.abs(feats.X[test].mean(axis=0) - train_mean).mean()
    assert np.abs(out.mean(axis=0) - train_mean).mean() < 0.5 * raw_gap


def test_nested_search_records_choices_and_inner_scores():
    feats = simulate_sites(seed=5, n_sites=5, n_per_site=24, n_features=80, effect=3.0)
    config = P.PredictionConfig(schemes=["leave-one-site-out"], models=["logistic"],
                                grid=[1e-4, 1e-2, 1.0], inner_folds=3)
    [res] = P.cross_validate(feats, config)
    assert sum(res["chosen"].values()) == 5
    assert set(res["chosen"]) <= {"0.0001", "0.01", "1.0"}
    for row in res["folds"]:
        assert len(row["inner_auc"]) == 3 and row["C"] in config.grid
        assert row["inner_auc"][config.grid.index(row["C"])] == max(row["inner_auc"])
    assert res["pooled"]["accuracy"] > 0.75  # effect 3 SD is easy to find


def test_fold_combat_drops_covariates_collinear_with_site():
    feats = simulate_sites(seed=6, n_sites=4, n_per_site=12, n_features=20)
    feats.subjects["sex"] = np.where(feats.sites == "site0", "F", "M")  # sex = site0 indicator
    harm = P.FoldHarmonizer("combat")
    out = harm.fit_transform(feats.X, feats.sites, feats.subjects, feats.y)
    assert harm.columns_ == ["age", "dx"] and np.isfinite(out).all()

"""Cross-validation with whole sites held out, nested tuning and permutation tests.

Leakage is avoided at every step that learns from data: the harmonizer is
fitted inside each training fold only (:class:`.harmonize.FoldHarmonizer`),
scaling and the classifier's hyperparameter are chosen by nested
cross-validation with site-grouped folds inside the training set (the inner
folds refit the harmonizer too), and the permutation test shuffles labels
within each site and repeats the whole procedure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone

from consortium.analysis.cv import (
    METRICS,
    classification_metrics,
    inner_splits,
    outer_splits,
    permute_within_site,
)

from .config import PredictionConfig
from .features import Features, PredictionError, standardize_subjects
from .harmonize import FoldHarmonizer, check_covariates, covariate_table
from .models import ModelSpec, make_model, scores

__all__ = ["cross_validate"]


@dataclass
class _Data:
    """Arrays of one cross-validation run (labels may be permuted)."""

    X: np.ndarray
    y: np.ndarray
    sites: np.ndarray
    phenotypes: pd.DataFrame
    extra: np.ndarray | None


def _prepare(features: Features, config: PredictionConfig) -> _Data:
    X = features.X
    if config.subject_standardize:
        X = standardize_subjects(np.asarray(X, dtype=np.float64))
    extra = None
    if config.feature_covariates:
        check_covariates(features, tuple(config.feature_covariates), "feature covariates")
        extra = covariate_table(features.subjects, tuple(config.feature_covariates)).to_numpy()
    if config.harmonized:
        check_covariates(features, tuple(config.combat_covariates), "harmonization covariates")
    return _Data(X, features.y, features.sites, features.subjects, extra)


def _harmonized(
    data: _Data, train: np.ndarray, test: np.ndarray, y_train: np.ndarray, config: PredictionConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Training and test features, harmonized with a model fitted on ``train`` only."""
    Xtr, Xte = data.X[train], data.X[test]
    if config.harmonized:
        harm = FoldHarmonizer(
            config.harmonize, tuple(config.combat_covariates), config.harmonize_options
        )
        try:
            Xtr = harm.fit_transform(Xtr, data.sites[train], data.phenotypes.iloc[train], y_train)
            Xte = harm.transform(Xte, data.sites[test], data.phenotypes.iloc[test])
        except ValueError as exc:
            held = sorted(set(data.sites[test]))
            raise PredictionError(
                f"harmonization ({config.harmonize}) in the fold holding out {held}: {exc}"
            ) from exc
    if data.extra is not None:
        Xtr = np.hstack([Xtr, data.extra[train]])
        Xte = np.hstack([Xte, data.extra[test]])
    return Xtr, Xte


def _inner_auc(y: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return np.nan
    return classification_metrics(y, (score > 0).astype(int), score)["auc"]


def _tune(
    data: _Data, train: np.ndarray, specs: list[ModelSpec], config: PredictionConfig
) -> dict[str, tuple[float | None, list[float]]]:
    """Per model, the value with the best mean inner-fold AUC (ties: the most regularized).

    Each inner fold is harmonized once and shared by all models and values.
    """
    out: dict[str, tuple[float | None, list[float]]] = {
        s.name: (s.grid[0] if s.param else None, []) for s in specs
    }
    tuned = [s for s in specs if s.param is not None and len(s.grid) > 1]
    if not tuned:
        return out
    y = data.y[train]
    min_sites = 2 if config.harmonized else 1
    splits = inner_splits(data.sites[train], config.inner_folds, min_sites)
    tables = {s.name: np.full((len(splits), len(s.grid)), np.nan) for s in tuned}
    for k, (itr, iva) in enumerate(splits):
        Xtr, Xva = _harmonized(data, train[itr], train[iva], y[itr], config)
        for spec in tuned:
            prefix = clone(spec.pipeline[:-1]).fit(Xtr, y[itr])
            Ztr, Zva = prefix.transform(Xtr), prefix.transform(Xva)
            for j, value in enumerate(spec.grid):
                clf = clone(spec.pipeline[-1]).set_params(**{spec.param: value}).fit(Ztr, y[itr])
                tables[spec.name][k, j] = _inner_auc(y[iva], scores(clf, Zva))
    for spec in tuned:
        table = tables[spec.name]
        if np.isnan(table).all():
            held_in = sorted(set(data.sites[train].tolist()))
            raise PredictionError(f"no inner fold of the training sites {held_in} has both classes")
        means = np.nanmean(table, axis=0)
        out[spec.name] = (spec.grid[int(np.nanargmax(means))], [float(v) for v in means])
    return out


def _fit_fold(
    data: _Data,
    k: int,
    train: np.ndarray,
    test: np.ndarray,
    specs: list[ModelSpec],
    config: PredictionConfig,
    fixed: dict[str, float | None] | None,
) -> list[dict[str, Any]]:
    """Fit every model on one outer fold (one harmonization shared by all)."""
    if fixed is not None:
        chosen = {name: (value, []) for name, value in fixed.items()}
    else:
        chosen = _tune(data, train, specs, config)
    Xtr, Xte = _harmonized(data, train, test, data.y[train], config)
    out = []
    for spec in specs:
        value, inner = chosen[spec.name]
        model = clone(spec.pipeline)
        if spec.param is not None:
            model.set_params(**{f"clf__{spec.param}": value})
        model.fit(Xtr, data.y[train])
        score = scores(model, Xte)
        if hasattr(model, "decision_function"):
            # the predict rule of scikit-learn's linear classifiers, without a second projection
            pred = model.classes_[(score > 0).astype(int)].astype(int)
        else:
            pred = np.asarray(model.predict(Xte), dtype=int)
        out.append(
            {"fold": k, "test": test, "pred": pred, "score": score, "value": value, "inner": inner}
        )
    return out


def _run(
    data: _Data,
    scheme: str,
    specs: list[ModelSpec],
    config: PredictionConfig,
    fixed: dict[str, float | None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Fold results of every model for one scheme, keyed by model name."""
    splits = outer_splits(scheme, data.y, data.sites, config.n_folds, config.seed)
    jobs = (
        delayed(_fit_fold)(data, k, tr, te, specs, config, fixed)
        for k, (tr, te) in enumerate(splits)
    )
    per_fold = list(Parallel(n_jobs=config.n_jobs)(jobs))
    return {spec.name: [fold[m] for fold in per_fold] for m, spec in enumerate(specs)}


def _summarize(
    data: _Data, scheme: str, spec: ModelSpec, folds: list[dict[str, Any]]
) -> dict[str, Any]:
    n = len(data.y)
    pred, score, fold_of = np.zeros(n, int), np.zeros(n), np.full(n, -1)
    fold_rows = []
    for f in folds:
        test = f["test"]
        pred[test], score[test], fold_of[test] = f["pred"], f["score"], f["fold"]
        fold_rows.append(
            {
                "fold": f["fold"],
                "test_sites": sorted(set(data.sites[test].tolist())),
                "n_train": n - len(test),
                spec.param or "param": f["value"],
                "inner_auc": f["inner"],
                **classification_metrics(data.y[test], f["pred"], f["score"]),
            }
        )
    per_site = {
        site: classification_metrics(data.y[m], pred[m], score[m])
        for site in sorted(set(data.sites.tolist()))
        for m in [data.sites == site]
    }
    chosen = Counter(f["value"] for f in folds if f["value"] is not None)
    return {
        "scheme": scheme,
        "model": spec.name,
        "param": spec.param,
        "chosen": {str(k): v for k, v in sorted(chosen.items())},
        "pooled": classification_metrics(data.y, pred, score),
        "fold_mean": _fold_stat(fold_rows, np.mean),
        "fold_sd": _fold_stat(fold_rows, lambda v: np.std(v, ddof=1) if len(v) > 1 else np.nan),
        "folds": fold_rows,
        "sites": per_site,
        "_oof": {"pred": pred, "score": score, "fold": fold_of},
    }


def _fold_stat(rows: list[dict[str, Any]], fn) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for metric in METRICS:
        values = [r[metric] for r in rows if r[metric] is not None]
        out[metric] = float(fn(values)) if values else None
    return out


def _most_chosen(result: dict[str, Any]) -> float | None:
    if not result["chosen"]:
        return None
    best = max(result["chosen"].items(), key=lambda kv: (kv[1], -float(kv[0])))
    return float(best[0])


def _permutation_tests(
    data: _Data,
    results: list[dict[str, Any]],
    specs: list[ModelSpec],
    config: PredictionConfig,
    seed_seq: np.random.SeedSequence,
) -> None:
    """Add ``permutation`` to each result of one scheme (same permutations for all models)."""
    fixed = None
    if config.permutation_tuning == "fixed":
        fixed = {r["model"]: _most_chosen(r) for r in results}
    rng = np.random.default_rng(seed_seq)
    scheme = results[0]["scheme"]
    metrics = ("accuracy", "balanced_accuracy", "auc")
    null = {r["model"]: {m: [] for m in metrics} for r in results}
    for _ in range(config.n_permutations):
        y_perm = permute_within_site(data.y, data.sites, rng)
        perm = _Data(data.X, y_perm, data.sites, data.phenotypes, data.extra)
        folds = _run(perm, scheme, specs, config, fixed)
        for spec in specs:
            pooled = _summarize(perm, scheme, spec, folds[spec.name])["pooled"]
            for m in metrics:
                null[spec.name][m].append(pooled[m])
    for r in results:
        out: dict[str, Any] = {
            "n_permutations": config.n_permutations,
            "tuning": config.permutation_tuning,
            "fixed_value": fixed[r["model"]] if fixed else None,
            "within_site": True,
        }
        for m in metrics:
            observed = r["pooled"][m]
            arr = np.asarray(null[r["model"]][m], dtype=float)
            out[m] = {
                "observed": observed,
                "null_mean": float(arr.mean()),
                "null_sd": float(arr.std(ddof=1)) if arr.size > 1 else None,
                "null_95": float(np.quantile(arr, 0.95)),
                "p_value": float((1 + np.sum(arr >= observed)) / (1 + arr.size)),
                "null": [float(v) for v in arr],
            }
        r["permutation"] = out


def cross_validate(
    features: Features, config: PredictionConfig | None = None
) -> list[dict[str, Any]]:
    """Cross-validated scores of every scheme x model, with in-fold harmonization.

    Parameters
    ----------
    features : Features
    config : PredictionConfig, optional

    Returns
    -------
    list of dict
        One entry per scheme x model: ``scheme``, ``model``, ``param``,
        ``chosen`` (hyperparameter value -> folds), ``pooled`` (metrics of all
        out-of-fold predictions), ``fold_mean`` / ``fold_sd``, ``folds`` (one
        row per fold with its test sites and metrics), ``sites`` (metrics per
        site from the out-of-fold predictions; for a leave-one-site-out run,
        per held-out site), ``permutation`` (when requested) and ``_oof``
        (out-of-fold predictions, not written to JSON).

    Notes
    -----
    All models of a scheme share the folds and each fold's harmonization; the
    permutation test uses the same permuted labels for all models. The
    permutations of scheme number ``i`` are drawn from
    ``np.random.SeedSequence(seed).spawn(n_schemes)[i]``.
    """
    config = config or PredictionConfig()
    config.check()
    data = _prepare(features, config)
    if len(np.unique(data.y)) != 2:
        raise PredictionError("prediction needs both cases and controls")
    specs = [make_model(name, config.grid, config.seed) for name in config.models]
    seeds = np.random.SeedSequence(config.seed).spawn(len(config.schemes))
    results = []
    for scheme, seed_seq in zip(config.schemes, seeds, strict=True):
        folds = _run(data, scheme, specs, config)
        block = [_summarize(data, scheme, spec, folds[spec.name]) for spec in specs]
        if config.n_permutations and scheme in config.permutation_schemes:
            _permutation_tests(data, block, specs, config, seed_seq)
        results += block
    return results

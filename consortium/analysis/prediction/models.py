"""Classifiers of the prediction pipeline: named scikit-learn pipelines and a fast projection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from .features import PredictionError

__all__ = ["DEFAULT_C_GRID", "ModelSpec", "RowSpaceProjection", "make_model", "scores"]


class RowSpaceProjection(TransformerMixin, BaseEstimator):
    """Project onto the span of the training subjects (exact for L2 linear models).

    With more features than subjects, the weights of an L2-penalized linear
    model lie in the span of the training rows (representer theorem), so
    fitting it on the coordinates ``X V`` (``V``: orthonormal basis of the
    row space) gives the same decision function at a fraction of the cost.
    ``V`` comes from the eigendecomposition of the training Gram matrix
    ``X X^T = U L U^T`` as ``V = X^T U L^{-1/2}``, so new data are projected
    as ``(X_new X^T) U L^{-1/2}`` and the training data are ``U L^{1/2}``.
    When there are no more features than subjects the data pass unchanged.

    Parameters
    ----------
    tol : float
        Relative eigenvalue threshold of the training Gram matrix.

    Attributes
    ----------
    basis_ : ndarray of shape (n_train, rank) or None
        ``U L^{-1/2}``; None when the data pass unchanged.
    X_fit_ : ndarray of shape (n_train, n_features) or None
    """

    def __init__(self, tol: float = 1e-10) -> None:
        self.tol = tol

    def fit(self, X: np.ndarray, y: Any = None) -> RowSpaceProjection:
        self._fit(np.asarray(X, dtype=np.float64))
        return self

    def fit_transform(self, X: np.ndarray, y: Any = None, **fit_params: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        coords = self._fit(X)
        return X if coords is None else coords

    def _fit(self, X: np.ndarray) -> np.ndarray | None:
        self.n_features_in_ = X.shape[1]
        if X.shape[1] <= X.shape[0]:
            self.basis_, self.X_fit_ = None, None
            return None
        eigval, eigvec = np.linalg.eigh(X @ X.T)
        keep = eigval > self.tol * eigval.max()
        root = np.sqrt(eigval[keep])
        self.basis_, self.X_fit_ = eigvec[:, keep] / root, X
        return eigvec[:, keep] * root

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.basis_ is None:
            return X
        return (X @ self.X_fit_.T) @ self.basis_


@dataclass
class ModelSpec:
    """A scikit-learn pipeline and the hyperparameter tuned by nested CV."""

    name: str
    pipeline: Pipeline
    param: str | None
    grid: list[float]


DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def make_model(name: str, grid: list[float] | None = None, seed: int = 0) -> ModelSpec:
    """The pipeline of a named classifier.

    ``logistic`` (L2 logistic regression) and ``svm`` (linear SVM) are the
    defaults, tuned over ``C``; ``ridge`` is a ridge classifier tuned over
    ``alpha``. Any other scikit-learn classifier can be named by its class
    name (``RandomForestClassifier``), used with its default parameters,
    ``class_weight="balanced"`` and ``random_state=seed`` where it has them.
    Every pipeline standardizes the features (fitted on the training fold).
    """
    grid = list(grid) if grid is not None else list(DEFAULT_C_GRID)
    scale = ("scale", StandardScaler())
    linear = [scale, ("rowspace", RowSpaceProjection())]
    if name == "logistic":
        clf = LogisticRegression(solver="liblinear", class_weight="balanced", max_iter=1000)
        return ModelSpec(name, Pipeline([*linear, ("clf", clf)]), "C", grid)
    if name == "svm":
        clf = LinearSVC(class_weight="balanced", dual=True, max_iter=20000, random_state=seed)
        return ModelSpec(name, Pipeline([*linear, ("clf", clf)]), "C", grid)
    if name == "ridge":
        alphas = [1.0 / c for c in grid]
        clf = RidgeClassifier(class_weight="balanced")
        return ModelSpec(name, Pipeline([*linear, ("clf", clf)]), "alpha", alphas)
    return ModelSpec(name, Pipeline([scale, ("clf", _sklearn_classifier(name, seed))]), None, [])


def _sklearn_classifier(name: str, seed: int) -> BaseEstimator:
    from sklearn.utils import all_estimators

    found = dict(all_estimators(type_filter="classifier"))
    if name not in found:
        raise PredictionError(
            f"unknown model {name!r}: use logistic, svm, ridge or a scikit-learn classifier "
            "class name such as RandomForestClassifier"
        )
    est = found[name]()
    params = est.get_params()
    est.set_params(
        **{k: v for k, v in (("class_weight", "balanced"), ("random_state", seed)) if k in params}
    )
    return est


def scores(model: Pipeline, X: np.ndarray) -> np.ndarray:
    """Decision function of a fitted pipeline, or its case probability."""
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(X), dtype=float)
    return np.asarray(model.predict_proba(X)[:, 1], dtype=float)

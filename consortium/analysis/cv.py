"""Cross-validation splits, classification metrics and within-site permutations.

The three schemes differ in what a test fold may share with its training set:

``leave-one-site-out``
    Each site is held out once; the classifier never sees the held-out
    scanner, protocol or recruitment. This is the default, because it is the
    question a consortium asks ("does it work at a new hospital?") [1]_.
``grouped-kfold``
    K folds of whole sites (``StratifiedGroupKFold``): cheaper than
    leave-one-site-out when there are many sites, same guarantee.
``stratified-kfold``
    Random K folds stratified on diagnosis. Every site is in training and
    test at once, so site effects correlated with diagnosis leak into the
    score; it is reported beside the others to show the gap [1]_, [2]_.

References
----------
.. [1] Abraham A. et al. (2017). Deriving reproducible biomarkers from
   multi-site resting-state data: an autism-based example. NeuroImage
   147:736-745.
.. [2] Yan C.-G. et al. (2019). Reduced default mode network functional
   connectivity in patients with recurrent major depressive disorder. PNAS
   116:9078-9083.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import (
    GroupKFold,
    LeaveOneGroupOut,
    StratifiedGroupKFold,
    StratifiedKFold,
)

__all__ = [
    "METRICS",
    "SCHEMES",
    "classification_metrics",
    "inner_splits",
    "outer_splits",
    "permute_within_site",
]

SCHEMES = ("leave-one-site-out", "grouped-kfold", "stratified-kfold")
METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")

Split = tuple[np.ndarray, np.ndarray]


def outer_splits(
    scheme: str, y: np.ndarray, sites: np.ndarray, n_folds: int = 10, seed: int = 0
) -> list[Split]:
    """Train/test index pairs of one cross-validation scheme.

    Parameters
    ----------
    scheme : {"leave-one-site-out", "grouped-kfold", "stratified-kfold"}
    y : ndarray of shape (n_subjects,)
        Binary labels (1 = case).
    sites : ndarray of shape (n_subjects,)
        Site of each subject.
    n_folds : int
        Folds of the two K-fold schemes (capped at the number of sites for
        ``grouped-kfold``).
    seed : int
        Shuffling seed of the K-fold schemes.
    """
    y = np.asarray(y)
    sites = np.asarray(sites)
    n_sites = len(np.unique(sites))
    if scheme == "leave-one-site-out":
        _need_sites(n_sites, 3, scheme)
        splitter = LeaveOneGroupOut().split(y, y, sites)
    elif scheme == "grouped-kfold":
        _need_sites(n_sites, 3, scheme)
        k = min(n_folds, n_sites)
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, sites)
    elif scheme == "stratified-kfold":
        smallest = int(np.bincount(y.astype(int)).min())
        if smallest < n_folds:
            raise ValueError(
                f"{scheme}: the smaller class has {smallest} subjects, fewer than {n_folds} folds"
            )
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(y, y)
    else:
        raise ValueError(f"unknown cross-validation scheme {scheme!r}; choose from {SCHEMES}")
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splitter]


def inner_splits(sites: np.ndarray, n_folds: int, min_train_sites: int = 1) -> list[Split]:
    """Site-grouped folds inside a training set (for choosing hyperparameters).

    ``n_folds`` is raised (up to one fold per site) until every inner training
    set holds at least ``min_train_sites`` sites (ComBat needs two).
    """
    sites = np.asarray(sites)
    n_sites = len(np.unique(sites))
    if n_sites < min_train_sites + 1 or n_sites < 2:
        raise ValueError(
            f"nested cross-validation needs at least {max(min_train_sites + 1, 2)} training "
            f"sites, got {sorted(np.unique(sites).tolist())}"
        )
    for k in range(min(n_folds, n_sites), n_sites + 1):
        splits = list(GroupKFold(k).split(sites, groups=sites))
        if all(len(np.unique(sites[tr])) >= min_train_sites for tr, _ in splits):
            break
    return [(np.asarray(tr), np.asarray(va)) for tr, va in splits]


def _need_sites(n_sites: int, minimum: int, scheme: str) -> None:
    if n_sites < minimum:
        raise ValueError(f"{scheme} needs at least {minimum} sites, the data have {n_sites}")


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray
) -> dict[str, float | int | None]:
    """Accuracy, balanced accuracy, AUC, sensitivity and specificity.

    Case = 1 is the positive class. A metric that is undefined for the given
    labels (AUC or balanced accuracy with one class present, sensitivity
    without cases) is ``None``.
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    cases, controls = y_true == 1, y_true == 0
    sens = float(np.mean(y_pred[cases] == 1)) if cases.any() else None
    spec = float(np.mean(y_pred[controls] == 0)) if controls.any() else None
    both = sens is not None and spec is not None
    return {
        "n": int(y_true.size),
        "n_case": int(cases.sum()),
        "n_control": int(controls.sum()),
        "accuracy": float(np.mean(y_true == y_pred)) if y_true.size else None,
        "balanced_accuracy": (sens + spec) / 2 if both else None,
        "auc": float(roc_auc_score(y_true, score)) if both else None,
        "sensitivity": sens,
        "specificity": spec,
    }


def permute_within_site(y: np.ndarray, sites: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels shuffled among the subjects of each site (site case rates kept).

    Under the null hypothesis the labels are exchangeable only within a site:
    sites differ in their case proportion, and a global shuffle would destroy
    the site-diagnosis association that the real data have [1]_.
    """
    y = np.asarray(y)
    sites = np.asarray(sites)
    out = y.copy()
    for site in np.unique(sites):
        idx = np.flatnonzero(sites == site)
        out[idx] = y[rng.permutation(idx)]
    return out

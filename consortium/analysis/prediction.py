"""Site-aware prediction: cross-validated classification with in-fold harmonization.

A classifier trained on pooled multi-site data is only useful if it works at a
site it has not seen. :func:`cross_validate` therefore evaluates it with whole
sites held out (leave-one-site-out by default) and reports the optimistic
random K-fold figure beside it, so the gap is visible [1]_, [2]_.

Leakage is avoided at every step that learns from data:

- ComBat [3]_ is fitted inside each training fold only, with age, sex and
  diagnosis as covariates (diagnosis keeps the group difference in the
  training data). Test subjects are harmonized without their labels: a
  held-out site's location/scale effects are estimated from its own features
  with the diagnosis covariate fixed at the training fold's case fraction, a
  constant, so the test labels never enter (see :class:`FoldComBat`).
- Scaling and the classifier's hyperparameter (``C``) are chosen by nested
  cross-validation with site-grouped folds inside the training set; the
  inner folds refit ComBat too.
- The permutation test shuffles labels within each site, keeping each site's
  case fraction, and repeats the whole procedure.

References
----------
.. [1] Abraham A. et al. (2017). Deriving reproducible biomarkers from
   multi-site resting-state data: an autism-based example. NeuroImage
   147:736-745.
.. [2] Yan C.-G. et al. (2019). Reduced default mode network functional
   connectivity in patients with recurrent major depressive disorder. PNAS
   116:9078-9083.
.. [3] Fortin J.-P. et al. (2018). Harmonization of cortical thickness
   measurements across scanners and sites. NeuroImage 167:104-120.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from consortium.analysis.cv import (
    METRICS,
    SCHEMES,
    classification_metrics,
    inner_splits,
    outer_splits,
    permute_within_site,
)
from consortium.provenance import check_out_dir, jsonable, software_versions, staged_output
from harmonization.combat import ComBat

__all__ = [
    "FEATURE_KINDS",
    "Features",
    "FoldComBat",
    "PredictionConfig",
    "PredictionError",
    "RowSpaceProjection",
    "cross_validate",
    "features_from_abide",
    "features_from_dataset",
    "make_model",
    "run_prediction",
]

FEATURE_KINDS = ("edges", "networks", "maps")
RESULT_FORMAT = "confed.prediction/1"


class PredictionError(ValueError):
    """Data or options that a prediction run cannot use; the message names the culprit."""


# ---------------------------------------------------------------------------- features


@dataclass
class Features:
    """A subjects x features matrix with the phenotypes prediction needs.

    Attributes
    ----------
    X : ndarray of shape (n_subjects, n_features)
    subjects : DataFrame
        One row per subject: ``subject_key``, ``site``, ``dx`` (label), ``y``
        (1 = case, 0 = control), ``age``, ``sex`` (``M``/``F``) and any other
        phenotype columns.
    feature_names : list of str
    kind : str
        ``edges``, ``networks`` or ``maps``.
    dx_labels : dict
        ``{"case": ..., "control": ...}``.
    source : dict
        Provenance (release name and hash, or the folder read).
    notes : list of str
        Data handling worth reporting (imputed values, ...).
    """

    X: np.ndarray
    subjects: pd.DataFrame
    feature_names: list[str]
    kind: str
    dx_labels: dict[str, str]
    source: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def y(self) -> np.ndarray:
        return self.subjects["y"].to_numpy(dtype=int)

    @property
    def sites(self) -> np.ndarray:
        return self.subjects["site"].astype(str).to_numpy()

    def with_labels(self, y: np.ndarray) -> Features:
        """A copy sharing X whose labels are ``y`` (for permutation runs)."""
        subjects = self.subjects.copy()
        subjects["y"] = np.asarray(y, dtype=int)
        return Features(
            self.X,
            subjects,
            self.feature_names,
            self.kind,
            self.dx_labels,
            self.source,
            list(self.notes),
        )


def _labelled_subjects(subjects: pd.DataFrame, dx_labels: dict[str, str]) -> pd.DataFrame:
    case, control = dx_labels["case"], dx_labels["control"]
    dx = subjects["dx"].astype(str)
    bad = ~dx.isin([case, control])
    if bad.any():
        row = subjects[bad].iloc[0]
        raise PredictionError(
            f"site {row['site']!r}, subject {row['subject_key']!r}: diagnosis {row['dx']!r} is "
            f"neither the case label {case!r} nor the control label {control!r}"
        )
    out = subjects.reset_index(drop=True).copy()
    out["site"] = out["site"].astype(str)
    out["y"] = (dx.to_numpy() == case).astype(int)
    return out


def _nonfinite_policy(X: np.ndarray, subjects: pd.DataFrame, nan: str, what: str) -> list[str]:
    """Apply the non-finite value policy in place; return notes for the report."""
    bad = ~np.isfinite(X)
    if not bad.any():
        return []
    rows = np.flatnonzero(bad.any(axis=1))
    if nan == "error":
        first = subjects.iloc[rows[0]]
        raise PredictionError(
            f"site {first['site']!r}, subject {first['subject_key']!r}: {int(bad[rows[0]].sum())} "
            f"non-finite {what} value(s) ({rows.size} subjects affected); use nan='zero' to "
            "set them to 0"
        )
    if nan != "zero":
        raise PredictionError(f"unknown nan policy {nan!r}; choose 'error' or 'zero'")
    X[bad] = 0.0
    return [
        f"{int(bad.sum())} non-finite {what} values in {rows.size} subjects set to 0 "
        "(a Fisher z of 0 is no correlation; they come from ROIs without signal)"
    ]


def features_from_dataset(
    dataset: Any,
    kind: str = "edges",
    atlas: str | None = None,
    metric: str | None = None,
    nan: str = "error",
) -> Features:
    """Features of a release (``consortium.dataset.Dataset``).

    Parameters
    ----------
    dataset : Dataset
        As returned by ``consortium.releases.open_release`` or
        ``Dataset.from_bundles``.
    kind : {"edges", "networks", "maps"}
        Connectivity edges of ``atlas``, its network-pair means, or the voxels
        of map ``metric``.
    atlas : str, optional
        Atlas name (default: the only atlas of the release, else an error).
    metric : str, optional
        Map metric for ``kind="maps"`` (default: the only one).
    nan : {"error", "zero"}
        What to do with non-finite feature values.
    """
    subjects = _labelled_subjects(dataset.subjects, dataset.dx_labels)
    if kind in ("edges", "networks"):
        atlas = atlas or _only(dataset.atlases, "atlas")
        if kind == "edges":
            X = np.array(dataset.connectivity(atlas), dtype=np.float64)
            names = _edge_names(atlas, X.shape[1], _release_labels(dataset, atlas))
        else:
            table = dataset.network_summaries(atlas)
            X, names = table.to_numpy(dtype=np.float64), [str(c) for c in table.columns]
        detail = {"atlas": atlas}
    elif kind == "maps":
        metric = metric or _only(dataset.map_names, "map metric")
        _, data = dataset.maps(metric)
        X = np.asarray(data.compute() if hasattr(data, "compute") else data)
        names = [f"voxel_{i}" for i in range(X.shape[1])]
        detail = {"metric": metric}
    else:
        raise PredictionError(f"unknown feature kind {kind!r}; choose from {FEATURE_KINDS}")
    if X.shape[0] != len(subjects):
        raise PredictionError(f"{kind}: {X.shape[0]} rows but {len(subjects)} subjects")
    notes = _nonfinite_policy(X, subjects, nan, kind)
    source = {
        "type": "release",
        "release_name": dataset.release_name,
        "release_hash": dataset.release_hash,
        **detail,
    }
    return Features(X, subjects, names, kind, dict(dataset.dx_labels), source, notes)


def _only(names: list[str], what: str) -> str:
    if len(names) != 1:
        raise PredictionError(f"the data have the {what}s {names}; name the one to use")
    return names[0]


def _release_labels(dataset: Any, atlas_name: str) -> list[str] | None:
    """ROI labels of the atlas definition the release carries (None if it has none)."""
    try:
        return list(dataset.atlas(atlas_name).labels)
    except (AttributeError, ValueError):
        return None


def _edge_names(atlas_name: str, n_edges: int, labels: list[str] | None = None) -> list[str]:
    try:
        if labels is None:
            from sites.atlas import load_atlas

            labels = load_atlas(atlas_name).labels
    except Exception:  # a custom atlas not known here: name edges by ROI index
        n = int(round((1 + np.sqrt(1 + 8 * n_edges)) / 2))
        labels = [str(i + 1) for i in range(n)]
    rows, cols = np.triu_indices(len(labels), k=1)
    if rows.size != n_edges:
        raise PredictionError(f"atlas {atlas_name!r} has {rows.size} edges, the data {n_edges}")
    return [f"{labels[i]}__{labels[j]}" for i, j in zip(rows, cols, strict=True)]


ABIDE_DX = {1: "ASD", 2: "TDC"}
ABIDE_SEX = {1: "M", 2: "F"}


def features_from_abide(
    data_dir: str | Path, atlas: str = "ho111", nan: str = "zero", sites: list[str] | None = None
) -> Features:
    """Connectivity edges of an ABIDE Preprocessed (PCP) folder, read in place.

    The layout is one folder per site holding ``participants.csv`` (ABIDE
    phenotype columns ``FILE_ID``, ``SITE_ID``, ``DX_GROUP``, ``AGE_AT_SCAN``,
    ``SEX``, ``func_mean_fd``) and one ``<FILE_ID>_rois_<atlas>.1D[.gz]`` time
    series per subject. Features come from the site agent's own code
    (``sites.timeseries.read_timeseries``, ``sites.connectivity.fisher_z_connectivity``)
    so they equal what a site bundle would hold. ``DX_GROUP`` 1 is ``ASD``
    (case), 2 ``TDC`` (control); ``SEX`` 1 is ``M``, 2 ``F``.

    ABIDE PCP time series contain ROIs without signal (all zeros) for about a
    fifth of the subjects; their correlations are undefined. ``nan="zero"``
    (default) sets those edges to 0 and records how many; ``"error"`` raises.
    """
    from sites.atlas import load_atlas
    from sites.connectivity import fisher_z_connectivity
    from sites.timeseries import TimeseriesError, read_timeseries

    data_dir = Path(data_dir)
    atlas_obj = load_atlas(atlas)
    site_dirs = sorted(p for p in data_dir.iterdir() if (p / "participants.csv").is_file())
    if sites is not None:
        site_dirs = [p for p in site_dirs if p.name in set(sites)]
    if not site_dirs:
        raise PredictionError(f"{data_dir}: no site folder with a participants.csv")
    rows, edges = [], []
    for site_dir in site_dirs:
        table = _abide_participants(site_dir)
        for rec in table.itertuples(index=False):
            path = _abide_file(site_dir, rec.FILE_ID)
            try:
                ts = read_timeseries(path, n_rois=atlas_obj.n_rois)
            except TimeseriesError as exc:
                raise PredictionError(f"site {site_dir.name!r}: {exc}") from exc
            with np.errstate(invalid="ignore", divide="ignore"):
                edges.append(fisher_z_connectivity(ts))
            rows.append(_abide_row(site_dir, rec))
    subjects = _labelled_subjects(pd.DataFrame(rows), {"case": "ASD", "control": "TDC"})
    X = np.vstack(edges).astype(np.float64)
    notes = _nonfinite_policy(X, subjects, nan, "edges")
    source = {"type": "abide-pcp", "path": str(data_dir), "atlas": atlas}
    return Features(
        X,
        subjects,
        _edge_names(atlas, X.shape[1]),
        "edges",
        {"case": "ASD", "control": "TDC"},
        source,
        notes,
    )


def _abide_participants(site_dir: Path) -> pd.DataFrame:
    path = site_dir / "participants.csv"
    table = pd.read_csv(path)
    needed = ["FILE_ID", "DX_GROUP", "AGE_AT_SCAN", "SEX"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise PredictionError(f"{path}: missing column(s) {missing}")
    for col, codes in (("DX_GROUP", ABIDE_DX), ("SEX", ABIDE_SEX)):
        bad = ~table[col].isin(list(codes))
        if bad.any():
            rec = table[bad].iloc[0]
            raise PredictionError(
                f"{path}: subject {rec['FILE_ID']!r} has {col}={rec[col]!r} "
                f"(expected one of {sorted(codes)})"
            )
    return table


def _abide_file(site_dir: Path, file_id: str) -> Path:
    found = sorted(site_dir.glob(f"{file_id}_rois_*.1D*"))
    if len(found) != 1:
        raise PredictionError(
            f"site {site_dir.name!r}, subject {file_id!r}: expected one "
            f"'{file_id}_rois_*.1D[.gz]' file in {site_dir}, found {len(found)}"
        )
    return found[0]


def _abide_row(site_dir: Path, rec: Any) -> dict[str, Any]:
    fd = getattr(rec, "func_mean_fd", np.nan)
    return {
        "subject_key": str(rec.FILE_ID),
        "site": str(getattr(rec, "SITE_ID", site_dir.name)),
        "dx": ABIDE_DX[int(rec.DX_GROUP)],
        "age": float(rec.AGE_AT_SCAN),
        "sex": ABIDE_SEX[int(rec.SEX)],
        "mean_fd": float(fd) if pd.notna(fd) else np.nan,
    }


def standardize_subjects(X: np.ndarray) -> np.ndarray:
    """Z-score each subject's feature vector (mean 0, SD 1 across features).

    A per-subject operation: it uses no other subject, so it cannot leak
    across folds. Useful for voxel maps whose global level differs by scanner.
    """
    sd = X.std(axis=1, keepdims=True)
    if np.any(sd == 0):
        row = int(np.flatnonzero(sd == 0)[0])
        raise PredictionError(f"subject row {row} has constant features")
    return (X - X.mean(axis=1, keepdims=True)) / sd


# ---------------------------------------------------------------------------- harmonization


class FoldComBat:
    """ComBat fitted on a training fold and applied to its test fold without labels.

    Parameters
    ----------
    covariates : sequence of str
        Non-diagnostic covariates (columns of the phenotype table); ``sex``
        (``M``/``F``) is coded 1/0. A column that is constant within every
        training site (an all-male sample, say) is collinear with the sites and
        left out for that fold.
    eb : bool
        Empirical Bayes shrinkage (see ``harmonization.combat.ComBat``).

    Attributes
    ----------
    combat_ : harmonization.combat.ComBat
    columns_ : list of str
        Covariates used, then ``dx``.
    dx_fill_ : float
        Case fraction of the training fold: the value of the ``dx`` covariate
        for every test subject.

    Notes
    -----
    At fit, the covariates are the given columns plus the diagnosis (1 = case),
    so the group difference is preserved in the training data. At transform,
    the diagnosis column is the constant ``dx_fill_``. For a site not seen at
    fit, ComBat estimates its location as the mean of its standardized
    residuals: a constant diagnosis term shifts all of them equally and
    cancels out of the site's centred data, so only the site's features and
    its age/sex enter, never its labels. Subjects of a site seen at fit use
    that site's fitted effects.
    """

    def __init__(self, covariates: tuple[str, ...] = ("age", "sex"), eb: bool = True) -> None:
        self.covariates = covariates
        self.eb = eb

    def fit_transform(
        self, X: np.ndarray, sites: np.ndarray, phenotypes: pd.DataFrame, y: np.ndarray
    ) -> np.ndarray:
        table = _covariate_table(phenotypes, self.covariates)
        self.columns_ = _estimable(table, np.asarray(sites).astype(str)) + ["dx"]
        self.dx_fill_ = float(np.mean(y))
        design = table[self.columns_[:-1]].assign(dx=np.asarray(y, dtype=float))
        self.combat_ = ComBat(eb=self.eb)
        return self.combat_.fit_transform(X, sites, design)

    def transform(self, X: np.ndarray, sites: np.ndarray, phenotypes: pd.DataFrame) -> np.ndarray:
        table = _covariate_table(phenotypes, self.covariates)
        design = table[self.columns_[:-1]].assign(dx=self.dx_fill_)
        return self.combat_.transform(X, sites, design)


def _estimable(table: pd.DataFrame, sites: np.ndarray) -> list[str]:
    """Covariate columns that add to the rank of the site design, in order."""
    design = (sites[:, None] == np.unique(sites)[None, :]).astype(float)
    keep = []
    for col in table.columns:
        trial = np.column_stack([design, table[col].to_numpy()])
        if np.linalg.matrix_rank(trial) > design.shape[1]:
            design, keep = trial, [*keep, col]
    return keep


def _covariate_table(phenotypes: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    out = pd.DataFrame(index=range(len(phenotypes)))
    for col in columns:
        values = phenotypes[col].reset_index(drop=True)
        if col == "sex":
            values = values.map({"M": 1.0, "F": 0.0})
        out[col] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return out


def _check_covariates(features: Features, columns: tuple[str, ...], why: str) -> None:
    subjects = features.subjects
    for col in columns:
        if col not in subjects.columns:
            raise PredictionError(f"{why}: the phenotype table has no column {col!r}")
        values = _covariate_table(subjects[[col]], (col,))[col]
        bad = np.flatnonzero(~np.isfinite(values.to_numpy()))
        if bad.size:
            row = subjects.iloc[bad[0]]
            raise PredictionError(
                f"{why}: site {row['site']!r}, subject {row['subject_key']!r} has "
                f"{col}={row[col]!r} ({bad.size} subjects lack a usable {col})"
            )


# ---------------------------------------------------------------------------- models


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


def _scores(model: Pipeline, X: np.ndarray) -> np.ndarray:
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(X), dtype=float)
    return np.asarray(model.predict_proba(X)[:, 1], dtype=float)


# ---------------------------------------------------------------------------- cross-validation


@dataclass
class PredictionConfig:
    """Options of a prediction run; every field is recorded in ``prediction.json``.

    Parameters
    ----------
    schemes : list of str
        Cross-validation schemes (see ``consortium.analysis.cv``), reported
        side by side. Leave-one-site-out first: it is the honest figure.
    models : list of str
        Model names for :func:`make_model`.
    grid : list of float
        ``C`` values of the nested search (``alpha = 1/C`` for ridge).
    n_folds : int
        Folds of the K-fold schemes.
    inner_folds : int
        Site-grouped folds of the nested search.
    harmonize : {"combat", "none"}
        ComBat inside each training fold, or no harmonization.
    combat_covariates : list of str
        Non-diagnostic ComBat covariates (diagnosis is added in training).
    feature_covariates : list of str
        Phenotype columns appended to the features after harmonization.
    subject_standardize : bool
        Z-score each subject's features before everything else.
    n_permutations : int
        Within-site label permutations for the pooled scores (0: none).
    permutation_schemes : list of str
        Schemes that get a permutation test.
    permutation_tuning : {"nested", "fixed"}
        Permuted runs repeat the nested search, or use the value chosen
        most often in the real run (faster, slightly optimistic p).
    seed : int
        Seed of fold shuffling, permutations and stochastic models.
    n_jobs : int
        Outer folds fitted in parallel (joblib).
    """

    schemes: list[str] = field(default_factory=lambda: ["leave-one-site-out", "stratified-kfold"])
    models: list[str] = field(default_factory=lambda: ["logistic", "svm"])
    grid: list[float] = field(default_factory=lambda: list(DEFAULT_C_GRID))
    n_folds: int = 10
    inner_folds: int = 5
    harmonize: str = "combat"
    combat_covariates: list[str] = field(default_factory=lambda: ["age", "sex"])
    feature_covariates: list[str] = field(default_factory=list)
    subject_standardize: bool = False
    n_permutations: int = 0
    permutation_schemes: list[str] = field(default_factory=lambda: ["leave-one-site-out"])
    permutation_tuning: str = "nested"
    seed: int = 0
    n_jobs: int = 1

    def check(self) -> None:
        for scheme in self.schemes:
            if scheme not in SCHEMES:
                raise PredictionError(f"unknown scheme {scheme!r}; choose from {SCHEMES}")
        if self.harmonize not in ("combat", "none"):
            raise PredictionError(f"harmonize must be 'combat' or 'none', not {self.harmonize!r}")
        if self.permutation_tuning not in ("nested", "fixed"):
            raise PredictionError("permutation_tuning must be 'nested' or 'fixed'")
        if not self.grid or min(self.grid) <= 0:
            raise PredictionError(f"the C grid must be positive values, got {self.grid}")
        if self.n_permutations < 0:
            raise PredictionError("n_permutations must be >= 0")
        for name in self.models:
            make_model(name, self.grid)


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
        _check_covariates(features, tuple(config.feature_covariates), "feature covariates")
        extra = _covariate_table(features.subjects, tuple(config.feature_covariates)).to_numpy()
    if config.harmonize == "combat":
        _check_covariates(features, tuple(config.combat_covariates), "ComBat covariates")
    return _Data(X, features.y, features.sites, features.subjects, extra)


def _harmonized(
    data: _Data, train: np.ndarray, test: np.ndarray, y_train: np.ndarray, config: PredictionConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Training and test features, harmonized with a model fitted on ``train`` only."""
    Xtr, Xte = data.X[train], data.X[test]
    if config.harmonize == "combat":
        harm = FoldComBat(tuple(config.combat_covariates))
        try:
            Xtr = harm.fit_transform(Xtr, data.sites[train], data.phenotypes.iloc[train], y_train)
            Xte = harm.transform(Xte, data.sites[test], data.phenotypes.iloc[test])
        except ValueError as exc:
            held = sorted(set(data.sites[test]))
            raise PredictionError(f"ComBat in the fold holding out {held}: {exc}") from exc
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
    min_sites = 2 if config.harmonize == "combat" else 1
    splits = inner_splits(data.sites[train], config.inner_folds, min_sites)
    tables = {s.name: np.full((len(splits), len(s.grid)), np.nan) for s in tuned}
    for k, (itr, iva) in enumerate(splits):
        Xtr, Xva = _harmonized(data, train[itr], train[iva], y[itr], config)
        for spec in tuned:
            prefix = clone(spec.pipeline[:-1]).fit(Xtr, y[itr])
            Ztr, Zva = prefix.transform(Xtr), prefix.transform(Xva)
            for j, value in enumerate(spec.grid):
                clf = clone(spec.pipeline[-1]).set_params(**{spec.param: value}).fit(Ztr, y[itr])
                tables[spec.name][k, j] = _inner_auc(y[iva], _scores(clf, Zva))
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
        score = _scores(model, Xte)
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


# ---------------------------------------------------------------------------- output


def _data_summary(features: Features) -> dict[str, Any]:
    subjects = features.subjects
    per_site = {
        str(site): {
            "n": int(len(g)),
            "n_case": int(g["y"].sum()),
            "n_control": int((g["y"] == 0).sum()),
        }
        for site, g in subjects.groupby("site", sort=True)
    }
    return {
        **features.source,
        "kind": features.kind,
        "n_subjects": int(len(subjects)),
        "n_case": int(subjects["y"].sum()),
        "n_control": int((subjects["y"] == 0).sum()),
        "n_features": int(features.X.shape[1]),
        "n_sites": len(per_site),
        "dx_labels": features.dx_labels,
        "sites": per_site,
        "notes": features.notes,
    }


def _summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = {
            "scheme": r["scheme"],
            "model": r["model"],
            **{m: r["pooled"][m] for m in METRICS},
            "fold_mean_accuracy": r["fold_mean"]["accuracy"],
            "fold_sd_accuracy": r["fold_sd"]["accuracy"],
        }
        perm = r.get("permutation")
        row["p_accuracy"] = perm["accuracy"]["p_value"] if perm else None
        row["p_balanced_accuracy"] = perm["balanced_accuracy"]["p_value"] if perm else None
        rows.append(row)
    return rows


def _site_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per scheme x model x site (the data of the per-site plot)."""
    return [
        {"scheme": r["scheme"], "model": r["model"], "site": site, **metrics}
        for r in results
        for site, metrics in r["sites"].items()
    ]


def _gaps(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Random-fold minus site-held-out accuracy, per model: the optimism of random folds."""
    acc = {(r["scheme"], r["model"]): r["pooled"]["accuracy"] for r in results}
    out: dict[str, dict[str, float]] = {}
    for (scheme, model), value in acc.items():
        if scheme == "stratified-kfold":
            continue
        random = acc.get(("stratified-kfold", model))
        if random is not None:
            out.setdefault(model, {})[f"stratified-kfold_minus_{scheme}"] = random - value
    return out


def plot_site_scores(results: list[dict[str, Any]], path: Path, metric: str = "accuracy") -> None:
    """Per-site scores, one panel per scheme, one bar per model; chance at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = list(dict.fromkeys(r["scheme"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    sites = sorted(results[0]["sites"])
    height = 0.8 / len(models)
    fig, axes = plt.subplots(
        1,
        len(schemes),
        figsize=(4.2 * len(schemes), 0.28 * len(sites) + 1.6),
        sharey=True,
        squeeze=False,
    )
    for ax, scheme in zip(axes[0], schemes, strict=True):
        for m, model in enumerate(models):
            r = next(x for x in results if x["scheme"] == scheme and x["model"] == model)
            values = [r["sites"][s][metric] or np.nan for s in sites]
            ax.barh(
                np.arange(len(sites)) + m * height,
                values,
                height=height,
                label=f"{model} (pooled {r['pooled'][metric]:.3f})",
            )
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_title(scheme, fontsize=10)
        ax.set_xlabel(metric.replace("_", " "))
        ax.legend(fontsize=7, loc="lower right")
    labels = [f"{s} (n={results[0]['sites'][s]['n']})" for s in sites]
    axes[0][0].set_yticks(np.arange(len(sites)) + 0.4 - height / 2, labels, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _predictions_table(features: Features, results: list[dict[str, Any]]) -> pd.DataFrame:
    blocks = []
    for r in results:
        oof = r["_oof"]
        blocks.append(
            pd.DataFrame(
                {
                    "scheme": r["scheme"],
                    "model": r["model"],
                    "subject_key": features.subjects["subject_key"].to_numpy(),
                    "site": features.sites,
                    "y_true": features.y,
                    "fold": oof["fold"],
                    "y_pred": oof["pred"],
                    "score": oof["score"],
                }
            )
        )
    return pd.concat(blocks, ignore_index=True)


def run_prediction(
    features: Features,
    out_dir: str | Path,
    config: PredictionConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cross-validate, then write ``prediction.json``, ``predictions.csv`` and the site plot.

    The folder is written in a temporary sibling and moved into place when
    complete, so a failed run leaves no partial results.

    Returns
    -------
    dict
        The content of ``prediction.json``.
    """
    config = config or PredictionConfig()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    start = time.perf_counter()
    results = cross_validate(features, config)
    with staged_output(out_dir) as tmp:
        _predictions_table(features, results).to_csv(tmp / "predictions.csv", index=False)
        plot_site_scores(results, tmp / "prediction_sites.png")
        doc = {
            "format": RESULT_FORMAT,
            "data": _data_summary(features),
            "config": asdict(config),
            "summary": _summary_rows(results),
            "gap": _gaps(results),
            "per_site": _site_rows(results),
            "results": [{k: v for k, v in r.items() if k != "_oof"} for r in results],
            "figures": {"per_site": "prediction_sites.png"},
            "files": {"predictions": "predictions.csv"},
            "seed": config.seed,
            "software": software_versions(),
            "runtime_s": round(time.perf_counter() - start, 2),
        }
        doc = jsonable(doc)
        (tmp / "prediction.json").write_text(json.dumps(doc, indent=2))
    return doc

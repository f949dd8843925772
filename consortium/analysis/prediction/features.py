"""The subjects x features matrix prediction works on, read from a release.

:class:`Features` carries the matrix with the phenotypes prediction needs;
:func:`features_from_dataset` builds it from a release (edges, network means
or voxel maps). The ABIDE PCP folder reader is in :mod:`.abide`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FEATURE_KINDS",
    "Features",
    "PredictionError",
    "features_from_dataset",
    "standardize_subjects",
]

FEATURE_KINDS = ("edges", "networks", "maps")


class PredictionError(ValueError):
    """Data or options that a prediction run cannot use; the message names the culprit."""


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
        """Labels, 1 = case, 0 = control."""
        return self.subjects["y"].to_numpy(dtype=int)

    @property
    def sites(self) -> np.ndarray:
        """Site label of every subject (str)."""
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


def labelled_subjects(subjects: pd.DataFrame, dx_labels: dict[str, str]) -> pd.DataFrame:
    """The phenotype table with ``y`` (1 = case) added; other diagnoses are an error."""
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


def nonfinite_policy(X: np.ndarray, subjects: pd.DataFrame, nan: str, what: str) -> list[str]:
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
    subjects = labelled_subjects(dataset.subjects, dataset.dx_labels)
    if kind in ("edges", "networks"):
        atlas = atlas or _only(dataset.atlases, "atlas")
        if kind == "edges":
            X = np.array(dataset.connectivity(atlas), dtype=np.float64)
            names = edge_names(atlas, X.shape[1], _release_labels(dataset, atlas))
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
    notes = nonfinite_policy(X, subjects, nan, kind)
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


def edge_names(atlas_name: str, n_edges: int, labels: list[str] | None = None) -> list[str]:
    """``ROI_a__ROI_b`` names of the upper-triangle edges (ROI indices for unknown atlases)."""
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

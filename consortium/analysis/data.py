"""What a kind reads: the release, the design, and its outcomes (optionally harmonized).

:class:`ReleaseData` is the first argument of every kind's ``run``. The outcome
readers here check that values are finite (naming the first bad subject) and
apply the harmonizer chosen by ``params.harmonize`` through
:func:`harmonization.registry.make_harmonizer`: the numpy engine for edges and
network means, the dask engine for voxel maps (fitted in one pass over the
chunks, transformed lazily chunk by chunk by whatever consumes it). Network means
are recomputed from the harmonized edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.design import Design
from consortium.analysis.errors import AnalysisError
from consortium.dataset import Dataset, DatasetError
from harmonization.registry import make_harmonizer
from sites.atlas import Atlas
from sites.connectivity import network_summaries

__all__ = [
    "ReleaseData",
    "atlas_of",
    "check_finite",
    "check_finite_rows",
    "edges_of",
    "harmonize",
    "harmonize_fitted",
    "harmonize_lazy",
    "summaries_of",
]


@dataclass(frozen=True)
class ReleaseData:
    """A kind's input: the dataset, the design built for it, the directory it writes to.

    ``client``: a ``dask.distributed`` client opened by the caller for the
    permutations (None: dask's local scheduler); kinds never open one.
    """

    dataset: Dataset
    design: Design
    out: Path
    client: Any = None


def _options(ref_site: str | None, **options: Any) -> dict[str, Any]:
    return {**options, **({"ref_site": ref_site} if ref_site is not None else {})}


def _harmonizer(name: str, ref_site: str | None, **options: Any) -> Any:
    try:
        return make_harmonizer(name, **_options(ref_site, **options))
    except ValueError as exc:
        raise AnalysisError(f"harmonize: {exc}") from exc


def _inputs(design: Design) -> tuple[np.ndarray, pd.DataFrame]:
    """Sites and preserved covariates (diagnosis and the model covariates)."""
    return design.data["site"].to_numpy(), design.data[design.fixed].reset_index(drop=True)


def harmonize(X: np.ndarray, design: Design, name: str, ref_site: str | None = None) -> np.ndarray:
    """``X`` harmonized across sites by harmonizer ``name``, preserving diagnosis and covariates."""
    return harmonize_fitted(X, design, name, ref_site)[0]


def harmonize_fitted(
    X: np.ndarray, design: Design, name: str, ref_site: str | None = None
) -> tuple[np.ndarray, Any]:
    """:func:`harmonize`, and the fitted harmonizer (its estimates feed the diagnostics)."""
    sites, covariates = _inputs(design)
    model = _harmonizer(name, ref_site)
    harmonized = model.fit_transform(np.asarray(X, dtype=np.float64), sites, covariates)
    return np.asarray(harmonized), model


def harmonize_lazy(
    X: Any, data: ReleaseData, name: str, what: str, ref_site: str | None = None
) -> Any:
    """Harmonizer ``name`` (dask engine) of a dask array chunked by features, returned lazily.

    The fit reads ``X`` once; non-finite input is reported by site and subject.
    """
    import dask.array as da

    sites, covariates = _inputs(data.design)
    model = _harmonizer(name, ref_site, engine="dask")
    try:
        model.fit(X, sites, covariates)
    except ValueError:
        # Only on failure: one more pass to name the subject (the harmonizer names a row).
        check_finite_rows(da.isfinite(X).all(axis=1).compute(), data, what)
        raise
    return model.transform(X, sites, covariates)


def check_finite(values: np.ndarray, data: ReleaseData, what: str) -> None:
    """AnalysisError naming the first subject with a non-finite value."""
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    check_finite_rows(finite, data, what)


def check_finite_rows(finite: np.ndarray, data: ReleaseData, what: str) -> None:
    """AnalysisError naming the first subject whose row is not all finite."""
    finite = np.asarray(finite, dtype=bool)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        row = data.dataset.subjects.iloc[data.design.rows[i]]
        raise AnalysisError(
            f"site {row['site']!r}, subject {str(row['subject_key'])[:16]}: {what} has "
            f"non-finite values ({int((~finite).sum())} subjects in all)"
        )


def atlas_of(dataset: Dataset, name: str) -> Atlas:
    """The atlas definition the release carries (never a file on this machine)."""
    try:
        return dataset.atlas(name)
    except DatasetError as exc:
        raise AnalysisError(str(exc)) from exc


def resolve_atlas(dataset: Dataset, name: str | None) -> str:
    """The atlas to use: ``name``, or the release's only atlas."""
    try:
        return dataset.resolve_atlas(name)
    except DatasetError as exc:
        raise AnalysisError(str(exc)) from exc


def default_metric(dataset: Dataset) -> str:
    """The first voxel map common to all sites."""
    names = dataset.map_names
    if not names:
        raise AnalysisError("the release has no voxel maps common to all sites")
    return names[0]


def edges_of(data: ReleaseData, atlas: str) -> np.ndarray:
    """Connectivity (subjects of the design x edges), checked finite."""
    edges = data.dataset.connectivity(atlas)[data.design.rows]
    check_finite(edges, data, f"connectivity ({atlas})")
    return edges


def summaries_of(
    data: ReleaseData, atlas: str, harmonizer: str, ref_site: str | None = None
) -> pd.DataFrame:
    """Network means, as submitted (``"none"``) or recomputed from harmonized edges."""
    if harmonizer == "none":
        rows = data.design.rows
        table = data.dataset.network_summaries(atlas).iloc[rows].reset_index(drop=True)
        check_finite(table.to_numpy(), data, f"network summaries ({atlas})")
        return table
    edges = harmonize(edges_of(data, atlas), data.design, harmonizer, ref_site)
    return network_summaries(edges, atlas_of(data.dataset, atlas)).reset_index(drop=True)

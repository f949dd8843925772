"""Harmonization diagnostics: what a harmonizer did to each site's features.

Two views, both small enough for ``results.json`` and the report:

* site moments: for every site, the mean and the variance of the features
  before and after harmonization. Per feature, the site mean and the
  within-site variance (``ddof=1``) are computed over the site's subjects; the
  table gives their average over the features. After a location/scale
  harmonization the sites' rows should agree much more closely than before.
* location/scale estimates: the empirical Bayes site effects a ComBat-type
  model estimated, ``gamma*`` (additive, in units of the pooled standard
  deviation) and ``delta*`` (multiplicative on the variance), summarised per
  site over the features by box-plot statistics (5th, 25th, 50th, 75th and
  95th percentiles and the mean). A harmonizer without such estimates (``none``
  or a registered toy) gives no location/scale summary.

Inputs are arrays, outputs small frozen dataclasses with ``to_dict`` /
``from_dict``. Numpy arrays and dask arrays (the voxel kind streams its maps)
are both accepted; a dask array is reduced lazily and computed once.

References
----------
Johnson WE, Li C, Rabinovic A (2007). Biostatistics 8:118-127.
Fortin J-P et al. (2017). NeuroImage 161:149-170.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "BoxStats",
    "HarmonizationDiagnostics",
    "SiteMoments",
    "harmonization_diagnostics",
    "location_scale",
    "site_moments",
]

#: Percentiles of a box: whisker, quartile, median, quartile, whisker.
BOX_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)


@dataclass(frozen=True)
class SiteMoments:
    """One site's feature mean and variance before and after harmonization."""

    site: str
    n: int
    mean_before: float
    var_before: float
    mean_after: float
    var_after: float


@dataclass(frozen=True)
class BoxStats:
    """Box-plot statistics of one site's estimates over the features."""

    site: str
    low: float
    q1: float
    median: float
    q3: float
    high: float
    mean: float


@dataclass(frozen=True)
class HarmonizationDiagnostics:
    """Site moments and location/scale estimates of one harmonization.

    Attributes
    ----------
    harmonizer : str
        Registered harmonizer name (``harmonization.registry``).
    n_features : int
        Features harmonized (edges, voxels, ...).
    sites : tuple of SiteMoments
        One row per site, sorted by site.
    location, scale : tuple of BoxStats
        ``gamma*`` and ``delta*`` per site; empty when the harmonizer has none.
    """

    harmonizer: str
    n_features: int
    sites: tuple[SiteMoments, ...]
    location: tuple[BoxStats, ...] = ()
    scale: tuple[BoxStats, ...] = ()

    def between_site_sd(self, which: str) -> float:
        """Standard deviation across sites of the site means (``"before"``/``"after"``)."""
        values = np.array([getattr(s, f"mean_{which}") for s in self.sites], dtype=float)
        return float(values.std(ddof=1)) if len(values) > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able record (the serialiser of results embeds it as is)."""
        return {
            "harmonizer": self.harmonizer,
            "n_features": self.n_features,
            "sites": [asdict(s) for s in self.sites],
            "between_site_sd": {w: self.between_site_sd(w) for w in ("before", "after")},
            "location": [asdict(b) for b in self.location],
            "scale": [asdict(b) for b in self.scale],
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> HarmonizationDiagnostics:
        """Inverse of :meth:`to_dict` (``between_site_sd`` is recomputed)."""
        try:
            return cls(
                harmonizer=str(record["harmonizer"]),
                n_features=int(record["n_features"]),
                sites=tuple(SiteMoments(**s) for s in record["sites"]),
                location=tuple(BoxStats(**b) for b in record.get("location", ())),
                scale=tuple(BoxStats(**b) for b in record.get("scale", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"harmonization diagnostics: malformed record ({exc})") from exc


def _is_lazy(X: Any) -> bool:
    return hasattr(X, "compute") and hasattr(X, "map_blocks")


def _site_labels(sites: Any, n: int) -> np.ndarray:
    labels = np.asarray(sites).astype(str)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"sites has {len(labels)} labels for {n} subjects")
    return labels


def site_moments(X: Any, sites: Sequence[Any] | np.ndarray) -> list[tuple[str, int, float, float]]:
    """Per site: (site, n, mean of the feature means, mean of the feature variances).

    Parameters
    ----------
    X : array (n_subjects, n_features), numpy or dask
    sites : sequence of labels, one per subject

    Returns
    -------
    list of (site, n, mean, variance), sorted by site; variance is ``nan`` for a
    site with one subject.
    """
    if X.ndim != 2:
        raise ValueError(f"features must be 2-D (subjects x features), got shape {X.shape}")
    labels = _site_labels(sites, X.shape[0])
    names = sorted(set(labels.tolist()))
    masks = [labels == name for name in names]
    blocks = [X[m].astype(np.float64) for m in masks]  # float32 features: sums in float64
    means = [b.mean(axis=0).mean() for b in blocks]
    variances = [
        b.var(axis=0, ddof=1).mean() if m.sum() > 1 else np.nan
        for b, m in zip(blocks, masks, strict=True)
    ]
    if _is_lazy(X):
        import dask

        means, variances = dask.compute(means, variances)
    return [
        (name, int(m.sum()), float(mu), float(var))
        for name, m, mu, var in zip(names, masks, means, variances, strict=True)
    ]


def _box(site: str, values: np.ndarray) -> BoxStats:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        nan = float("nan")
        return BoxStats(site, nan, nan, nan, nan, nan, nan)
    low, q1, median, q3, high = (float(v) for v in np.percentile(values, BOX_PERCENTILES))
    return BoxStats(site, low, q1, median, q3, high, float(values.mean()))


def location_scale(model: Any) -> tuple[tuple[BoxStats, ...], tuple[BoxStats, ...]]:
    """Box statistics of a fitted model's ``gamma_star_`` and ``delta_star_`` per site.

    Parameters
    ----------
    model : fitted estimator or None
        A ComBat-type model (``sites_``, ``gamma_star_``, ``delta_star_`` of shape
        (n_sites, n_features)); anything else gives two empty tuples.
    """
    needed = ("sites_", "gamma_star_", "delta_star_")
    if model is None or not all(hasattr(model, name) for name in needed):
        return (), ()
    gamma = np.asarray(model.gamma_star_, dtype=float)
    delta = np.asarray(model.delta_star_, dtype=float)
    names = [str(s) for s in model.sites_]
    if gamma.shape != delta.shape or gamma.ndim != 2 or gamma.shape[0] != len(names):
        raise ValueError(
            f"model estimates have shapes {gamma.shape} and {delta.shape} for {len(names)} sites"
        )
    order = np.argsort(names, kind="stable")
    return (
        tuple(_box(names[i], gamma[i]) for i in order),
        tuple(_box(names[i], delta[i]) for i in order),
    )


def harmonization_diagnostics(
    before: Any,
    after: Any,
    sites: Sequence[Any] | np.ndarray,
    *,
    harmonizer: str,
    model: Any = None,
) -> HarmonizationDiagnostics:
    """Diagnostics of one harmonization of ``before`` into ``after``.

    Parameters
    ----------
    before, after : array (n_subjects, n_features), numpy or dask
        The features as submitted and as harmonized, same subjects and order.
    sites : sequence
        Site label of every subject.
    harmonizer : str
        Registered harmonizer name, recorded for the report.
    model : fitted estimator, optional
        The harmonizer that produced ``after``; its ``gamma_star_`` and
        ``delta_star_`` give the location/scale summary (see :func:`location_scale`).

    Returns
    -------
    HarmonizationDiagnostics
    """
    if tuple(before.shape) != tuple(after.shape):
        raise ValueError(
            f"features before ({before.shape}) and after ({after.shape}) harmonization differ"
        )
    first = site_moments(before, sites)
    second = site_moments(after, sites)
    rows = tuple(
        SiteMoments(site, n, mu0, var0, mu1, var1)
        for (site, n, mu0, var0), (_, _, mu1, var1) in zip(first, second, strict=True)
    )
    location, scale = location_scale(model)
    return HarmonizationDiagnostics(str(harmonizer), int(before.shape[1]), rows, location, scale)

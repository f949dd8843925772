"""Functional connectivity: Fisher-z Pearson correlation and network summaries.

Connectivity follows the REST-meta-MDD convention [1]_: Pearson correlation of
ROI time series, Fisher r-to-z transform ``z = atanh(r)``, diagonal excluded,
stored as the upper triangle in numpy ``triu_indices(n_rois, k=1)`` order.

References
----------
.. [1] Yan C.-G. et al. (2019). Reduced default mode network functional
   connectivity in patients with recurrent major depressive disorder. PNAS
   116:9078-9083.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sites.atlas import Atlas

# |r| is clipped below 1 so that two identical ROI signals give a large finite z.
_R_MAX = 1.0 - 1e-7


def fisher_z_connectivity(timeseries: np.ndarray) -> np.ndarray:
    """Fisher-z transformed Pearson correlation, upper triangle.

    Parameters
    ----------
    timeseries : ndarray of shape (n_volumes, n_rois)
        ROI time series of one subject.

    Returns
    -------
    edges : ndarray of shape (n_rois * (n_rois - 1) // 2,), float32
        ``atanh(r)`` for ROI pairs in ``np.triu_indices(n_rois, k=1)`` order.
        Pairs involving a zero-variance ROI are NaN (quality control excludes
        such subjects).
    """
    ts = np.asarray(timeseries, dtype=np.float64)
    if ts.ndim != 2 or ts.shape[0] < 3:
        raise ValueError(f"time series must be volumes x ROIs with >= 3 volumes, got {ts.shape}")
    centered = ts - ts.mean(axis=0)
    norms = np.sqrt(np.einsum("ij,ij->j", centered, centered))
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = centered / norms
    corr = unit.T @ unit
    rows, cols = np.triu_indices(ts.shape[1], k=1)
    r = np.clip(corr[rows, cols], -_R_MAX, _R_MAX)
    return np.arctanh(r).astype(np.float32)


def network_pairs(atlas: Atlas) -> dict[str, np.ndarray]:
    """Edge indices of each unordered network pair of an atlas.

    Returns
    -------
    dict
        ``"<netA>__<netB>"`` (alphabetical) -> indices into the upper-triangle
        edge vector. Pairs without any edge (a one-ROI network with itself)
        are omitted.
    """
    nets = np.asarray(atlas.networks)
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    a, b = nets[rows], nets[cols]
    first = np.where(a <= b, a, b)
    second = np.where(a <= b, b, a)
    keys = np.char.add(np.char.add(first.astype(str), "__"), second.astype(str))
    names = sorted(set(keys.tolist()))
    return {name: np.flatnonzero(keys == name) for name in names}


def dmn_edges(atlas: Atlas) -> np.ndarray:
    """Edge indices joining two ROIs of the atlas's REST-meta-MDD DMN."""
    if atlas.dmn is None:
        raise ValueError(f"atlas {atlas.name!r} has no DMN assignment")
    rows, cols = np.triu_indices(atlas.n_rois, k=1)
    return np.flatnonzero(atlas.dmn[rows] & atlas.dmn[cols])


def network_summaries(edges: np.ndarray, atlas: Atlas) -> pd.DataFrame:
    """Mean Fisher z within and between the networks of an atlas.

    Parameters
    ----------
    edges : ndarray of shape (n_subjects, n_edges)
        Upper-triangle connectivity, as from :func:`fisher_z_connectivity`.
    atlas : Atlas
        Gives the network of each ROI.

    Returns
    -------
    DataFrame of shape (n_subjects, n_pairs)
        One column per unordered network pair ``"<netA>__<netB>"``
        (alphabetical; within-network e.g. ``"default__default"``), plus
        ``"dmn_restmeta"`` (mean over the 528 pairs of the 33 DMN ROIs) when
        the atlas has a DMN.
    """
    edges = np.atleast_2d(np.asarray(edges, dtype=np.float64))
    if edges.shape[1] != atlas.n_edges:
        raise ValueError(
            f"{edges.shape[1]} edges given but atlas {atlas.name!r} has {atlas.n_edges}"
        )
    groups = network_pairs(atlas)
    if atlas.dmn is not None:
        groups["dmn_restmeta"] = dmn_edges(atlas)
    # One sparse-like averaging matrix turns all means into a single product.
    weights = np.zeros((atlas.n_edges, len(groups)))
    for j, idx in enumerate(groups.values()):
        weights[idx, j] = 1.0 / len(idx)
    return pd.DataFrame(edges @ weights, columns=list(groups))

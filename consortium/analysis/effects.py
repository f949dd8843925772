"""Effect sizes from t statistics, edge vector/matrix helpers and network-block summaries.

References
----------
Yan C-G et al. (2019). PNAS 116:9078-9083 (d from the mixed-model t).
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press
(large-sample variance of d).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "cohens_d_ci",
    "d_from_t",
    "edges_to_matrix",
    "matrix_to_edges",
    "network_block_summary",
]


def d_from_t(t, n1, n2, df, level: float = 0.95):
    """Cohen's d from a group t statistic, with its confidence interval.

    d = t (n1 + n2) / (sqrt(df) sqrt(n1 n2)), the REST-meta-MDD conversion, with ``df``
    the residual degrees of freedom (n - p) of the model that produced ``t``; the CI is
    that of :func:`cohens_d_ci`. Returns ``(d, ci_low, ci_high)`` (arrays broadcast from
    the inputs).
    """
    t, n1, n2, df = (np.asarray(a, dtype=float) for a in (t, n1, n2, df))
    d = t * (n1 + n2) / (np.sqrt(df) * np.sqrt(n1 * n2))
    low, high, _ = cohens_d_ci(d, n1, n2, level)
    return d, low, high


def cohens_d_ci(d, n1, n2, level: float = 0.95):
    """Large-sample confidence interval of d (Hedges & Olkin 1985).

    se(d) = sqrt((n1 + n2) / (n1 n2) + d^2 / (2 (n1 + n2))); CI = d -/+ z se(d).
    Returns ``(low, high, se)``.
    """
    d, n1, n2 = (np.asarray(a, dtype=float) for a in (d, n1, n2))
    se = np.sqrt((n1 + n2) / (n1 * n2) + d**2 / (2 * (n1 + n2)))
    z = stats.norm.ppf(1 - (1 - level) / 2)
    return d - z * se, d + z * se, se


def _n_rois(n_edges: int) -> int:
    n = int(round((1 + np.sqrt(1 + 8 * n_edges)) / 2))
    if n * (n - 1) // 2 != n_edges:
        raise ValueError(f"{n_edges} is not a number of edges n (n - 1) / 2 of any n ROIs")
    return n


def edges_to_matrix(edges: np.ndarray, diagonal: float = 0.0) -> np.ndarray:
    """Symmetric ROI x ROI matrix from an upper triangle in ``triu_indices(n, k=1)`` order.

    ``edges`` may be (n_edges,) or (..., n_edges); the matrix axes are appended last.
    """
    edges = np.asarray(edges)
    n = _n_rois(edges.shape[-1])
    out = np.full((*edges.shape[:-1], n, n), diagonal, dtype=np.result_type(edges, float))
    iu = np.triu_indices(n, k=1)
    out[..., iu[0], iu[1]] = edges
    out[..., iu[1], iu[0]] = edges
    return out


def matrix_to_edges(matrix: np.ndarray) -> np.ndarray:
    """Upper triangle (``triu_indices(n, k=1)`` order) of ROI x ROI matrices (last two axes)."""
    matrix = np.asarray(matrix)
    n = matrix.shape[-1]
    if matrix.shape[-2] != n:
        raise ValueError(f"matrices must be square (got {matrix.shape[-2:]})")
    iu = np.triu_indices(n, k=1)
    return matrix[..., iu[0], iu[1]]


def network_block_summary(
    edge_values: np.ndarray, networks: Sequence[str], statistic: str = "mean"
) -> pd.DataFrame:
    """Mean (or median) of an edge-wise effect within and between networks.

    Parameters
    ----------
    edge_values : ndarray (n_edges,)
        One value per edge in ``triu_indices(n, k=1)`` order (e.g. d or t).
    networks : list of str
        Network label of each ROI.

    Returns
    -------
    DataFrame
        Networks x networks (alphabetical), symmetric; the diagonal holds within-network
        means over the unordered ROI pairs of that network, NaN where a network has a
        single ROI.
    """
    edge_values = np.asarray(edge_values, dtype=float)
    networks = np.asarray(networks)
    n = _n_rois(edge_values.size)
    if networks.size != n:
        raise ValueError(f"{networks.size} network labels for {n} ROIs")
    reducer = {"mean": np.mean, "median": np.median}[statistic]
    iu = np.triu_indices(n, k=1)
    a, b = networks[iu[0]], networks[iu[1]]
    names = sorted(set(networks.tolist()))
    table = pd.DataFrame(np.nan, index=names, columns=names)
    for i, na in enumerate(names):
        for nb in names[i:]:
            sel = ((a == na) & (b == nb)) | ((a == nb) & (b == na))
            if sel.any():
                table.loc[na, nb] = table.loc[nb, na] = reducer(edge_values[sel])
    return table

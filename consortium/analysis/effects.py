"""Effect sizes from t statistics, edge vector/matrix helpers and network-block summaries.

References
----------
Yan C-G et al. (2019). PNAS 116:9078-9083 (d from the mixed-model t).
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press
(large-sample variance of d).
Efron B, Stein C (1981). The jackknife estimate of variance. Ann Stat 9:586-596.
Cameron AC, Miller DL (2015). A practitioner's guide to cluster-robust inference.
J Hum Resour 50:317-372 (delete-a-group jackknife, t with G - 1 degrees of freedom).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "cohens_d_ci",
    "d_from_t",
    "jackknife_d_ci",
    "leave_one_site_out_d",
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


def jackknife_d_ci(d, d_leave_out, n1, n2, level: float = 0.95):
    """Confidence interval of d from leave-one-site-out estimates (delete-a-group jackknife).

    Not the interval of ``dmn_model`` (which uses the parametric bootstrap of
    :mod:`consortium.analysis.d_bootstrap`); kept as the comparison in
    ``benchmarks/bench_d_coverage.py``, where it is conservative without slope variance.

    With ``d_(g)`` the d refitted without site ``g`` (``g = 1..G``) and ``dbar`` their mean,

        se_J = sqrt((G - 1) / G * sum_g (d_(g) - dbar)^2),
        se = max(se_J, se_HO),
        CI = d -/+ t_{G-1, 1-(1-level)/2} se,

    with ``se_HO`` the large-sample standard error of :func:`cohens_d_ci` (from ``n1``,
    ``n2``). The site-to-site spread of d carries both the sampling error and the
    variance of the site random slopes of Dx (and the error in their estimate), which
    ``se_HO`` ignores; ``se_HO`` is a floor because the slopes can only add variance,
    and with 17 sites ``se_J`` itself is noisy.

    Parameters
    ----------
    d : float or ndarray (...)
        d on all sites.
    d_leave_out : ndarray (G, ...)
        d with each site left out in turn.
    n1, n2 : int or ndarray
        Subjects in the case and comparison groups (all sites).
    level : float
        Confidence level.

    Returns
    -------
    tuple of ndarray
        ``(low, high, se)``.
    """
    d = np.asarray(d, dtype=float)
    d_leave_out = np.asarray(d_leave_out, dtype=float)
    G = d_leave_out.shape[0]
    if G < 3:
        raise ValueError(f"the site jackknife needs at least 3 sites (got {G})")
    if d_leave_out.shape[1:] != d.shape:
        raise ValueError(f"d_leave_out must be (sites, *{d.shape}); got {d_leave_out.shape}")
    dev = d_leave_out - d_leave_out.mean(axis=0)
    se_j = np.sqrt((G - 1) / G * (dev**2).sum(axis=0))
    se = np.maximum(se_j, cohens_d_ci(d, n1, n2, level)[2])
    q = stats.t.ppf(1 - (1 - level) / 2, G - 1)
    return d - q * se, d + q * se, se


def leave_one_site_out_d(
    Y,
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    term: str = "Dx",
    random_slopes: Sequence[str] = (),
    reml: bool = False,
) -> np.ndarray:
    """d of ``term`` (+1 case, -1 comparison) refitted with each ``group`` left out.

    The mass mixed model (:func:`consortium.analysis.mass.mass_mixed_model`) is fitted
    to the outcomes ``Y`` (subjects x outcomes, rows aligned with ``data``) on the
    subjects of all groups but one, and d is :func:`d_from_t` of its t with the
    counts and residual degrees of freedom of that subset. Returns (G, outcomes), the
    groups in sorted order.
    """
    from consortium.analysis.mass import mass_mixed_model

    Y = np.asarray(Y, dtype=float)
    Y = Y[:, None] if Y.ndim == 1 else Y
    codes = data[group].to_numpy()
    out = []
    for g in np.unique(codes):
        keep = codes != g
        sub = data.loc[keep]
        res = mass_mixed_model(
            Y[keep], sub, fixed, group, random_slopes=random_slopes, reml=reml
        )
        n1, n2 = int((sub[term] > 0).sum()), int((sub[term] < 0).sum())
        d, _, _ = d_from_t(res.tvalues[term].to_numpy(), n1, n2, res.df_resid)
        out.append(d)
    return np.stack(out)


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

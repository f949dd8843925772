"""Cross-products of one site (one group): the sufficient statistics of the mixed model.

For the fixed design ``X`` (n, p), the random design ``Z`` (n, q) and outcomes ``Y``
(n, F) of one group, the profiled likelihood of the linear mixed model with a random
intercept and uncorrelated random slopes depends on the data only through

    Z'Z (q, q), Z'X (q, p), X'X (p, p), Z'Y (F, q), X'Y (F, p), diag(Y'Y) (F,)

(Bates et al. 2015). This module is the one definition of those products: the pooled
fit (:func:`consortium.analysis.mixed.cross_products`) calls it once per group (site)
on that group's rows and stacks the parts in site order, and a site calls it on its
own subjects in federated mode, so the pooled and federated fits see bit-identical
sums (floating-point addition is not associative: summing in another order would
move results by rounding).

References
----------
Bates D, Maechler M, Bolker B, Walker S (2015). Fitting linear mixed-effects models
using lme4. J Stat Softw 67(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GroupCrossProducts", "group_cross_products"]


@dataclass(frozen=True)
class GroupCrossProducts:
    """Cross-products of ``G`` groups; no array has a subject dimension.

    A site in federated mode is one group (``G = 1``).
    """

    n: np.ndarray  # (G,) subjects per group
    ZtZ: np.ndarray  # (G, q, q)
    ZtX: np.ndarray  # (G, q, p)
    ZtY: np.ndarray  # (G, F, q)
    XtX: np.ndarray  # (p, p), summed over groups
    XtY: np.ndarray  # (F, p), summed over groups
    YtY: np.ndarray  # (F,), summed over groups


def _weighted_column_sums(w: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``w' Y`` (F,), summed row by row in row order for every column.

    numpy's einsum (no BLAS) accumulates each column over the rows in order, whatever
    the number of columns; a BLAS product may pick another kernel, hence another
    summation order, for another ``F`` (a chunk of features versus all of them).
    """
    return np.einsum("i,if->f", w, Y)


def group_cross_products(X: np.ndarray, Z: np.ndarray, Y: np.ndarray) -> GroupCrossProducts:
    """Cross-products of one group's fixed design, random design and outcomes.

    Every sum runs over the rows in their order, and each feature's sums do not
    depend on the other features (so a chunk of features gives the same bits as all).

    Parameters
    ----------
    X : ndarray (n, p)
        Fixed design with its intercept column.
    Z : ndarray (n, q)
        Random design (intercept, then the random slopes).
    Y : ndarray (n,) or (n, F)
        Outcomes.
    """
    # C-contiguous float64 copies: the same data give the same bits whatever the
    # caller's memory layout (a site's own array or a row subset of the pooled one).
    X = np.ascontiguousarray(X, dtype=np.float64)
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    Y = np.ascontiguousarray(Y[:, None] if Y.ndim == 1 else Y)
    n = X.shape[0]
    if not (n == Z.shape[0] == Y.shape[0]):
        raise ValueError(f"X, Z and Y differ in rows: {n}, {Z.shape[0]}, {Y.shape[0]}")
    ZtY = np.stack([_weighted_column_sums(Z[:, k], Y) for k in range(Z.shape[1])], axis=1)
    XtY = np.stack([_weighted_column_sums(X[:, j], Y) for j in range(X.shape[1])], axis=1)
    return GroupCrossProducts(
        n=np.array([n], dtype=np.int64),
        ZtZ=np.einsum("ik,il->kl", Z, Z)[None],
        ZtX=np.einsum("ik,il->kl", Z, X)[None],
        ZtY=ZtY[None],
        XtX=np.einsum("ik,il->kl", X, X),
        XtY=XtY,
        YtY=np.einsum("if,if->f", Y, Y),
    )

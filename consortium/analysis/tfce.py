"""Threshold-free cluster enhancement (TFCE) on a 3-D mask, cheap enough per permutation.

Definition (Smith & Nichols 2009, with the fslmaths/nilearn conventions):

    TFCE(v) = sum_{k=1..K(v)} e_k(v)^E h_k^H,   h_k = k dh,  dh = max / n_steps,

where ``e_k(v)`` is the number of voxels of the cluster containing ``v`` at threshold
``h_k`` (voxels with value ``>= h_k``, connected by the given neighbourhood) and
``K(v)`` the number of thresholds at or below the value of ``v``. Like fslmaths and
nilearn (``nilearn.mass_univariate._utils.calculate_tfce``) the sum is not multiplied
by ``dh``; the default is 100 steps of ``max/100``. Two-sided: the negative map is
enhanced the same way with the same ``dh`` (from ``max |t|``) and keeps its sign.

Algorithm: instead of labelling the map at each of the ``n_steps`` thresholds (what
``scipy.ndimage.label`` per threshold costs), voxels are added in decreasing order of
their threshold level to a union-find forest. Each root carries an increment; at each
level every current root adds ``size^E h^H``, and when a root is attached under
another it subtracts the new parent's total so far, so that a voxel's TFCE is the sum
of increments on its path to the root (a weighted union-find). One pass is
``O(n_vox alpha(n_vox))`` plus the number of roots per level, compiled with numba.

References
----------
Smith SM, Nichols TE (2009). Threshold-free cluster enhancement: addressing problems of
smoothing, threshold dependence and localisation in cluster inference. NeuroImage
44:83-98.
Winkler AM et al. (2014). Permutation inference for the general linear model.
NeuroImage 92:381-397.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd

__all__ = [
    "TfceNull",
    "TfceResult",
    "mask_neighbors",
    "tfce",
    "tfce_test",
    "to_nifti",
]


def mask_neighbors(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Neighbour table of the voxels of a 3-D boolean ``mask`` (C order), -1 where none.

    ``connectivity`` is 6 (faces), 18 (faces and edges) or 26 (faces, edges, corners).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (got {mask.ndim} dimensions)")
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    index = np.full(np.add(mask.shape, 2), -1, dtype=np.int64)
    index[1:-1, 1:-1, 1:-1][mask] = np.arange(int(mask.sum()))
    coords = np.argwhere(mask) + 1
    offsets = [
        d for d in np.ndindex(3, 3, 3)
        if d != (1, 1, 1) and np.abs(np.subtract(d, 1)).sum() <= {6: 1, 18: 2, 26: 3}[connectivity]
    ]  # fmt: skip
    table = np.empty((coords.shape[0], len(offsets)), dtype=np.int64)
    for k, d in enumerate(offsets):
        shifted = coords + np.subtract(d, 1)
        table[:, k] = index[shifted[:, 0], shifted[:, 1], shifted[:, 2]]
    return table


@numba.njit(cache=True, nogil=True)
def _find(v, parent, delta, stack):  # pragma: no cover - compiled
    root = v
    top = 0
    while parent[root] != root:
        stack[top] = root
        top += 1
        root = parent[root]
    for i in range(top - 1, -1, -1):  # closest to the root first
        u = stack[i]
        p = parent[u]
        if p != root:
            delta[u] += delta[p]
        parent[u] = root
    return root


@numba.njit(cache=True, nogil=True)
def _enhance(levels, neighbors, weights, E):  # pragma: no cover - compiled
    """TFCE of one sign: ``levels[v]`` thresholds at or below v, ``weights[k] = h_k^H``."""
    n = levels.size
    n_steps = weights.size - 1
    counts = np.zeros(n_steps + 2, np.int64)
    for v in range(n):
        counts[levels[v] + 1] += 1
    starts = np.cumsum(counts)
    order = np.empty(n, np.int64)
    fill = starts.copy()
    for v in range(n):
        order[fill[levels[v]]] = v
        fill[levels[v]] += 1
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    delta = np.zeros(n)
    active = np.zeros(n, np.bool_)
    roots = np.empty(n, np.int64)
    stack = np.empty(n, np.int64)
    n_roots = 0
    for k in range(n_steps, 0, -1):
        for i in range(starts[k], starts[k + 1]):
            v = order[i]
            active[v] = True
            roots[n_roots] = v
            n_roots += 1
            rv = v  # root of v's cluster, kept up to date
            for j in range(neighbors.shape[1]):
                u = neighbors[v, j]
                if u < 0 or not active[u]:
                    continue
                ru = _find(u, parent, delta, stack)
                if ru == rv:
                    continue
                if size[ru] < size[rv]:
                    ru, rv = rv, ru
                delta[rv] -= delta[ru]  # rv goes under ru: keep its voxels' sums
                parent[rv] = ru
                size[ru] += size[rv]
                rv = ru
        kept = 0
        for i in range(n_roots):
            r = roots[i]
            if parent[r] == r:
                extent = np.sqrt(size[r]) if E == 0.5 else size[r] ** E
                delta[r] += extent * weights[k]
                roots[kept] = r
                kept += 1
        n_roots = kept
    out = np.zeros(n)
    for v in range(n):
        if active[v]:
            r = _find(v, parent, delta, stack)
            out[v] = delta[v] + (delta[r] if r != v else 0.0)
    return out


def _thresholds(top: float, dh: float | str) -> np.ndarray:
    """Thresholds ``h_1..h_n`` as nilearn computes them (100 steps for ``dh="auto"``)."""
    steps = 100 if dh == "auto" else int(round(top / float(dh)))
    steps = min(max(steps, 10), 1000)
    return np.linspace(0.0, top, steps + 1)[1:]


def tfce(
    values: np.ndarray,
    neighbors: np.ndarray,
    E: float = 0.5,
    H: float = 2.0,
    dh: float | str = "auto",
    two_sided: bool = True,
) -> np.ndarray:
    """TFCE of one map (n_vox,) or of a stack of maps (B, n_vox) over the same mask.

    Parameters
    ----------
    values : ndarray
        Statistic per mask voxel, in the order of :func:`mask_neighbors`.
    neighbors : ndarray (n_vox, k)
        From :func:`mask_neighbors` (26-connectivity by default there).
    E, H : float
        Extent and height exponents (0.5 and 2, Smith & Nichols 2009).
    dh : "auto" or float
        Step: ``"auto"`` = max / 100; a float gives ``round(max / dh)`` steps (10 to
        1000, as nilearn).
    two_sided : bool
        Enhance positive and negative clusters (negative values stay negative).
    """
    values = np.asarray(values, dtype=float)
    if values.shape[-1] != neighbors.shape[0]:
        raise ValueError(f"{values.shape[-1]} values for a mask of {neighbors.shape[0]} voxels")
    if values.ndim == 2:
        return np.stack([tfce(v, neighbors, E, H, dh, two_sided) for v in values])
    top = float(np.max(np.abs(values)) if two_sided else np.max(values))
    out = np.zeros_like(values)
    if not top > 0:
        return out
    h = _thresholds(top, dh)
    weights = np.concatenate([[0.0], h**H])
    for sign in (1.0, -1.0) if two_sided else (1.0,):
        levels = np.searchsorted(h, sign * values, side="right").astype(np.int64)
        out += sign * _enhance(levels, neighbors, weights, float(E))
    return out


@dataclass
class TfceNull:
    """Null statistic for :func:`~consortium.analysis.permutation.permutation_test`: max |TFCE|."""

    neighbors: np.ndarray
    E: float = 0.5
    H: float = 2.0
    dh: float | str = "auto"
    two_sided: bool = True

    def __call__(self, t: np.ndarray) -> np.ndarray:
        maps = tfce(t, self.neighbors, self.E, self.H, self.dh, self.two_sided)
        return np.abs(maps).max(axis=1) if self.two_sided else maps.max(axis=1)


@dataclass
class TfceResult:
    """Observed t and TFCE per mask voxel, FWE p by the max-TFCE null distribution."""

    t: np.ndarray
    tfce: np.ndarray
    p_fwe: np.ndarray
    null_max: np.ndarray
    permutation: Any  # FreedmanLaneResult (max-|t| results of the same permutations)


def tfce_test(
    Y: np.ndarray,
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    term: str,
    mask: Any,
    connectivity: int = 26,
    E: float = 0.5,
    H: float = 2.0,
    dh: float | str = "auto",
    two_sided: bool = True,
    **kwargs: Any,
) -> TfceResult:
    """TFCE with FWE p per voxel from within-site Freedman-Lane permutations.

    ``Y`` is subjects x mask voxels, in the C order of ``mask`` (a 3-D boolean array or
    a NIfTI mask image, as ``nilearn.masking.apply_mask`` orders them). Other keyword
    arguments go to :func:`~consortium.analysis.permutation.permutation_test` (e.g.
    ``random_slopes``, ``n_permutations``, ``seed``, ``client``). ``p_fwe = (1 + #{b:
    max_b |TFCE*| >= |TFCE_v|}) / (B + 1)``.
    """
    from consortium.analysis.permutation import permutation_test

    mask_array = _mask_array(mask)
    neighbors = mask_neighbors(mask_array, connectivity)
    if np.shape(Y)[1] != neighbors.shape[0]:
        raise ValueError(
            f"Y has {np.shape(Y)[1]} columns but the mask has {neighbors.shape[0]} voxels"
        )
    null = TfceNull(neighbors, E, H, dh, two_sided)
    res = permutation_test(
        Y, data, fixed, group, term, two_sided=two_sided, null_statistics={"tfce": null}, **kwargs
    )
    observed = tfce(res.t, neighbors, E, H, dh, two_sided)
    stat = np.abs(observed) if two_sided else observed
    null_max = res.null["tfce"]
    p = (1 + (null_max[None] >= stat[:, None]).sum(axis=1)) / (res.n_permutations + 1)
    return TfceResult(t=res.t, tfce=observed, p_fwe=p, null_max=null_max, permutation=res)


def _mask_array(mask: Any) -> np.ndarray:
    if hasattr(mask, "get_fdata"):
        return np.asarray(mask.get_fdata()) > 0
    return np.asarray(mask, dtype=bool)


def to_nifti(values: np.ndarray, mask_img: Any, fill: float = 0.0) -> Any:
    """A NIfTI image with ``values`` (one per mask voxel, C order) inside ``mask_img``."""
    import nibabel as nib

    mask = _mask_array(mask_img)
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (int(mask.sum()),):
        raise ValueError(f"{values.size} values for a mask of {int(mask.sum())} voxels")
    volume = np.full(mask.shape, fill, dtype=np.float32)
    volume[mask] = values
    return nib.Nifti1Image(volume, mask_img.affine)

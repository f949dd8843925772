"""Mass-univariate mixed models: one model per feature (edge, voxel), all at once.

Every feature shares the design and the grouping, so the group-wise cross-products
of :mod:`consortium.analysis.mixed` are computed for all features with a few matrix
products, and the profiled deviance is evaluated for all features in one batched
call. The relative standard deviations are optimised per feature, vectorised across
features: a coarse grid on ``u = log s``, then damped Newton steps with finite-difference
derivatives and backtracking, with ``s`` set to exactly 0 where the optimum lies on
the boundary. Features are processed in column chunks; a dask array is processed
chunk by chunk with ``map_blocks`` (and so on a ``dask.distributed`` cluster when a
client is active).

References
----------
Bates D et al. (2015). J Stat Softw 67(1).
Yan C-G et al. (2019). PNAS 116:9078-9083.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from consortium.analysis.mixed import (
    CrossProducts,
    MixedDesign,
    build_design,
    cross_products,
    profiled_deviance,
)

__all__ = ["MassMixedResult", "mass_from_cross_products", "mass_mixed_model"]

U_MIN, U_MAX = -12.0, 6.0  # log relative SD; exp(-12) is treated as 0 after the fit
_GRID = np.linspace(-7.0, 3.0, 11)
_H = 2e-4


@dataclass
class MassMixedResult:
    """Per-feature mixed-model results; DataFrames are features x terms."""

    params: pd.DataFrame
    bse: pd.DataFrame
    tvalues: pd.DataFrame
    pvalues: pd.DataFrame
    variance_components: pd.DataFrame
    scale: pd.Series
    llf: pd.Series
    converged: pd.Series
    df_resid: int
    nobs: int
    reml: bool


def _subset(cp: CrossProducts, idx: np.ndarray) -> CrossProducts:
    return CrossProducts(ZZ=cp.ZZ, ZW=cp.ZW[idx], WW=cp.WW[idx], nobs=cp.nobs, k_fe=cp.k_fe)


def _deviance_u(u: np.ndarray, cp: CrossProducts, reml: bool) -> np.ndarray:
    return profiled_deviance(np.exp(u), cp, reml)


def _grid_start(cp: CrossProducts, q: int, reml: bool) -> np.ndarray:
    """Coordinate-wise grid search for a starting point (intercept, then each slope)."""
    F = cp.WW.shape[0]
    u = np.full((F, q), -3.0)
    for k in [*range(q), 0]:
        devs = []
        for value in _GRID:
            trial = u.copy()
            trial[:, k] = value
            devs.append(_deviance_u(trial, cp, reml))
        u[:, k] = _GRID[np.argmin(np.stack(devs), axis=0)]
    return u


def _derivatives(
    u: np.ndarray, f0: np.ndarray, cp: CrossProducts, reml: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Central finite-difference gradient and Hessian of the deviance in ``u``."""
    F, q = u.shape
    grad = np.empty((F, q))
    hess = np.empty((F, q, q))
    plus, minus = [], []
    for k in range(q):
        step = np.zeros(q)
        step[k] = _H
        fp = _deviance_u(u + step, cp, reml)
        fm = _deviance_u(u - step, cp, reml)
        plus.append(fp)
        minus.append(fm)
        grad[:, k] = (fp - fm) / (2 * _H)
        hess[:, k, k] = (fp + fm - 2 * f0) / _H**2
    for i in range(q):
        for j in range(i + 1, q):
            step = np.zeros(q)
            step[[i, j]] = _H
            fpp = _deviance_u(u + step, cp, reml)
            fmm = _deviance_u(u - step, cp, reml)
            hij = (fpp + fmm - 2 * f0) / (2 * _H**2) - 0.5 * (hess[:, i, i] + hess[:, j, j])
            hess[:, i, j] = hess[:, j, i] = hij
    return grad, hess


def _newton_direction(grad: np.ndarray, hess: np.ndarray, u: np.ndarray) -> np.ndarray:
    q = grad.shape[1]
    # coordinates held at the lower bound by a positive gradient stay there
    held = (u <= U_MIN + 1e-12) & (grad > 0)
    eye = np.eye(q)
    h = np.where(held[:, :, None] | held[:, None, :], eye * 1.0, hess)
    g = np.where(held, 0.0, grad)
    # Newton step with the Hessian's eigenvalues replaced by their absolute values
    # (the log-scale deviance is concave close to s = 0): a descent direction that
    # keeps Newton's scaling; capped at 2 in each coordinate, then backtracking.
    lam, vec = np.linalg.eigh(h)
    lam = np.maximum(np.abs(lam), 1e-6)
    coef = np.einsum("fkj,fk->fj", vec, g) / lam
    step = -np.einsum("fkj,fj->fk", vec, coef)
    norm = np.maximum(np.abs(step).max(axis=1, keepdims=True), 1e-300)
    return step * np.minimum(1.0, 2.0 / norm)


def _snap_to_boundary(
    u: np.ndarray, f: np.ndarray, grad: np.ndarray, cp: CrossProducts, reml: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Move tiny components heading to zero onto the bound when that does not raise f.

    In ``u = log s`` the deviance is flat as ``s -> 0``, so Newton creeps towards the
    boundary; jumping there saves iterations and gives the exact boundary optimum.
    """
    heading = (u < -6.0) & (u > U_MIN) & (grad > 0)
    rows = np.flatnonzero(heading.any(axis=1))
    if rows.size == 0:
        return u, f
    trial = np.where(heading[rows], U_MIN, u[rows])
    ft = _deviance_u(trial, _subset(cp, rows), reml)
    ok = ft <= f[rows] + 1e-10
    u, f = u.copy(), f.copy()
    u[rows[ok]], f[rows[ok]] = trial[ok], ft[ok]
    return u, f


def _optimize(
    cp: CrossProducts, q: int, reml: bool, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the profiled deviance of every feature; returns ``s`` (F, q) and convergence."""
    u = _grid_start(cp, q, reml)
    f = _deviance_u(u, cp, reml)
    active = np.arange(u.shape[0])
    converged = np.zeros(u.shape[0], dtype=bool)
    for _ in range(max_iter):
        if active.size == 0:
            break
        sub = _subset(cp, active)
        ua, fa = u[active], f[active]
        grad, hess = _derivatives(ua, fa, sub, reml)
        direction = _newton_direction(grad, hess, ua)
        t = np.ones(active.size)
        accepted = np.zeros(active.size, dtype=bool)
        new_u, new_f = ua.copy(), fa.copy()
        for _ in range(12):
            todo = np.flatnonzero(~accepted)
            if todo.size == 0:
                break
            trial = np.clip(ua[todo] + t[todo, None] * direction[todo], U_MIN, U_MAX)
            ft = _deviance_u(trial, _subset(sub, todo), reml)
            ok = ft <= fa[todo] + 1e-12
            new_u[todo[ok]], new_f[todo[ok]] = trial[ok], ft[ok]
            accepted[todo[ok]] = True
            t[todo[~ok]] /= 2
        new_u, new_f = _snap_to_boundary(new_u, new_f, grad, sub, reml)
        moved = np.abs(new_u - ua).max(axis=1)
        projected = np.where((ua <= U_MIN + 1e-12) & (grad > 0), 0.0, grad)
        done = (np.abs(projected).max(axis=1) < 1e-7) | (moved < 1e-10)
        u[active], f[active] = new_u, new_f
        converged[active[done]] = True
        active = active[~done]
    s = np.exp(u)
    # optimum on the boundary: a variance component of exactly zero
    at_bound = u <= U_MIN + 1e-6
    if at_bound.any():
        s0 = np.where(at_bound, 0.0, s)
        rows = at_bound.any(axis=1)
        f0 = profiled_deviance(s0[rows], _subset(cp, np.flatnonzero(rows)), reml)
        better = f0 <= f[rows] + 1e-10
        s[np.flatnonzero(rows)[better]] = s0[rows][better]
    return s, converged


def _fit_block(Y: np.ndarray, design: MixedDesign, reml: bool) -> np.ndarray:
    """Fit all columns of ``Y``; returns packed statistics (2p + q + 3, F)."""
    return _fit_cross_products(cross_products(design, Y), design.Z.shape[1], reml)


def _fit_cross_products(cp: CrossProducts, q: int, reml: bool) -> np.ndarray:
    """Fit every feature of ``cp``; returns packed statistics (2p + q + 3, F)."""
    s, converged = _optimize(cp, q, reml)
    out = profiled_deviance(s, cp, reml, full=True)
    scale = out["scale"]
    bse = np.sqrt(scale[:, None] * np.diagonal(out["cov_unscaled"], axis1=1, axis2=2))
    return np.vstack(
        [
            out["beta"].T,
            bse.T,
            (scale[:, None] * s**2).T,
            scale[None],
            -0.5 * out["deviance"][None],
            converged[None].astype(float),
        ]
    )


def mass_mixed_model(
    Y: np.ndarray,
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    random_slopes: Sequence[str] = (),
    reml: bool = True,
    chunk_size: int = 2048,
    feature_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MassMixedResult:
    """Fit ``y_f ~ 1 + fixed + (1 | group) + (0 + slope | group)`` for every feature ``f``.

    Parameters
    ----------
    Y : ndarray, DataFrame or dask array (subjects, features)
        Outcomes, rows aligned with ``data``. A dask array is processed with
        ``map_blocks`` over feature chunks (rows are gathered into one chunk).
    data, fixed, group, random_slopes, reml
        As in :func:`consortium.analysis.mixed_model`.
    chunk_size : int
        Features per chunk for numpy input (bounds memory).
    feature_names : list of str, optional
        Row labels of the outputs (default: DataFrame columns or 0..F-1).
    progress : callable(done, total), optional
        Called after each chunk (numpy input).

    Returns
    -------
    MassMixedResult
        ``params``, ``bse``, ``tvalues``, ``pvalues`` (t with n - p df) as DataFrames
        features x terms, ``variance_components`` features x random terms.
    """
    design = build_design(data, fixed, group, random_slopes)
    if isinstance(Y, pd.DataFrame):
        feature_names = list(Y.columns) if feature_names is None else feature_names
        Y = Y.to_numpy(dtype=float)
    if Y.ndim != 2 or Y.shape[0] != design.nobs:
        raise ValueError(f"Y must be subjects x features with {design.nobs} rows (got {Y.shape})")
    p, q = design.X.shape[1], design.Z.shape[1]
    n_out = 2 * p + q + 3
    if _is_dask(Y):
        Yd = Y.rechunk({0: -1, 1: min(chunk_size, Y.shape[1])})
        packed = Yd.map_blocks(
            _dask_block,
            design,
            reml,
            _check_block,
            dtype=float,
            chunks=((n_out,), Yd.chunks[1]),
        ).compute()
    else:
        Y = np.asarray(Y, dtype=float)
        _check_block(Y, 0)
        blocks = []
        for start in range(0, Y.shape[1], chunk_size):
            blocks.append(_fit_block(Y[:, start : start + chunk_size], design, reml))
            if progress is not None:
                progress(min(start + chunk_size, Y.shape[1]), Y.shape[1])
        packed = np.hstack(blocks)
    return _unpack(
        packed, design.fixed_names, design.random_names, reml, feature_names, design.nobs
    )


def _is_dask(Y: object) -> bool:
    return type(Y).__module__.startswith("dask.")


def _check_block(Y: np.ndarray, offset: int) -> None:
    bad = ~np.isfinite(Y)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"Y has {int(bad.sum())} missing or non-finite values "
            f"(first at subject row {row}, feature {offset + col})"
        )


def _dask_block(block: np.ndarray, design: MixedDesign, reml: bool, check, block_info=None):
    offset = block_info[0]["array-location"][1][0] if block_info else 0
    check(block, offset)
    return _fit_block(np.asarray(block, dtype=float), design, reml)


def mass_from_cross_products(
    cp: CrossProducts,
    fixed_names: Sequence[str],
    random_names: Sequence[str],
    reml: bool = True,
    chunk_size: int = 2048,
    feature_names: Sequence[str] | None = None,
) -> MassMixedResult:
    """Fit every feature from its cross-products alone (the federated coordinator's fit).

    ``cp`` holds the group-wise cross-products of all features (for instance stacked
    from the sites' messages by :func:`consortium.analysis.mixed.stack_cross_products`);
    the optimisation is that of :func:`mass_mixed_model`, chunk by chunk.
    """
    q = len(random_names)
    F = cp.WW.shape[0]
    blocks = [
        _fit_cross_products(_subset(cp, np.arange(start, min(start + chunk_size, F))), q, reml)
        for start in range(0, F, chunk_size)
    ]
    packed = np.hstack(blocks)
    return _unpack(packed, list(fixed_names), list(random_names), reml, feature_names, cp.nobs)


def _unpack(
    packed: np.ndarray,
    fixed_names: list[str],
    random_names: list[str],
    reml: bool,
    feature_names: Sequence[str] | None,
    nobs: int,
) -> MassMixedResult:
    p, q = len(fixed_names), len(random_names)
    F = packed.shape[1]
    index = pd.Index(range(F) if feature_names is None else list(feature_names), name="feature")
    if len(index) != F:
        raise ValueError(f"{len(index)} feature names for {F} features")
    names = fixed_names
    params = pd.DataFrame(packed[:p].T, index=index, columns=names)
    bse = pd.DataFrame(packed[p : 2 * p].T, index=index, columns=names)
    tvalues = params / bse
    df_resid = nobs - p
    pvalues = pd.DataFrame(
        2 * stats.t.sf(np.abs(tvalues.to_numpy()), df_resid), index=index, columns=names
    )
    return MassMixedResult(
        params=params,
        bse=bse,
        tvalues=tvalues,
        pvalues=pvalues,
        variance_components=pd.DataFrame(
            packed[2 * p : 2 * p + q].T, index=index, columns=random_names
        ),
        scale=pd.Series(packed[2 * p + q], index=index, name="scale"),
        llf=pd.Series(packed[2 * p + q + 1], index=index, name="llf"),
        converged=pd.Series(packed[2 * p + q + 2] > 0.5, index=index, name="converged"),
        df_resid=df_resid,
        nobs=nobs,
        reml=reml,
    )

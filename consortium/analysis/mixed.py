"""Linear mixed models with a random intercept and uncorrelated random slopes.

The model for observation ``i`` of group ``g`` is

    y_i = x_i' beta + b_{g,0} + sum_k z_{ik} b_{g,k} + e_i,
    b_{g,k} ~ N(0, sigma^2 s_k^2) independent,  e_i ~ N(0, sigma^2),

fitted by maximum likelihood or REML after profiling out ``beta`` and ``sigma^2``
(Bates et al. 2015). Only the variance ratios ``s_k^2 >= 0`` (``s`` is lme4's
``theta``) are optimized numerically, with bounds, so a variance component can be
exactly zero.

Every quantity needed by the profiled criterion is a sum over groups of small
cross-products (``Z_g'Z_g``, ``Z_g'[X y]``, ``[X y]'[X y]``), which is what lets
:func:`consortium.analysis.mass.mass_mixed_model` evaluate thousands of features at once
with the same code.

References
----------
Bates D, Maechler M, Bolker B, Walker S (2015). Fitting linear mixed-effects models
using lme4. J Stat Softw 67(1).
Yan C-G et al. (2019). Reduced default mode network functional connectivity in
patients with recurrent major depressive disorder. PNAS 116:9078-9083.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

from sites.federated.crossprod import GroupCrossProducts, group_cross_products

__all__ = ["MixedModelResult", "mixed_model"]

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class MixedDesign:
    """Numeric arrays of a mixed model: fixed design, random design and groups."""

    X: np.ndarray
    Z: np.ndarray
    codes: np.ndarray
    n_groups: int
    fixed_names: list[str]
    random_names: list[str]
    group_labels: np.ndarray

    @property
    def nobs(self) -> int:
        return self.X.shape[0]


def _numeric_column(data: pd.DataFrame, name: str, role: str) -> np.ndarray:
    if name not in data.columns:
        raise KeyError(f"{role} column {name!r} not found in data (columns: {list(data.columns)})")
    col = data[name]
    if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
        raise TypeError(
            f"{role} column {name!r} must be numeric (found dtype {col.dtype}); "
            "code categories as numbers first"
        )
    values = col.to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = list(data.index[bad][:5])
        raise ValueError(
            f"{role} column {name!r} has {int(bad.sum())} missing or non-finite values "
            f"(first rows: {rows}); drop or impute them before fitting"
        )
    return values


def build_design(
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    random_slopes: Sequence[str] = (),
) -> MixedDesign:
    """Build the fixed design (with intercept), random design and group codes.

    Raises a clear error naming the column for a missing, non-numeric or incomplete
    column, and for a rank-deficient fixed design.
    """
    fixed = list(fixed)
    random_slopes = list(random_slopes)
    if "Intercept" in fixed:
        raise ValueError("'Intercept' is always added; do not list it in fixed")
    if len(set(fixed)) != len(fixed):
        raise ValueError(f"duplicate names in fixed: {fixed}")
    if group not in data.columns:
        raise KeyError(f"group column {group!r} not found in data")
    if data[group].isna().any():
        n_missing = int(data[group].isna().sum())
        raise ValueError(f"group column {group!r} has {n_missing} missing values")
    n = len(data)
    X = np.column_stack([np.ones(n)] + [_numeric_column(data, name, "fixed") for name in fixed])
    Z = np.column_stack(
        [np.ones(n)] + [_numeric_column(data, name, "random slope") for name in random_slopes]
    )
    codes, labels = pd.factorize(data[group], sort=True)
    if len(labels) < 2:
        raise ValueError(f"group column {group!r} has fewer than 2 groups")
    if n <= X.shape[1]:
        raise ValueError(f"{n} observations for {X.shape[1]} fixed effects")
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError(f"fixed design is rank deficient (columns: Intercept, {fixed})")
    return MixedDesign(
        X=X,
        Z=Z,
        codes=codes,
        n_groups=len(labels),
        fixed_names=["Intercept", *fixed],
        random_names=["Intercept", *random_slopes],
        group_labels=np.asarray(labels),
    )


@dataclass
class CrossProducts:
    """Group-wise cross-products of a mixed model for one or many outcomes.

    ``ZZ`` is (G, q, q), ``ZW`` is (F, G, q, p + 1) and ``WW`` is (F, p + 1, p + 1),
    with ``W = [X y]``; ``F`` is the number of outcomes (features).
    """

    ZZ: np.ndarray
    ZW: np.ndarray
    WW: np.ndarray
    nobs: int
    k_fe: int


def cross_products(design: MixedDesign, Y: np.ndarray) -> CrossProducts:
    """Cross-products for outcomes ``Y`` (n, F) sharing ``design``.

    Computed group by group (in group order, rows in data order) by
    :func:`sites.federated.crossprod.group_cross_products` and stacked by
    :func:`stack_cross_products`: exactly what a site computes on its own subjects
    and the federated coordinator stacks in federated mode, so both fits see
    bit-identical cross-products and give identical results.
    """
    Y = np.asarray(Y, dtype=float)
    Y = Y[:, None] if Y.ndim == 1 else Y
    parts = []
    for g in range(design.n_groups):
        rows = np.flatnonzero(design.codes == g)
        parts.append(group_cross_products(design.X[rows], design.Z[rows], Y[rows]))
    return stack_cross_products(parts)


def stack_cross_products(parts: Sequence[GroupCrossProducts]) -> CrossProducts:
    """The model's :class:`CrossProducts` from cross-products of disjoint sets of groups.

    ``Z'Z`` and ``Z'[X y]`` are concatenated over groups (in the order given);
    ``[X y]'[X y]`` is summed. The pooled fit passes one part holding every group; the
    federated coordinator one part per site.
    """
    if not parts:
        raise ValueError("no groups to stack")
    p = parts[0].XtX.shape[0]
    F = parts[0].YtY.shape[0]
    ZZ = np.concatenate([g.ZtZ for g in parts])
    G, q = ZZ.shape[0], ZZ.shape[1]
    ZW = np.empty((F, G, q, p + 1))
    ZW[:, :, :, :p] = np.concatenate([g.ZtX for g in parts])[None]
    ZW[:, :, :, p] = np.concatenate([g.ZtY for g in parts]).transpose(1, 0, 2)
    WW = np.empty((F, p + 1, p + 1))
    XtY = parts[0].XtY
    WW[:, :p, :p] = parts[0].XtX
    WW[:, p, p] = parts[0].YtY
    for g in parts[1:]:
        XtY = XtY + g.XtY
        WW[:, :p, :p] += g.XtX
        WW[:, p, p] += g.YtY
    WW[:, :p, p] = XtY
    WW[:, p, :p] = XtY
    nobs = int(sum(int(g.n.sum()) for g in parts))
    return CrossProducts(ZZ=ZZ, ZW=ZW, WW=WW, nobs=nobs, k_fe=p)


def profiled_deviance(
    s: np.ndarray, cp: CrossProducts, reml: bool, full: bool = False
) -> np.ndarray | dict[str, np.ndarray]:
    """Profiled deviance (-2 log-likelihood, or the REML criterion) at relative SDs ``s``.

    Parameters
    ----------
    s : ndarray (F, q)
        Random-effect standard deviations relative to the residual SD, one row per
        feature (``q`` = 1 + number of random slopes).
    cp : CrossProducts
    reml : bool
    full : bool
        Also return beta, its unscaled covariance, the residual variance estimate
        and the deviance.
    """
    n, p = cp.nobs, cp.k_fe
    s = np.atleast_2d(np.asarray(s, dtype=float))
    q = s.shape[1]
    # H_g = I + Z_g L L Z_g' with L = diag(s); |H_g| = |M_g|, M_g = I + L Z_g'Z_g L.
    M = s[:, None, :, None] * cp.ZZ[None] * s[:, None, None, :] + np.eye(q)
    LZW = s[:, None, :, None] * cp.ZW
    chol = np.linalg.cholesky(M)
    logdet_h = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=(1, 2))
    half = _solve_lower(chol, LZW)
    # W' H^-1 W = W'W - (L Z'W)' M^-1 (L Z'W)
    half = half.reshape(half.shape[0], -1, half.shape[-1])
    C = cp.WW - np.matmul(half.transpose(0, 2, 1), half)
    Cxx = C[:, :p, :p]
    Cxy = C[:, :p, p]
    chol_x = np.linalg.cholesky(Cxx)
    u = _solve_lower(chol_x, Cxy[..., None])[..., 0]
    rss = C[:, p, p] - (u * u).sum(axis=1)
    rss = np.maximum(rss, np.finfo(float).tiny)
    if reml:
        dof = n - p
        logdet_x = 2.0 * np.log(np.diagonal(chol_x, axis1=-2, axis2=-1)).sum(axis=1)
        dev = dof * (1.0 + LOG_2PI + np.log(rss / dof)) + logdet_h + logdet_x
    else:
        dof = n
        dev = n * (1.0 + LOG_2PI + np.log(rss / n)) + logdet_h
    if not full:
        return dev
    cov_unscaled = np.linalg.inv(Cxx)
    beta = np.einsum("fij,fj->fi", cov_unscaled, Cxy)
    return {"deviance": dev, "beta": beta, "cov_unscaled": cov_unscaled, "scale": rss / dof}


def _solve_lower(chol: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched forward substitution for small lower-triangular systems."""
    q = chol.shape[-1]
    out = np.empty_like(rhs)
    for i in range(q):
        acc = rhs[..., i, :]
        if i:
            acc = acc - (chol[..., i, :i, None] * out[..., :i, :]).sum(axis=-2)
        out[..., i, :] = acc / chol[..., i, i][..., None]
    return out


@dataclass
class MixedModelResult:
    """Fitted mixed model. Series are indexed by ``"Intercept"`` and the fixed names.

    p values use the t distribution with ``df_resid = n - p`` degrees of freedom, the
    convention of the REST-meta-MDD analyses (Yan et al. 2019).
    """

    params: pd.Series
    bse: pd.Series
    tvalues: pd.Series
    pvalues: pd.Series
    df_resid: int
    variance_components: dict[str, float]
    scale: float
    llf: float
    converged: bool
    nobs: int
    n_groups: int
    reml: bool
    cov_params: pd.DataFrame = field(repr=False)
    theta: np.ndarray = field(repr=False)

    def summary(self) -> pd.DataFrame:
        """Fixed-effects table: estimate, SE, t, df and p."""
        return pd.DataFrame(
            {
                "estimate": self.params,
                "se": self.bse,
                "t": self.tvalues,
                "df": self.df_resid,
                "p": self.pvalues,
            }
        )


def fit_theta(cp: CrossProducts, q: int, reml: bool) -> tuple[np.ndarray, bool]:
    """Minimise the profiled deviance of one outcome; returns the relative SDs ``s``.

    L-BFGS-B works on the variance ratios ``v = s^2 >= 0``: in ``s`` the gradient
    vanishes at 0, so a bounded optimizer would stop on a spurious boundary point.
    Several starting points guard against local optima.
    """

    def objective(v: np.ndarray) -> float:
        return float(profiled_deviance(np.sqrt(v)[None], cp, reml)[0])

    best = None
    for start in (1.0, 0.1, 0.01, 10.0):
        res = optimize.minimize(
            objective,
            np.full(q, start),
            method="L-BFGS-B",
            bounds=[(0.0, None)] * q,
            options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun - 1e-10:
            best = res
    return np.sqrt(np.asarray(best.x)), bool(best.success)


def mixed_model(
    data: pd.DataFrame,
    outcome: str,
    fixed: Sequence[str],
    group: str,
    random_slopes: Sequence[str] = (),
    reml: bool = True,
) -> MixedModelResult:
    """Fit ``outcome ~ 1 + fixed + (1 | group) + (0 + slope | group) + ...``.

    Parameters
    ----------
    data : DataFrame
        One row per observation; all named columns numeric and complete.
    outcome : str
        Outcome column.
    fixed : list of str
        Fixed-effect columns; an intercept is always added.
    group : str
        Grouping column (e.g. site).
    random_slopes : list of str
        Columns with a random slope per group, uncorrelated with the random intercept
        and with each other (lme4 ``(0 + x | group)``).
    reml : bool
        REML (default) or maximum likelihood.

    Returns
    -------
    MixedModelResult
        ``variance_components`` maps ``"Intercept"`` and each slope name to its variance;
        ``llf`` is the maximised log-likelihood (REML: the restricted log-likelihood,
        i.e. minus half lme4's REML criterion).

    References
    ----------
    Bates et al. (2015), J Stat Softw 67(1).
    """
    design = build_design(data, fixed, group, random_slopes)
    y = _numeric_column(data, outcome, "outcome")
    cp = cross_products(design, y)
    q = design.Z.shape[1]
    theta, converged = fit_theta(cp, q, reml)
    return _result_from_theta(design, cp, theta, reml, converged)


def _result_from_theta(
    design: MixedDesign, cp: CrossProducts, theta: np.ndarray, reml: bool, converged: bool
) -> MixedModelResult:
    return result_from_cross_products(
        cp, design.fixed_names, design.random_names, theta, reml, converged
    )


def result_from_cross_products(
    cp: CrossProducts,
    fixed_names: Sequence[str],
    random_names: Sequence[str],
    theta: np.ndarray,
    reml: bool,
    converged: bool,
) -> MixedModelResult:
    """The fitted model of one outcome at relative SDs ``theta``, from cross-products alone.

    Used by :func:`mixed_model` and by the federated coordinator, which has only the
    sites' cross-products.
    """
    out = profiled_deviance(theta[None], cp, reml, full=True)
    names = list(fixed_names)
    scale = float(out["scale"][0])
    cov = scale * out["cov_unscaled"][0]
    params = pd.Series(out["beta"][0], index=names)
    bse = pd.Series(np.sqrt(np.diag(cov)), index=names)
    df_resid = cp.nobs - len(names)
    tvalues = params / bse
    pvalues = pd.Series(2.0 * stats.t.sf(np.abs(tvalues), df_resid), index=names)
    return MixedModelResult(
        params=params,
        bse=bse,
        tvalues=tvalues,
        pvalues=pvalues,
        df_resid=df_resid,
        variance_components={
            name: float(scale * s**2) for name, s in zip(random_names, theta, strict=True)
        },
        scale=scale,
        llf=float(-0.5 * out["deviance"][0]),
        converged=converged,
        nobs=cp.nobs,
        n_groups=int(cp.ZZ.shape[0]),
        reml=reml,
        cov_params=pd.DataFrame(cov, index=names, columns=names),
        theta=theta,
    )

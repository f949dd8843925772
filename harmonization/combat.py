"""ComBat harmonization of site effects (Johnson 2007; Fortin 2017, 2018).

The model for feature v of subject i at site j is

    x_iv = alpha_v + C_i beta_v + gamma_jv + delta_jv * eps_iv,

with covariates C (one-hot categorical, linear numeric), additive site effect
gamma and multiplicative site effect delta. ComBat estimates alpha, beta and
the pooled variance by least squares, standardizes the data, estimates
gamma/delta per site and feature, shrinks them with empirical Bayes across
features and removes them. The numbers are the same as R ``neuroCombat`` /
``sva::ComBat`` and ``neuroHarmonize`` (parametric and non-parametric priors,
no-EB, mean-only, reference site).

The engine never forms the standardized data: one pass over the features
(in cache-sized chunks, subjects sorted by site so that per-site sums are
contiguous slices) gives the least-squares coefficients and, per site, the
residual sums of squares, which are all that the empirical Bayes step needs;
a second pass over blocks of whole subject rows writes the harmonized data.
The only array of X's size that is allocated is the output.

References
----------
Johnson, W. E., Li, C., Rabinovic, A. (2007). Adjusting batch effects in
microarray expression data using empirical Bayes methods. Biostatistics 8(1),
118-127.
Fortin, J.-P. et al. (2017). Harmonization of multi-site diffusion tensor
imaging data. NeuroImage 161, 149-170.
Fortin, J.-P. et al. (2018). Harmonization of cortical thickness measurements
across scanners and sites. NeuroImage 167, 104-120.
Pomponio, R. et al. (2020). Harmonization of large MRI datasets for the
analysis of brain imaging patterns throughout the lifespan. NeuroImage 208,
116450.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ComBat", "combat", "CovariateEncoder", "EBResult", "empirical_bayes"]

_CHUNK_BYTES = 8 * 2**20  # below glibc's mmap threshold: temporaries are reused
_BLOCK_BYTES = 2 * 2**20  # one block of site-sorted data in the least-squares pass
_ADJUST_BYTES = 512 * 2**10  # one block of rows x features in the adjustment pass
_ADJUST_COLS = 8192
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# covariates and design
# ---------------------------------------------------------------------------


@dataclass
class CovariateEncoder:
    """Turns a covariate DataFrame into design columns (float64).

    Numeric columns enter linearly; strings, booleans and pandas categoricals
    are one-hot encoded without their first level (sorted values, or the
    categorical's own order).
    """

    columns: list[str] = field(default_factory=list)
    levels: dict[str, list[Any]] = field(default_factory=dict)

    def fit(self, covariates: pd.DataFrame | None) -> CovariateEncoder:
        self.columns, self.levels = [], {}
        if covariates is None:
            return self
        for col in covariates.columns:
            s = covariates[col]
            self.columns.append(str(col))
            if _is_categorical(s):
                _check_no_missing(s, col)
                cats = s.cat.categories if isinstance(s.dtype, pd.CategoricalDtype) else None
                values = list(cats) if cats is not None else sorted(pd.unique(s), key=str)
                self.levels[str(col)] = [_py(v) for v in values]
        return self

    @property
    def names(self) -> list[str]:
        """One name per design column, e.g. ``age`` or ``sex[M]``."""
        out: list[str] = []
        for col in self.columns:
            if col in self.levels:
                out += [f"{col}[{lev}]" for lev in self.levels[col][1:]]
            else:
                out.append(col)
        return out

    def transform(self, covariates: pd.DataFrame | None, n: int) -> np.ndarray:
        if not self.columns:
            return np.zeros((n, 0))
        if covariates is None:
            raise ValueError(f"covariates are required: columns {self.columns}")
        missing = [c for c in self.columns if c not in map(str, covariates.columns)]
        if missing:
            raise ValueError(f"covariates lack the column(s) {missing} used at fit")
        if len(covariates) != n:
            raise ValueError(f"covariates have {len(covariates)} rows but X has {n} subjects")
        cov = covariates.rename(columns=str)
        blocks = [self._column(cov[c], c) for c in self.columns]
        return np.hstack(blocks)

    def _column(self, s: pd.Series, col: str) -> np.ndarray:
        _check_no_missing(s, col)
        if col not in self.levels:
            if _is_categorical(s):
                raise ValueError(f"covariate column {col!r} was numeric at fit but is not now")
            return s.to_numpy(dtype=np.float64).reshape(-1, 1)
        levels = self.levels[col]
        values = [_py(v) for v in s.to_numpy()]
        unknown = sorted({str(v) for v in values} - {str(v) for v in levels})
        if unknown:
            raise ValueError(f"covariate column {col!r} has level(s) {unknown} not seen at fit")
        index = {str(v): k for k, v in enumerate(levels)}
        codes = np.array([index[str(v)] for v in values])
        return (codes[:, None] == np.arange(1, len(levels))[None, :]).astype(np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "levels": self.levels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CovariateEncoder:
        return cls(columns=list(d["columns"]), levels={k: list(v) for k, v in d["levels"].items()})


def _is_categorical(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _check_no_missing(s: pd.Series, col: Any) -> None:
    bad = np.flatnonzero(pd.isna(s).to_numpy())
    if bad.size == 0 and pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        bad = np.flatnonzero(~np.isfinite(s.to_numpy(dtype=np.float64)))
    if bad.size:
        raise ValueError(
            f"covariate column {col!r} has missing or non-finite values in rows {bad[:10]}"
        )


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _site_codes(sites: Any, n: int) -> tuple[list[Any], np.ndarray]:
    s = pd.Series(np.asarray(sites, dtype=object).ravel())
    if len(s) != n:
        raise ValueError(f"sites has {len(s)} labels but X has {n} subjects")
    bad = np.flatnonzero(pd.isna(s).to_numpy())
    if bad.size:
        raise ValueError(f"sites has missing labels in rows {bad[:10]}")
    labels = sorted(pd.unique(s), key=lambda v: (str(type(v)), v))
    index = {v: k for k, v in enumerate(labels)}
    return [_py(v) for v in labels], s.map(index).to_numpy(dtype=np.intp)


def _check_X(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be subjects x features (2-D), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    return X


def _chunks(n_rows: int, n_cols: int, chunk: int | None = None):
    step = chunk or max(1, _CHUNK_BYTES // (8 * max(n_rows, 1)))
    for start in range(0, n_cols, step):
        yield slice(start, min(start + step, n_cols))


def _check_rank(design: np.ndarray, names: list[str]) -> None:
    """Raise naming the first design column that is collinear with earlier ones."""
    if np.linalg.matrix_rank(design) == design.shape[1]:
        return
    for k in range(1, design.shape[1] + 1):
        if np.linalg.matrix_rank(design[:, :k]) < k:
            raise ValueError(
                f"covariate column {names[k - 1]!r} is collinear with site or earlier covariates "
                "(the design matrix is rank deficient)"
            )


def _check_finite_chunk(Xc: np.ndarray, cols: slice, row0: int = 0) -> None:
    if np.isfinite(Xc).all():
        return
    row, col = np.argwhere(~np.isfinite(Xc))[0]
    raise ValueError(
        f"X has a non-finite value at subject row {row0 + row}, feature index {cols.start + col}"
    )


# ---------------------------------------------------------------------------
# pass 1: least squares and per-site residual sums of squares
# ---------------------------------------------------------------------------


@dataclass
class LSStats:
    """Per-feature least-squares results needed by ComBat (no subject-level data).

    ``coef`` is (n_sites + n_covariate_columns) x V with one-hot site columns
    first; ``ssr_site`` is n_sites x V, the residual sum of squares per site;
    ``constant`` flags features with zero variance within some site.
    """

    coef: np.ndarray
    ssr_site: np.ndarray
    constant: np.ndarray


class _SiteBlocks:
    """Subjects sorted by site once, so each site is a contiguous block of rows.

    Per-site sums become ``np.add.reduceat`` over the sorted rows (one
    addition per element, where a one-hot matrix product costs 2 x n_sites
    flops per element) and per-site broadcasts are slices.
    """

    def __init__(self, site_idx: np.ndarray, n_sites: int) -> None:
        self.order = np.argsort(site_idx, kind="stable")
        self.counts = np.bincount(site_idx, minlength=n_sites)
        empty = np.flatnonzero(self.counts == 0)
        if empty.size:
            raise ValueError(f"site index {empty[0]} has no subjects")
        self.stops = np.cumsum(self.counts)
        self.starts = self.stops - self.counts

    def gather(self, X: np.ndarray, cols: slice) -> np.ndarray:
        """Columns ``cols`` of X as float64, rows sorted by site (a new array)."""
        src = X[:, cols]
        if src.dtype != np.float64:
            src = src.astype(np.float64)
        return np.take(src, self.order, axis=0)

    def sums(self, Xs: np.ndarray) -> np.ndarray:
        return np.add.reduceat(Xs, self.starts, axis=0)

    def blocks(self):
        return zip(self.starts, self.stops, strict=True)


def least_squares_stats(
    X: np.ndarray, design: np.ndarray, site_idx: np.ndarray, n_sites: int, chunk: int | None = None
) -> LSStats:
    """One pass over X (in feature chunks): coefficients and per-site residual SS.

    ``design`` is the one-hot site columns (``n_sites`` of them, in site
    order) followed by the covariate columns. The coefficients solve the
    normal equations ``(D'D) b = D'x``; ``D'x`` is the per-site sums plus
    ``C'x``, and the residuals are formed in place, so the only temporaries
    are one block of the (sorted) data and ``C b`` for it.
    """
    n, V = X.shape
    _check_site_columns(design, site_idx, n_sites)
    gram_inv = np.linalg.inv(design.T @ design)
    sb = _SiteBlocks(site_idx, n_sites)
    cov_sorted = np.ascontiguousarray(design[sb.order, n_sites:])
    several = sb.counts > 1
    coef = np.empty((design.shape[1], V))
    ssr = np.empty((n_sites, V))
    constant = np.zeros(V, dtype=bool)
    for cols in _chunks(n, V, chunk or _block_cols(n)):
        Xs = sb.gather(X, cols)
        site_sums = sb.sums(Xs)
        if not np.isfinite(site_sums).all():
            _check_finite_chunk(np.asarray(X[:, cols]), cols)
        DtX = np.vstack([site_sums, cov_sorted.T @ Xs])
        b = coef[:, cols] = gram_inv @ DtX
        constant[cols] = _constant_sorted(Xs, sb, site_sums, several)
        if cov_sorted.shape[1]:
            Xs -= cov_sorted @ b[n_sites:]
        for j, (a, z) in enumerate(sb.blocks()):
            Xs[a:z] -= b[j]
        np.square(Xs, out=Xs)
        ssr[:, cols] = sb.sums(Xs)
    return LSStats(coef=coef, ssr_site=ssr, constant=constant)


def _constant_sorted(
    Xs: np.ndarray, sb: _SiteBlocks, site_sums: np.ndarray, several: np.ndarray
) -> np.ndarray:
    """Features constant within a site of more than one subject (rows sorted by site).

    A loose screen on the within-site sum of squares, then an exact
    ``max == min`` check of the few candidates.
    """
    s2 = sb.sums(np.square(Xs))
    ss = s2 - site_sums**2 / sb.counts[:, None]
    candidate = (ss <= 1e-9 * s2 + 1e-300) & several[:, None]
    out = np.zeros(Xs.shape[1], dtype=bool)
    for j, v in zip(*np.nonzero(candidate), strict=True):
        col = Xs[sb.starts[j] : sb.stops[j], v]
        out[v] |= bool(col.max() == col.min())
    return out


def _block_cols(n_rows: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(n_rows, 1)))


def _check_site_columns(design: np.ndarray, site_idx: np.ndarray, n_sites: int) -> None:
    onehot = np.zeros((site_idx.size, n_sites))
    onehot[np.arange(site_idx.size), site_idx] = 1.0
    if not np.array_equal(design[:, :n_sites], onehot):
        raise ValueError("the first design columns must be the one-hot site indicators")


def _constant_within_site(
    Xc: np.ndarray,
    onehot: np.ndarray,
    counts: np.ndarray,
    site_idx: np.ndarray,
    s1: np.ndarray | None = None,
) -> np.ndarray:
    """Features with zero variance within any site of more than one subject (exact)."""
    s1 = onehot.T @ Xc if s1 is None else s1
    s2 = onehot.T @ np.square(Xc)
    ss = s2 - s1**2 / counts[:, None]
    # cheap screen with a loose tolerance, then an exact check of the candidates
    candidate = (ss <= 1e-9 * s2 + 1e-300) & (counts[:, None] > 1)
    out = np.zeros(Xc.shape[1], dtype=bool)
    for j, v in zip(*np.nonzero(candidate), strict=True):
        col = Xc[site_idx == j, v]
        out[v] |= bool(col.max() == col.min())
    return out


# ---------------------------------------------------------------------------
# empirical Bayes
# ---------------------------------------------------------------------------


@dataclass
class EBResult:
    """Site effects per site x feature: raw estimates, priors and EB estimates."""

    gamma_hat: np.ndarray
    delta_hat: np.ndarray
    gamma_star: np.ndarray
    delta_star: np.ndarray
    gamma_bar: np.ndarray | None = None
    t2: np.ndarray | None = None
    a_prior: np.ndarray | None = None
    b_prior: np.ndarray | None = None


def standardized_moments(
    stats: LSStats, counts: np.ndarray, ref: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grand mean, pooled variance and per-site mean / variance of the standardized data.

    Returns
    -------
    grand_mean, var_pooled : (V,)
    site_mean, site_var : (n_sites, V)
        Mean and sample variance (ddof=1) over each site's subjects of
        s = (x - grand_mean - C beta) / sqrt(var_pooled).
    """
    K = len(counts)
    site_coef = stats.coef[:K]
    if ref is None:
        grand_mean = (counts / counts.sum()) @ site_coef
        var_pooled = stats.ssr_site.sum(axis=0) / counts.sum()
    else:
        grand_mean = site_coef[ref].copy()
        var_pooled = stats.ssr_site[ref] / counts[ref]
    sd = np.sqrt(var_pooled)
    with np.errstate(divide="ignore", invalid="ignore"):
        site_mean = (site_coef - grand_mean) / sd
        site_var = stats.ssr_site / ((counts[:, None] - 1) * var_pooled)
    return grand_mean, var_pooled, site_mean, site_var


def empirical_bayes(
    site_mean: np.ndarray,
    site_var: np.ndarray,
    counts: np.ndarray,
    *,
    eb: bool = True,
    parametric: bool = True,
    mean_only: bool = False,
    ref: int | None = None,
    conv: float = 1e-4,
) -> EBResult:
    """Location/scale site effects and their empirical Bayes shrinkage.

    ``site_mean`` / ``site_var`` are the per-site mean and variance (ddof=1)
    of the standardized data (n_sites x V). The parametric iteration and the
    non-parametric integration follow Johnson et al. (2007) as implemented in
    R ``sva``/``neuroCombat`` (same stopping rule, so the same numbers); the
    residual sum of squares of a site around g is computed from the site's
    mean and variance, ``(n - 1) var + n (mean - g)^2``.
    """
    gamma_hat = site_mean.copy()
    delta_hat = np.ones_like(site_var) if mean_only else site_var.copy()
    res = EBResult(gamma_hat, delta_hat, gamma_hat.copy(), delta_hat.copy())
    if eb:
        res.gamma_bar = gamma_hat.mean(axis=1)
        res.t2 = gamma_hat.var(axis=1, ddof=1)
        if not mean_only:
            m = delta_hat.mean(axis=1)
            s2 = delta_hat.var(axis=1, ddof=1)
            # the reference site's variances are all n/(n-1): s2 = 0, its priors are unused
            with np.errstate(divide="ignore", invalid="ignore"):
                res.a_prior = (2 * s2 + m**2) / s2
                res.b_prior = (m * s2 + m**3) / s2
        for j, n in enumerate(counts):
            if j == ref:
                continue
            if parametric:
                g, d = _parametric(res, j, n, site_var[j], mean_only, conv)
            else:
                g, d = _nonparametric(gamma_hat[j], delta_hat[j], site_var[j], n)
            res.gamma_star[j], res.delta_star[j] = g, d
    if ref is not None:
        res.gamma_star[ref] = 0.0
        res.delta_star[ref] = 1.0
    return res


def _postmean(g_hat, g_bar, n, d_star, t2):
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def _parametric(res: EBResult, j: int, n: float, var: np.ndarray, mean_only: bool, conv: float):
    g_hat, d_hat = res.gamma_hat[j], res.delta_hat[j]
    g_bar, t2 = res.gamma_bar[j], res.t2[j]
    if mean_only:
        return _postmean(g_hat, g_bar, 1.0, 1.0, t2), np.ones_like(g_hat)
    a, b = res.a_prior[j], res.b_prior[j]
    g_old, d_old = g_hat.copy(), d_hat.copy()
    within = (n - 1) * var
    change = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        while change > conv:
            g_new = _postmean(g_hat, g_bar, n, d_old, t2)
            sum2 = within + n * (g_hat - g_new) ** 2
            d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
            change = max(
                np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old)
            )
            g_old, d_old = g_new, d_new
    return g_new, d_new


def _nonparametric(
    g_hat: np.ndarray, d_hat: np.ndarray, var: np.ndarray, n: float, block: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-feature-out likelihood weighting (R ``int.eprior``), in log space."""
    V = g_hat.size
    g_star, d_star = np.empty(V), np.empty(V)
    log_norm = -0.5 * n * np.log(2 * np.pi * d_hat)
    for start in range(0, V, block):
        rows = np.arange(start, min(start + block, V))
        sum2 = (n - 1) * var[rows, None] + n * (g_hat[rows, None] - g_hat[None, :]) ** 2
        log_lh = log_norm[None, :] - sum2 / (2 * d_hat[None, :])
        log_lh[np.arange(rows.size), rows] = -np.inf
        w = np.exp(log_lh - log_lh.max(axis=1, keepdims=True))
        total = w.sum(axis=1)
        g_star[rows] = w @ g_hat / total
        d_star[rows] = w @ d_hat / total
    return g_star, d_star


# ---------------------------------------------------------------------------
# pass 2: adjustment
# ---------------------------------------------------------------------------


def adjust(
    X: np.ndarray,
    cov_design: np.ndarray,
    cov_coef: np.ndarray,
    grand_mean: np.ndarray,
    var_pooled: np.ndarray,
    gamma_star: np.ndarray,
    delta_star: np.ndarray,
    site_idx: np.ndarray,
    keep_rows: np.ndarray | None = None,
    keep_cols: np.ndarray | None = None,
    out: np.ndarray | None = None,
    chunk: int | None = None,
    check: bool = True,
) -> np.ndarray:
    """Harmonized data ``(x - m - g* sd) / sqrt(d*) + m`` with ``m = grand mean + C beta``.

    ``keep_rows`` (subjects of the reference site) and ``keep_cols``
    (constant features) are copied unchanged.
    """
    n, V = X.shape
    if out is None:
        out = np.empty((n, V), dtype=np.float64)
    shift = gamma_star * np.sqrt(var_pooled)
    scale = 1.0 / np.sqrt(delta_star)
    # small blocks of rows x features: contiguous rows, temporaries stay in cache
    for cols in _chunks(n, V, chunk or min(V, _ADJUST_COLS)):
        step = max(2, _ADJUST_BYTES // (8 * (cols.stop - cols.start)))
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            Xb = X[rows, cols]
            mean = cov_design[rows] @ cov_coef[:, cols]
            mean += grand_mean[cols]
            res = np.subtract(Xb, mean, out=out[rows, cols])
            _shift_scale(res, site_idx[rows], shift[:, cols], scale[:, cols])
            res += mean
            if check and not np.isfinite(res.sum()):
                _check_finite_chunk(np.asarray(Xb), cols, row0=start)
    if keep_rows is not None and keep_rows.any():
        out[keep_rows] = X[keep_rows]
    if keep_cols is not None and keep_cols.any():
        out[:, keep_cols] = X[:, keep_cols]
    return out


def _shift_scale(res: np.ndarray, sites: np.ndarray, shift: np.ndarray, scale: np.ndarray):
    """``res = (res - shift[site]) * scale[site]`` row by row, in place."""
    if res.shape[0] > 16:  # narrow blocks: one gathered temporary beats many small calls
        res -= shift[sites]
        res *= scale[sites]
        return
    for row, j in zip(res, sites, strict=True):
        row -= shift[j]
        row *= scale[j]


# ---------------------------------------------------------------------------
# estimator
# ---------------------------------------------------------------------------


class ComBat:
    """ComBat harmonization as a scikit-learn style estimator.

    Parameters
    ----------
    eb : bool, default=True
        Shrink the site effects with empirical Bayes priors across features.
    parametric : bool, default=True
        Parametric priors (normal / inverse gamma) or the non-parametric
        leave-one-feature-out weighting (O(V^2) per site).
    mean_only : bool, default=False
        Remove only the additive site effect (multiplicative effect fixed at 1).
    ref_site : label, optional
        Reference site: its data are left unchanged, the other sites are
        mapped onto its mean and variance (pooled variance from it alone).
    new_sites : {"estimate", "error"}, default="estimate"
        What ``transform`` does with a site not seen at fit: estimate its
        effects from its own subjects (see Notes) or raise ``ValueError``.
    chunk : int, optional
        Features per block in the two passes over X (default: about 2 MiB
        of float64 per block in the least-squares pass, whole rows in the
        adjustment pass).

    Attributes
    ----------
    sites_ : list
        Site labels seen at fit (sorted).
    site_counts_ : ndarray (n_sites,)
    encoder_ : CovariateEncoder
    coef_ : ndarray (n_sites + n_covariate_columns, V)
        Least-squares coefficients, one-hot site columns first.
    grand_mean_, var_pooled_ : ndarray (V,)
    gamma_hat_, delta_hat_, gamma_star_, delta_star_ : ndarray (n_sites, V)
    constant_features_ : ndarray of bool (V,)
        Features with zero variance within some site; passed through
        unchanged and left out of the empirical Bayes priors (as R
        ``neuroCombat`` does).

    Notes
    -----
    ``transform`` with subjects from a site not seen at fit estimates that
    site's location/scale effects from its own subjects with the stored
    coefficients, pooled variance and grand mean, and shrinks them with
    priors from the new site's own features. The covariates of the new
    subjects are required. Never use the diagnosis (or any outcome of a
    later analysis) of held-out test subjects as a covariate: it would leak
    the outcome into the harmonized data.

    A site with a single subject, a non-finite value, a covariate collinear
    with site, or an unknown categorical level raise ``ValueError`` naming
    the site, subject row / feature index or column.

    References
    ----------
    Johnson et al. (2007) Biostatistics 8, 118-127; Fortin et al. (2017)
    NeuroImage 161, 149-170; Fortin et al. (2018) NeuroImage 167, 104-120;
    Pomponio et al. (2020) NeuroImage 208, 116450.
    """

    def __init__(
        self,
        eb: bool = True,
        parametric: bool = True,
        mean_only: bool = False,
        ref_site: Any = None,
        new_sites: str = "estimate",
        chunk: int | None = None,
    ) -> None:
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.ref_site = ref_site
        self.new_sites = new_sites
        self.chunk = chunk

    # -- fitting ------------------------------------------------------------

    def fit(self, X: np.ndarray, sites: Any, covariates: pd.DataFrame | None = None) -> ComBat:
        self._fit(_check_X(X), sites, covariates)
        return self

    def fit_transform(
        self, X: np.ndarray, sites: Any, covariates: pd.DataFrame | None = None
    ) -> np.ndarray:
        X = _check_X(X)
        site_idx, cov_design = self._fit(X, sites, covariates)
        return self._adjust_known(X, site_idx, cov_design)

    def _fit(self, X, sites, covariates) -> tuple[np.ndarray, np.ndarray]:
        n, V = X.shape
        labels, site_idx = _site_codes(sites, n)
        counts = np.bincount(site_idx, minlength=len(labels)).astype(np.float64)
        self._check_site_sizes(labels, counts)
        ref = self._ref_index(labels)
        encoder = self._make_encoder().fit(covariates)
        cov_design = encoder.transform(covariates, n)
        design = np.hstack([np.eye(len(labels))[site_idx], cov_design])
        _check_rank(design, [f"site {v}" for v in labels] + encoder.names)
        stats = self._mean_model_stats(X, design, site_idx, len(labels), covariates)
        self._finish_fit(labels, counts, ref, encoder, stats)
        return site_idx, cov_design

    def _make_encoder(self) -> CovariateEncoder:
        return CovariateEncoder()

    def _mean_model_stats(self, X, design, site_idx, n_sites, covariates) -> LSStats:
        return least_squares_stats(X, design, site_idx, n_sites, self.chunk)

    def _finish_fit(self, labels, counts, ref, encoder, stats: LSStats) -> None:
        if len(labels) < 2:
            raise ValueError(f"ComBat needs at least 2 sites, got only {labels}")
        grand_mean, var_pooled, site_mean, site_var = standardized_moments(stats, counts, ref)
        keep = ~stats.constant
        zero_var = np.flatnonzero(keep & (var_pooled == 0))
        if zero_var.size:
            raise ValueError(f"feature index {zero_var[0]} has zero residual variance")
        if self.eb and keep.sum() < 2:
            raise ValueError("empirical Bayes needs at least 2 non-constant features; use eb=False")
        res = empirical_bayes(
            site_mean[:, keep], site_var[:, keep], counts,
            eb=self.eb, parametric=self.parametric, mean_only=self.mean_only, ref=ref,
        )  # fmt: skip
        K, V = site_mean.shape
        self.sites_ = labels
        self.site_counts_ = counts
        self.ref_index_ = ref
        self.encoder_ = encoder
        self.coef_ = stats.coef
        self.grand_mean_ = grand_mean
        self.var_pooled_ = var_pooled
        self.constant_features_ = stats.constant
        for name in ("gamma_hat", "delta_hat", "gamma_star", "delta_star"):
            full = np.zeros((K, V)) if name.startswith("gamma") else np.ones((K, V))
            full[:, keep] = getattr(res, name)
            setattr(self, f"{name}_", full)
        self.n_features_in_ = V

    def _check_site_sizes(self, labels, counts) -> None:
        small = [lab for lab, c in zip(labels, counts, strict=True) if c < 2]
        if small and not self.mean_only:
            raise ValueError(
                f"site {small[0]!r} has a single subject: its variance cannot be estimated "
                "(use mean_only=True or drop the site)"
            )

    def _ref_index(self, labels) -> int | None:
        if self.ref_site is None:
            return None
        matches = [k for k, v in enumerate(labels) if str(v) == str(self.ref_site)]
        if not matches:
            raise ValueError(f"reference site {self.ref_site!r} is not among the sites {labels}")
        return matches[0]

    # -- applying -----------------------------------------------------------

    def transform(
        self, X: np.ndarray, sites: Any, covariates: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Harmonize X with the fitted model; new sites are estimated from their own data."""
        self._check_fitted()
        X = _check_X(X)
        n, V = X.shape
        if V != self.n_features_in_:
            raise ValueError(f"X has {V} features, the model was fitted on {self.n_features_in_}")
        labels = list(pd.Series(np.asarray(sites, dtype=object).ravel()))
        if len(labels) != n:
            raise ValueError(f"sites has {len(labels)} labels but X has {n} subjects")
        cov_design = self.encoder_.transform(covariates, n)
        known = {str(v): k for k, v in enumerate(self.sites_)}
        new = sorted({str(v) for v in labels} - set(known))
        gamma, delta = self.gamma_star_, self.delta_star_
        if new and self.new_sites != "estimate":
            raise ValueError(f"site {new[0]!r} was not seen at fit (known sites: {self.sites_})")
        if new:
            gamma, delta = self._new_site_effects(X, labels, new, cov_design)
            known.update({s: len(self.sites_) + k for k, s in enumerate(new)})
        site_idx = np.array([known[str(v)] for v in labels], dtype=np.intp)
        return self._adjust(X, site_idx, cov_design, gamma, delta)

    def _adjust_known(self, X, site_idx, cov_design) -> np.ndarray:
        # X was checked for non-finite values during fit
        return self._adjust(
            X, site_idx, cov_design, self.gamma_star_, self.delta_star_, check=False
        )

    def _adjust(self, X, site_idx, cov_design, gamma, delta, check=True) -> np.ndarray:
        keep_rows = None if self.ref_index_ is None else site_idx == self.ref_index_
        return adjust(
            X, cov_design, self.coef_[len(self.sites_):], self.grand_mean_, self.var_pooled_,
            gamma, delta, site_idx, keep_rows, self.constant_features_, chunk=self.chunk,
            check=check,
        )  # fmt: skip

    def _covariate_mean(self, cov_design: np.ndarray, cols: slice) -> np.ndarray:
        return cov_design @ self.coef_[len(self.sites_) :, cols]

    def _new_site_effects(self, X, labels, new, cov_design):
        """Location/scale of unseen sites from their own standardized data, then EB."""
        V = self.n_features_in_
        codes = pd.Series([str(v) for v in labels])
        counts = np.array([(codes == s).sum() for s in new], dtype=np.float64)
        self._check_site_sizes(new, counts)
        s_mean = np.empty((len(new), V))
        s_var = np.empty((len(new), V))
        sd = np.sqrt(self.var_pooled_)
        for k, s in enumerate(new):
            rows = np.flatnonzero(codes.to_numpy() == s)
            for cols in _chunks(rows.size, V, self.chunk):
                Xc = np.asarray(X[rows, cols], dtype=np.float64)
                _check_finite_chunk(Xc, cols)
                z = Xc - self._covariate_mean(cov_design[rows], cols)
                z -= self.grand_mean_[cols]
                z /= sd[cols]
                s_mean[k, cols] = z.mean(axis=0)
                s_var[k, cols] = z.var(axis=0, ddof=1) if rows.size > 1 else 1.0
        keep = ~self.constant_features_
        res = empirical_bayes(
            s_mean[:, keep], s_var[:, keep], counts,
            eb=self.eb, parametric=self.parametric, mean_only=self.mean_only,
        )  # fmt: skip
        g_new, d_new = np.zeros((len(new), V)), np.ones((len(new), V))
        g_new[:, keep], d_new[:, keep] = res.gamma_star, res.delta_star
        return np.vstack([self.gamma_star_, g_new]), np.vstack([self.delta_star_, d_new])

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ValueError("this ComBat instance is not fitted yet; call fit first")

    # -- persistence --------------------------------------------------------

    _ARRAYS = (
        "site_counts_", "coef_", "grand_mean_", "var_pooled_", "gamma_hat_", "delta_hat_",
        "gamma_star_", "delta_star_", "constant_features_",
    )  # fmt: skip

    def to_bytes(self) -> bytes:
        """Serialize the model as ``.npz`` bytes: arrays plus a JSON metadata entry.

        Only per-site and per-feature parameters are stored (no subject-level
        data); :meth:`from_bytes` never unpickles. ``harmonization`` does no file
        I/O: the caller writes the bytes where it keeps models.
        """
        self._check_fitted()
        meta = {
            "format": "confed.harmonization.ComBat",
            "version": _FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self._json_params(),
            "sites": self.sites_,
            "ref_index": self.ref_index_,
            "encoder": self.encoder_.to_dict(),
            "extra": self._extra_meta(),
        }
        arrays = {name: getattr(self, name) for name in self._ARRAYS + self._extra_arrays()}
        buffer = io.BytesIO()
        np.savez(buffer, __metadata__=np.array(json.dumps(meta)), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> ComBat:
        """Rebuild a model written by :meth:`to_bytes`."""
        try:
            data = np.load(io.BytesIO(payload), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"not a saved ComBat model ({exc})") from exc
        with data:
            if "__metadata__" not in data.files:
                raise ValueError("not a saved ComBat model (no metadata entry)")
            meta = json.loads(str(data["__metadata__"]))
            if meta.get("format") != "confed.harmonization.ComBat":
                raise ValueError("not a saved ComBat model (unknown format)")
            if meta.get("class") != cls.__name__:
                kind = meta.get("class")
                raise ValueError(f"the payload holds a {kind} model; load it with that class")
            arrays = {k: data[k] for k in data.files if k != "__metadata__"}
        model = cls(**meta["params"])
        model.sites_ = meta["sites"]
        model.ref_index_ = meta["ref_index"]
        model.encoder_ = type(model._make_encoder()).from_dict(meta["encoder"])
        for name, value in arrays.items():
            setattr(model, name, value)
        model.n_features_in_ = model.coef_.shape[1]
        model._load_extra(meta["extra"])
        return model

    def _json_params(self) -> dict[str, Any]:
        ref = _py(self.ref_site)
        return {
            "eb": self.eb, "parametric": self.parametric, "mean_only": self.mean_only,
            "ref_site": ref, "new_sites": self.new_sites, "chunk": self.chunk,
        }  # fmt: skip

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _extra_arrays(self) -> tuple[str, ...]:
        return ()

    def _load_extra(self, extra: dict[str, Any]) -> None:
        return None


def combat(
    X: np.ndarray, sites: Any, covariates: pd.DataFrame | None = None, **options: Any
) -> np.ndarray:
    """Harmonize X (subjects x features) across sites; see :class:`ComBat` for options."""
    return ComBat(**options).fit_transform(X, sites, covariates)

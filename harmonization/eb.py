"""ComBat's site effects and their empirical Bayes shrinkage (Johnson et al. 2007).

From the least-squares statistics (:class:`harmonization._engine.LSStats`):
the grand mean, pooled variance and per-site moments of the standardized data
(:func:`standardized_moments`), then the location/scale site effects and
their parametric or non-parametric empirical Bayes estimates
(:func:`empirical_bayes`), with the same stopping rule as R ``sva`` /
``neuroCombat`` so the numbers are the same.

References
----------
Johnson, W. E., Li, C., Rabinovic, A. (2007). Adjusting batch effects in
microarray expression data using empirical Bayes methods. Biostatistics 8(1),
118-127.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._engine import LSStats

__all__ = ["EBResult", "empirical_bayes", "standardized_moments"]


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

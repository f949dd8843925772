"""Parametric bootstrap confidence interval of the effect size d of a mixed model.

The REST-meta-MDD effect size is a rescaled t, ``d = c t`` with
``c = (n1 + n2) / (sqrt(n - p) sqrt(n1 n2))`` (Yan et al. 2019), so its estimand is
``c delta`` with ``delta = beta / se(beta)`` at the true variance components. The
large-sample interval ``d -/+ z se_HO`` (Hedges & Olkin 1985) treats ``t - delta`` as
standard normal. In a mixed model with a site random slope of Dx it is not: the
standard error of ``beta`` depends on the estimated slope variance, which 17 sites
estimate poorly, so ``t = beta_hat / se_hat`` varies more than a unit normal,
``Var(t) ~ 1 + delta^2 Var(log se_hat)``, and the interval is too short (coverage 0.83
to 0.93 in ``benchmarks/bench_d_coverage.py``).

The parametric bootstrap (Efron & Tibshirani 1993, ch. 6; the approach of lme4's
``bootMer``) draws ``B`` outcomes from the fitted model,

    y* = X beta_hat + a*_site + b*_site Dx + e*,
    a* ~ N(0, tau0^2), b* ~ N(0, tau1^2), e* ~ N(0, sigma^2),

refits the same model to each (all at once, :func:`~consortium.analysis.mass.mass_mixed_model`)
and takes the t* of Dx. The interval is the percentile interval of ``d* = c t*``,

    CI(d) = [c t*_(alpha/2), c t*_(1 - alpha/2)],   se(d) = c sd(t*).

Its spread carries the variability of the estimated variance components, the slope
variance among them, into the interval. ``benchmarks/bench_d_coverage.py`` compares it
with the large-sample interval, the site jackknife and the normal interval
``d -/+ t_{G-1} se``: the percentile interval was the one within Monte Carlo error of
95 % at slope SDs 0, 0.02 and 0.05 (0.962, 0.957, 0.943 over 1,000 simulations). At
slope SD 0.1 it covers 0.885: maximum likelihood shrinks the slope variance of 17
sites towards 0 (often to 0), so the bootstrap worlds have too little of it.

References
----------
Efron B, Tibshirani RJ (1993). An Introduction to the Bootstrap. Chapman & Hall.
Bates D, Maechler M, Bolker B, Walker S (2015). Fitting linear mixed-effects models
using lme4. J Stat Softw 67(1) (``bootMer``).
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press.
Yan C-G et al. (2019). PNAS 116:9078-9083.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.mixed import MixedDesign, build_design

__all__ = ["bootstrap_d_ci", "bootstrap_t", "d_factor", "simulate_from_fits"]

#: Bootstrap refits of the DMN model by default.
N_BOOT = 999


def d_factor(n1: int, n2: int, df: int) -> float:
    """``c`` of ``d = c t``: ``(n1 + n2) / (sqrt(df) sqrt(n1 n2))``."""
    return float((n1 + n2) / (np.sqrt(df) * np.sqrt(n1 * n2)))


def simulate_from_fits(
    design: MixedDesign,
    params: np.ndarray,
    variance_components: np.ndarray,
    scale: np.ndarray,
    n_draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Outcomes (n, F * n_draws) drawn from ``F`` fitted models, ``n_draws`` each in turn.

    ``params`` (F, p) are the fixed effects in the order of ``design.X``,
    ``variance_components`` (F, q) the variances of the columns of ``design.Z`` (random
    intercept, then slopes) and ``scale`` (F,) the residual variances.
    """
    params, vc = np.atleast_2d(params), np.atleast_2d(variance_components)
    scale = np.atleast_1d(np.asarray(scale, dtype=float))
    F, n, G = params.shape[0], design.nobs, design.n_groups
    if (
        vc.shape != (F, design.Z.shape[1])
        or scale.shape != (F,)
        or params.shape[1] != (design.X.shape[1])
    ):
        raise ValueError("params, variance_components and scale must describe the same fits")
    Y = np.repeat(design.X @ params.T, n_draws, axis=1)
    sd = np.sqrt(np.clip(vc, 0.0, None))
    for k in range(vc.shape[1]):
        effects = rng.standard_normal((G, F * n_draws)) * np.repeat(sd[:, k], n_draws)
        Y += design.Z[:, k, None] * effects[design.codes]
    Y += rng.standard_normal((n, F * n_draws)) * np.repeat(np.sqrt(scale), n_draws)
    return Y


def bootstrap_t(
    data: pd.DataFrame,
    fixed: Sequence[str],
    group: str,
    term: str,
    random_slopes: Sequence[str],
    params: np.ndarray,
    variance_components: np.ndarray,
    scale: np.ndarray,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """t of ``term`` refitted (ML) to ``n_boot`` outcomes drawn from each fitted model.

    Parameters
    ----------
    data, fixed, group, random_slopes
        The model, as in :func:`~consortium.analysis.mass.mass_mixed_model`.
    params, variance_components, scale
        ``F`` fitted models, as :func:`simulate_from_fits` takes them.
    n_boot, seed
        Draws per model, from ``numpy.random.default_rng(seed)``; the same seed gives
        the same draws.

    Returns
    -------
    ndarray (F, n_boot)
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2 (got {n_boot})")
    design = build_design(data, fixed, group, random_slopes)
    rng = np.random.default_rng(seed)
    Y = simulate_from_fits(design, params, variance_components, scale, n_boot, rng)
    fit = mass_mixed_model(Y, data, fixed, group, random_slopes=random_slopes, reml=False)
    return fit.tvalues[term].to_numpy().reshape(-1, n_boot)


def bootstrap_d_ci(
    t_boot: np.ndarray, n1: int, n2: int, df: int, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile CI of d from the bootstrap t* (F, B) of each of ``F`` outcomes.

    ``n1``, ``n2`` and ``df`` are those of the observed fit (``d = c t``, :func:`d_factor`).
    Returns ``(low, high, se)``, each (F,).
    """
    d_boot = d_factor(n1, n2, df) * np.atleast_2d(np.asarray(t_boot, dtype=float))
    alpha = 1.0 - level
    low, high = np.quantile(d_boot, [alpha / 2, 1 - alpha / 2], axis=1)
    return low, high, d_boot.std(axis=1, ddof=1)

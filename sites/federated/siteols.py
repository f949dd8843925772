"""One site's OLS summary of diagnosis: the site meta-analysis's per-site statistics.

Per site, ``outcome ~ 1 + dx + covariates`` by OLS (covariates constant or collinear at
the site dropped), the t of ``dx`` and Hedges' g with its unbiased sampling variance.
The one definition of these rules: the coordinator's
:func:`consortium.analysis.meta.site_effects` applies them to every site of a release,
and a site in federated mode applies them to its own subjects and sends the summary.

References
----------
Hedges LV (1981). Distribution theory for Glass's estimator of effect size and
related estimators. J Educ Stat 6:107-128.
Viechtbauer W (2010). Conducting meta-analyses in R with the metafor package.
J Stat Softw 36(3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special

__all__ = ["hedges_g_from_t", "hedges_j", "ols_t", "one_site_summary", "usable_covariates"]


def hedges_j(m: np.ndarray | float) -> np.ndarray:
    """Exact small-sample correction J(m) = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)).

    Computed on the log scale so that large ``m`` does not overflow (Hedges 1981).
    """
    m = np.asarray(m, dtype=float)
    return np.exp(special.gammaln(m / 2) - 0.5 * np.log(m / 2) - special.gammaln((m - 1) / 2))


def hedges_g_from_t(
    t: np.ndarray | float, n1: np.ndarray | float, n2: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Hedges' g and its unbiased sampling variance from a two-group t statistic.

    g = J t sqrt(1/n1 + 1/n2), m = n1 + n2 - 2, and
    vi = 1/n1 + 1/n2 + (1 - (m - 2) / (m J^2)) g^2 (metafor ``vtype="UB"``).
    """
    t, n1, n2 = (np.asarray(a, dtype=float) for a in (t, n1, n2))
    m = n1 + n2 - 2
    j = hedges_j(m)
    g = j * t * np.sqrt(1 / n1 + 1 / n2)
    vi = 1 / n1 + 1 / n2 + (1 - (m - 2) / (m * j**2)) * g**2
    return g, vi


def usable_covariates(
    block: pd.DataFrame, covariates: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Covariates of one site's model, and those dropped there with the reason.

    A covariate constant at the site (e.g. sex at a single-sex site) is absorbed by the
    intercept; one that is a linear combination of the intercept and the covariates
    kept before it (e.g. dummies of a factor whose reference level is absent at the
    site) adds nothing. Dropping either leaves the column space, and so the t of
    diagnosis, unchanged.
    """
    kept: list[str] = []
    dropped: list[str] = []
    base = np.ones((len(block), 1))
    for name in covariates:
        x = block[name].to_numpy(dtype=float)
        if np.ptp(x) == 0:
            dropped.append(f"{name} (constant)")
            continue
        candidate = np.column_stack([base, x])
        if np.linalg.matrix_rank(candidate) < candidate.shape[1]:
            dropped.append(f"{name} (collinear)")
            continue
        base = candidate
        kept.append(name)
    return kept, dropped


def ols_t(X: np.ndarray, y: np.ndarray, column: int) -> float:
    """OLS t statistic of one coefficient, by QR decomposition of a full-rank design.

    beta = R^-1 Q'y, se_j^2 = s^2 [(X'X)^-1]_jj = s^2 ||row j of R^-1||^2,
    s^2 = RSS / (n - p).
    """
    q, r = np.linalg.qr(X)
    beta = np.linalg.solve(r, q.T @ y)
    resid = y - X @ beta
    sigma2 = resid @ resid / (len(y) - X.shape[1])
    r_inv = np.linalg.solve(r, np.eye(r.shape[0]))
    return float(beta[column] / np.sqrt(sigma2 * (r_inv[column] @ r_inv[column])))


def one_site_summary(block: pd.DataFrame, outcome: str, dx: str, covariates: Sequence[str]) -> dict:
    """t, df, g and vi of one site with enough subjects per group (see site_effects)."""
    d = block[dx].to_numpy(dtype=float)
    y = block[outcome].to_numpy(dtype=float)
    values = block[list(covariates)].to_numpy(dtype=float)
    if not np.isfinite(values).all() or not np.isfinite(y).all() or not np.isfinite(d).all():
        raise ValueError(f"missing values in {outcome!r}, {dx!r} or covariates")
    kept, dropped = usable_covariates(block, covariates)
    row = {"covariates": ", ".join(kept), "covariates_dropped": ", ".join(dropped)}
    X = np.column_stack([np.ones(len(block)), d] + [block[c].to_numpy(float) for c in kept])
    if len(y) - X.shape[1] < 1:
        return {**row, "reason": "fewer subjects than model terms at this site"}
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return {**row, "reason": "diagnosis is collinear with the covariates at this site"}
    t = ols_t(X, y, 1)
    g, v = hedges_g_from_t(t, int(np.sum(d > 0)), int(np.sum(d <= 0)))
    return {
        **row,
        "t": t,
        "df": len(y) - X.shape[1],
        "yi": float(g),
        "vi": float(v),
        "included": True,
    }

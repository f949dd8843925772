"""Site-level random-effects meta-analysis (the REST-meta-MDD confirmation analysis).

Per site, an OLS model with the mixed model's covariates (those constant at a site
dropped there) on the unharmonized outcome gives the t of diagnosis, converted to
Hedges' g with the exact small-sample factor and metafor's unbiased
sampling variance (``vtype="UB"``); the site effects are pooled with a
random-effects model estimated by REML, DerSimonian-Laird or Paule-Mandel, with a
z test or the Knapp-Hartung t test, a Q-profile confidence interval for tau^2 and
metafor's tau^2-based I^2 and H^2.

References
----------
Hedges LV (1981). Distribution theory for Glass's estimator of effect size and
related estimators. J Educ Stat 6:107-128.
Borenstein M, Hedges LV, Higgins JPT, Rothstein HR (2009). Introduction to
Meta-Analysis. Wiley.
Viechtbauer W (2010). Conducting meta-analyses in R with the metafor package.
J Stat Softw 36(3).
Viechtbauer W (2007). Confidence intervals for the amount of heterogeneity in
meta-analysis. Stat Med 26:37-52.
Knapp G, Hartung J (2003). Improved tests for a random effects meta-regression with
a single covariate. Stat Med 22:2693-2710.
Yan C-G et al. (2019). PNAS 116:9078-9083.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from sites.federated.siteols import hedges_g_from_t, hedges_j, ols_t, one_site_summary

__all__ = [
    "RandomEffectsResult",
    "hedges_g_from_t",
    "hedges_j",
    "leave_one_out",
    "ols_t",
    "random_effects",
    "site_effects",
]

_METHODS = ("REML", "DL", "PM")
_TESTS = ("z", "knha")


@dataclass
class RandomEffectsResult:
    """Pooled random-effects estimate (metafor ``rma`` conventions)."""

    estimate: float
    se: float
    ci_low: float
    ci_high: float
    pvalue: float
    statistic: float
    df: float | None
    tau2: float
    tau2_se: float | None
    tau2_ci: tuple[float, float]
    q: float
    q_df: int
    q_pvalue: float
    i2: float
    h2: float
    k: int
    method: str
    test: str
    weights: np.ndarray

    def as_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "weights"}
        out["tau2_ci"] = list(self.tau2_ci)
        out["weights"] = self.weights.tolist()
        return out


def _check_inputs(yi: Sequence[float], vi: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    yi = np.asarray(yi, dtype=float).ravel()
    vi = np.asarray(vi, dtype=float).ravel()
    if yi.shape != vi.shape:
        raise ValueError(f"yi has {yi.size} values but vi has {vi.size}")
    if yi.size < 2:
        raise ValueError(f"a random-effects model needs at least 2 studies (got {yi.size})")
    bad = ~np.isfinite(yi) | ~np.isfinite(vi)
    if bad.any():
        raise ValueError(f"non-finite yi/vi at positions {np.flatnonzero(bad).tolist()}")
    if (vi <= 0).any():
        where = np.flatnonzero(vi <= 0).tolist()
        raise ValueError(f"sampling variances must be positive (positions {where})")
    return yi, vi


def _generalized_q(tau2: float, yi: np.ndarray, vi: np.ndarray) -> float:
    w = 1.0 / (vi + tau2)
    mu = np.sum(w * yi) / np.sum(w)
    return float(np.sum(w * (yi - mu) ** 2))


def _tau2_dl(yi: np.ndarray, vi: np.ndarray) -> float:
    w = 1.0 / vi
    q = _generalized_q(0.0, yi, vi)
    c = w.sum() - np.sum(w**2) / w.sum()
    return max(0.0, (q - (yi.size - 1)) / c)


def _tau2_pm(yi: np.ndarray, vi: np.ndarray) -> float:
    k = yi.size
    if _generalized_q(0.0, yi, vi) <= k - 1:
        return 0.0
    hi = 1.0
    while _generalized_q(hi, yi, vi) > k - 1:
        hi *= 2.0
    return optimize.brentq(lambda t: _generalized_q(t, yi, vi) - (k - 1), 0.0, hi, xtol=1e-12)


def _tau2_reml(yi: np.ndarray, vi: np.ndarray, max_iter: int = 1000) -> tuple[float, float]:
    """REML tau^2 by Fisher scoring with step halving (as metafor), and its SE."""
    tau2 = _tau2_dl(yi, vi)
    for _ in range(max_iter):
        P = _p_matrix(tau2, vi)
        Py = P @ yi
        step = (Py @ Py - np.trace(P)) / np.sum(P * P)
        new = tau2 + step
        while new < 0:
            step /= 2.0
            new = tau2 + step
            if abs(step) < 1e-14:
                new = 0.0
                break
        if abs(new - tau2) < 1e-10:
            tau2 = new
            break
        tau2 = new
    else:
        raise RuntimeError("REML estimate of tau2 did not converge")
    P = _p_matrix(tau2, vi)
    return tau2, float(np.sqrt(2.0 / np.sum(P * P)))


def _p_matrix(tau2: float, vi: np.ndarray) -> np.ndarray:
    w = 1.0 / (vi + tau2)
    return np.diag(w) - np.outer(w, w) / w.sum()


def _q_profile_ci(yi: np.ndarray, vi: np.ndarray, level: float) -> tuple[float, float]:
    """Q-profile CI for tau^2 (Viechtbauer 2007): generalized Q against chi2(k - 1)."""
    k = yi.size
    alpha = 1.0 - level
    crit_low = stats.chi2.ppf(1 - alpha / 2, k - 1)  # bounds the lower limit
    crit_high = stats.chi2.ppf(alpha / 2, k - 1)  # bounds the upper limit

    def solve(crit: float) -> float:
        if _generalized_q(0.0, yi, vi) <= crit:
            return 0.0
        hi = max(1.0, float(np.var(yi)) * 10)
        while _generalized_q(hi, yi, vi) > crit:
            hi *= 2.0
        return optimize.brentq(lambda t: _generalized_q(t, yi, vi) - crit, 0.0, hi, xtol=1e-12)

    return solve(crit_low), solve(crit_high)


def random_effects(
    yi: Sequence[float],
    vi: Sequence[float],
    method: str = "REML",
    test: str = "z",
    level: float = 0.95,
) -> RandomEffectsResult:
    """Random-effects meta-analysis of effect sizes ``yi`` with sampling variances ``vi``.

    Parameters
    ----------
    yi, vi : array-like
        Effect sizes and their sampling variances, one per study/site.
    method : {"REML", "DL", "PM"}
        Estimator of the between-study variance tau^2.
    test : {"z", "knha"}
        Normal-theory z test, or the Knapp-Hartung t test with k - 1 df.
    level : float
        Confidence level of the intervals.

    Returns
    -------
    RandomEffectsResult
        ``i2`` in percent and ``h2`` are tau^2-based as printed by metafor:
        I^2 = tau^2 / (tau^2 + s^2), H^2 = (tau^2 + s^2) / s^2 with the typical
        within-study variance s^2 = (k - 1) sum(w) / ((sum w)^2 - sum(w^2)), w = 1/vi.

    References
    ----------
    Viechtbauer W (2010). J Stat Softw 36(3).
    """
    yi, vi = _check_inputs(yi, vi)
    method = method.upper()
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS} (got {method!r})")
    if test not in _TESTS:
        raise ValueError(f"test must be one of {_TESTS} (got {test!r})")
    k = yi.size
    tau2_se = None
    if method == "REML":
        tau2, tau2_se = _tau2_reml(yi, vi)
    elif method == "DL":
        tau2 = _tau2_dl(yi, vi)
    else:
        tau2 = _tau2_pm(yi, vi)
    w = 1.0 / (vi + tau2)
    estimate = float(np.sum(w * yi) / w.sum())
    if test == "z":
        se = float(np.sqrt(1.0 / w.sum()))
        df = None
        dist = stats.norm
    else:
        se = float(np.sqrt(np.sum(w * (yi - estimate) ** 2) / ((k - 1) * w.sum())))
        df = k - 1
        dist = stats.t(df)
    statistic = estimate / se
    crit = dist.ppf(1 - (1 - level) / 2)
    pvalue = float(2 * dist.sf(abs(statistic)))
    q = _generalized_q(0.0, yi, vi)
    w0 = 1.0 / vi
    s2 = (k - 1) * w0.sum() / (w0.sum() ** 2 - np.sum(w0**2))
    return RandomEffectsResult(
        estimate=estimate,
        se=se,
        ci_low=estimate - crit * se,
        ci_high=estimate + crit * se,
        pvalue=pvalue,
        statistic=float(statistic),
        df=df,
        tau2=float(tau2),
        tau2_se=tau2_se,
        tau2_ci=_q_profile_ci(yi, vi, level),
        q=q,
        q_df=k - 1,
        q_pvalue=float(stats.chi2.sf(q, k - 1)),
        i2=float(100 * tau2 / (tau2 + s2)),
        h2=float((tau2 + s2) / s2),
        k=k,
        method=method,
        test=test,
        weights=100 * w / w.sum(),
    )


def leave_one_out(
    yi: Sequence[float],
    vi: Sequence[float],
    labels: Sequence[str] | None = None,
    method: str = "REML",
    test: str = "z",
) -> pd.DataFrame:
    """Pooled estimate with each study/site left out in turn (metafor ``leave1out``)."""
    yi, vi = _check_inputs(yi, vi)
    if yi.size < 3:
        raise ValueError("leave-one-out needs at least 3 studies")
    labels = list(labels) if labels is not None else [str(i + 1) for i in range(yi.size)]
    if len(labels) != yi.size:
        raise ValueError(f"{len(labels)} labels for {yi.size} studies")
    rows = []
    for i, label in enumerate(labels):
        keep = np.arange(yi.size) != i
        res = random_effects(yi[keep], vi[keep], method=method, test=test)
        rows.append(
            {
                "left_out": label,
                "estimate": res.estimate,
                "se": res.se,
                "ci_low": res.ci_low,
                "ci_high": res.ci_high,
                "pvalue": res.pvalue,
                "tau2": res.tau2,
                "q": res.q,
                "i2": res.i2,
            }
        )
    return pd.DataFrame(rows)


def site_effects(
    data: pd.DataFrame,
    outcome: str,
    dx: str,
    site: str,
    covariates: Sequence[str] = (),
    min_per_group: int = 10,
) -> pd.DataFrame:
    """Per-site OLS t of diagnosis and the corresponding Hedges' g.

    Each site is fitted on its own, ``outcome ~ 1 + dx + covariates`` by OLS, so its t
    is invariant to any location and scale of the outcome at that site: the outcome
    needs no harmonization across sites (and should not have one that borrows
    strength across sites, such as ComBat). The t of ``dx`` becomes Hedges' g and its
    unbiased variance by :func:`hedges_g_from_t`. This one function serves the
    coordinator's site meta-analysis and the remote ``meta_analysis``.

    Parameters
    ----------
    data : DataFrame
        Subjects with ``outcome``, ``dx`` coded 1 (case) / 0 or -1 (control), ``site``
        and numeric ``covariates``.
    min_per_group : int
        Sites with fewer cases or fewer controls than this are excluded (the published
        analysis used 10); they are listed with ``included = False`` and a reason.

    Returns
    -------
    DataFrame
        One row per site: ``site, n_case, n_control, t, df, yi, vi, included, reason,
        covariates, covariates_dropped``. Covariates constant at a site, or collinear
        with the intercept and earlier covariates there, are left out of that site's
        model and listed in ``covariates_dropped`` (``"sex (constant)"``); a site
        where diagnosis is collinear with its covariates is excluded.

    References
    ----------
    Hedges LV (1981). J Educ Stat 6:107-128.
    Borenstein M, Hedges LV, Higgins JPT, Rothstein HR (2009). Introduction to
    Meta-Analysis. Wiley, ch. 4.
    """
    for col in (outcome, dx, site, *covariates):
        if col not in data.columns:
            raise KeyError(f"column {col!r} not found in data")
    for col in (outcome, dx, *covariates):
        if not pd.api.types.is_numeric_dtype(data[col]):
            raise TypeError(f"column {col!r} must be numeric (dx coded 1 case, 0 or -1 control)")
    rows = []
    for label, block in data.groupby(site, sort=True):
        d = block[dx].to_numpy(dtype=float)
        n1, n2 = int(np.sum(d > 0)), int(np.sum(d <= 0))
        row = {"site": label, "n_case": n1, "n_control": n2, "t": np.nan, "df": np.nan,
               "yi": np.nan, "vi": np.nan, "included": False, "reason": "",
               "covariates": "", "covariates_dropped": ""}  # fmt: skip
        if min(n1, n2) < min_per_group:
            row["reason"] = f"fewer than {min_per_group} per group (cases {n1}, controls {n2})"
        else:
            try:
                row.update(one_site_summary(block, outcome, dx, covariates))
            except ValueError as exc:
                raise ValueError(f"site {label!r}: {exc}") from exc
        rows.append(row)
    return pd.DataFrame(rows)

"""The REST-meta-MDD mixed model of a network summary and its subgroup contrasts.

``y ~ 1 + Dx + Age + Sex + Edu + Motion + (1 | Site) + (0 + Dx | Site)`` fitted by
maximum likelihood, Dx coded +1 (case group) / -1 (comparison group) as in the
published scripts; t of Dx with n - p degrees of freedom, d from t, a CI of d by the
parametric bootstrap of the fitted model (:mod:`consortium.analysis.d_bootstrap`, which
carries the variability of the estimated site slope variance; the large-sample
Hedges-Olkin CI with fewer than 3 sites), and a likelihood-ratio test of the random
Dx slope.

References
----------
Yan C-G et al. (2019). Reduced default mode network functional connectivity in
patients with recurrent major depressive disorder. PNAS 116:9078-9083.
Self SG, Liang K-Y (1987). Asymptotic properties of maximum likelihood estimators and
likelihood ratio tests under nonstandard conditions. JASA 82:605-610.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from consortium.analysis.contrasts import CONTRASTS, Contrast, contrast_sample, get_contrast
from consortium.analysis.d_bootstrap import N_BOOT, bootstrap_d_ci, bootstrap_t
from consortium.analysis.effects import cohens_d_ci, d_from_t
from consortium.analysis.encodings import DEFAULT_COVARIATES, SEX_CODES
from consortium.analysis.mixed import MixedModelResult, mixed_model
from consortium.analysis.results import rename_vocabulary

#: Likelihood-ratio statistics below this are optimiser rounding (deviance units).
LRT_ROUNDING = 1e-6

__all__ = ["CONTRASTS", "Contrast", "DmnResult", "contrast_sample", "dmn_model"]


def _encode(data: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    out = data.copy()
    for name in covariates:
        if name not in out.columns:
            raise KeyError(f"covariate column {name!r} not found in the data")
        col = out[name]
        if pd.api.types.is_numeric_dtype(col):
            continue
        values = set(col.dropna().astype(str))
        if values <= set(SEX_CODES):
            out[name] = col.map(SEX_CODES).astype(float)
        else:
            raise TypeError(
                f"covariate {name!r} is not numeric (values such as {sorted(values)[:3]})"
            )
    return out


@dataclass
class DmnResult:
    """Mixed-model test of diagnosis on one outcome, for one contrast.

    ``as_dict`` uses the vocabulary of :mod:`consortium.analysis.results`.
    """

    outcome: str
    contrast: str
    n_case: int
    n_control: int
    n_sites: int
    t: float
    df: int
    pvalue: float
    d: float
    d_ci: tuple[float, float]
    d_se: float
    slope_lrt: float
    slope_lrt_pvalue: float
    slope_lrt_pvalue_chi2: float
    fit: MixedModelResult = field(repr=False)
    fit_no_slope: MixedModelResult = field(repr=False)
    n_excluded: dict[str, int] = field(default_factory=dict)
    sample_by_site: pd.DataFrame = field(default=None, repr=False)
    d_ci_method: str = "parametric bootstrap"

    def as_dict(self) -> dict[str, object]:
        out = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("fit", "fit_no_slope", "sample_by_site")
        }
        out["p"] = out.pop("pvalue")
        out["d_ci"] = list(self.d_ci)
        table = self.fit.summary().reset_index(names="term")
        out["coefficients"] = rename_vocabulary(table.to_dict("records"))
        out["variance_components"] = dict(self.fit.variance_components)
        out["residual_variance"] = self.fit.scale
        out["llf"] = self.fit.llf
        return out


def dmn_model(
    data: pd.DataFrame,
    outcome: str,
    case: str,
    control: str,
    covariates: Sequence[str] = DEFAULT_COVARIATES,
    site: str = "site",
    contrast: str | Contrast = "all",
    random_slope: bool = True,
    level: float = 0.95,
    n_boot: int = N_BOOT,
) -> DmnResult:
    """Fit the REST-meta-MDD model of ``outcome`` for one contrast.

    Parameters
    ----------
    data : DataFrame
        Subjects with canonical phenotype columns (``dx``, ``age``, ``sex``,
        ``education_years``, ``mean_fd``; ``episode`` and ``medication`` for subgroup
        contrasts), ``site`` and ``outcome``.
    case, control : str
        The release's diagnosis labels (e.g. ``"MDD"``, ``"HC"``).
    covariates : list of str
        Nuisance covariates; ``sex`` given as ``M``/``F`` is coded 1/2.
    contrast : str or Contrast
        ``"all"``, ``"recurrent"``, ``"fedn"`` or ``"fedn_vs_recurrent"`` (see
        :data:`CONTRASTS`).
    random_slope : bool
        Include the site random slope of Dx (the published model); the LRT compares
        the model with and without it either way.
    n_boot : int
        Bootstrap draws of the CI of d; 0 gives the large-sample CI (for fits whose
        interval is not reported, such as the covariate sensitivity rows).

    Returns
    -------
    DmnResult
        ``t``, ``df = n - p``, ``pvalue``, ``d = t (n1 + n2) / (sqrt(df) sqrt(n1 n2))``
        with its CI (``d_ci``, ``d_se``: the parametric bootstrap of
        :func:`~consortium.analysis.d_bootstrap.bootstrap_d_ci`, 999 draws with seed 0,
        or the large-sample CI with fewer than 3 sites, as ``d_ci_method`` says), and
        the slope LRT:
        statistic 2 (l1 - l0) with the p value of the 50:50 mixture of chi2(0) and
        chi2(1) (Self & Liang 1987) in
        ``slope_lrt_pvalue`` and the naive chi2(1) p value in ``slope_lrt_pvalue_chi2``.
        Subjects with a missing outcome or covariate are left out and counted in
        ``n_excluded`` (by column).
    """
    spec = get_contrast(contrast)
    sample = contrast_sample(data, spec, case, control)
    needed = [outcome, *covariates, site]
    for col in needed:
        if col not in sample.columns:
            raise KeyError(f"column {col!r} not found in the data")
    missing = sample[needed].isna()
    n_excluded = {col: int(n) for col, n in missing.sum().items() if n}
    sample = _encode(sample[~missing.any(axis=1)], covariates)
    n_case = int((sample.Dx > 0).sum())
    n_control = int((sample.Dx < 0).sum())
    if n_case < 2 or n_control < 2:
        raise ValueError(
            f"contrast {spec.name!r}: {n_case} subjects in the case group and {n_control} in "
            "the comparison group; both need at least 2"
        )
    fixed = ["Dx", *covariates]
    with_slope = mixed_model(sample, outcome, fixed, site, random_slopes=["Dx"], reml=False)
    without = mixed_model(sample, outcome, fixed, site, reml=False)
    fit = with_slope if random_slope else without
    t = float(fit.tvalues["Dx"])
    d, _, _ = d_from_t(t, n_case, n_control, fit.df_resid)
    d = float(d)
    low, high, se, ci_method = _d_interval(
        sample, fixed, site, fit, d, random_slope, level, n_boot
    )
    lrt = 2.0 * (with_slope.llf - without.llf)
    # a zero slope variance gives the same maximum up to the optimiser's stop; below
    # this the statistic is rounding, and the mixture p must not flip between 1 and 0.5
    lrt = 0.0 if lrt < LRT_ROUNDING else lrt
    by_site = sample.groupby(site).Dx.agg(
        n_case=lambda x: int((x > 0).sum()), n_control=lambda x: int((x < 0).sum())
    )
    return DmnResult(
        outcome=outcome,
        contrast=spec.name,
        n_case=n_case,
        n_control=n_control,
        n_sites=fit.n_groups,
        t=t,
        df=fit.df_resid,
        pvalue=float(fit.pvalues["Dx"]),
        d=d,
        d_ci=(float(low), float(high)),
        d_se=float(se),
        slope_lrt=lrt,
        slope_lrt_pvalue=float(0.5 * stats.chi2.sf(lrt, 1)) if lrt > 0 else 1.0,
        slope_lrt_pvalue_chi2=float(stats.chi2.sf(lrt, 1)),
        fit=fit,
        fit_no_slope=without,
        n_excluded=n_excluded,
        sample_by_site=by_site,
        d_ci_method=ci_method,
    )


def _d_interval(
    sample: pd.DataFrame,
    fixed: Sequence[str],
    site: str,
    fit: MixedModelResult,
    d: float,
    random_slope: bool,
    level: float,
    n_boot: int,
) -> tuple[float, float, float, str]:
    """CI of d: parametric bootstrap of the fitted model (3+ sites), else large-sample."""
    n_case, n_control = int((sample.Dx > 0).sum()), int((sample.Dx < 0).sum())
    if fit.n_groups < 3 or n_boot == 0:
        low, high, se = cohens_d_ci(d, n_case, n_control, level)
        why = "fewer than 3 sites" if fit.n_groups < 3 else "no bootstrap asked"
        return float(low), float(high), float(se), f"large-sample ({why})"
    slopes = ["Dx"] if random_slope else []
    vc = [fit.variance_components[name] for name in ["Intercept", *slopes]]
    t_boot = bootstrap_t(
        sample, fixed, site, "Dx", slopes, fit.params.to_numpy(), np.array(vc),
        np.array([fit.scale]), n_boot, seed=0,
    )  # fmt: skip
    low, high, se = bootstrap_d_ci(t_boot, n_case, n_control, fit.df_resid, level)
    return float(low[0]), float(high[0]), float(se[0]), "parametric bootstrap"

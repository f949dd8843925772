"""Model fits shared by the kinds, returned as typed results or tables.

``fit_dmn``: the REST-meta-MDD mixed model of one outcome
(:func:`consortium.analysis.dmn.dmn_model`) as a
:class:`~consortium.analysis.results.MixedModelFit`. ``mass_fit``: the
mass-univariate model's diagnosis effect, one row per feature (numpy or dask
input, fitted over feature chunks), from :func:`mass_model` (the fitted
:class:`~consortium.analysis.mass.MassMixedResult`, whose variance components the
permutation engine reuses). ``fdr``: Benjamini-Hochberg q values; permutation
inference is :mod:`consortium.analysis.inference`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.design import Design
from consortium.analysis.dmn import dmn_model
from consortium.analysis.effects import d_from_t
from consortium.analysis.errors import AnalysisError
from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.multiple import fdr_bh
from consortium.analysis.results import Coefficient, MixedModelFit, SlopeLRT
from consortium.dataset import Dataset

__all__ = ["MODEL_GROUP", "MODEL_TERM", "fdr", "fit_dmn", "mass_fit", "mass_model", "mass_table"]

MODEL_GROUP = "site"  # the random-effect grouping (and permutation blocks) of mass models
MODEL_TERM = "dx"  # the tested fixed effect

Advance = Callable[..., None]


def _term(name: str) -> str:
    return "dx" if name == "Dx" else name


def fit_dmn(
    dataset: Dataset, y: np.ndarray, design: Design, contrast: str, interval: bool = True
) -> MixedModelFit:
    """REST-meta-MDD mixed model on one outcome, checked against the design's counts.

    ``interval=False`` skips the bootstrap CI of d (the large-sample CI is recorded),
    for fits whose interval is not reported.
    """
    data = dataset.subjects.iloc[design.rows].reset_index(drop=True)
    data = data.assign(y=np.asarray(y, dtype=float))
    result = dmn_model(
        data,
        "y",
        dataset.dx_labels["case"],
        dataset.dx_labels["control"],
        covariates=design.covariates,
        site="site",
        contrast=contrast,
        **({} if interval else {"n_boot": 0}),
    )
    if (result.n_case, result.n_control) != (design.n_case, design.n_control):
        raise AnalysisError(
            f"the DMN model used {result.n_case}/{result.n_control} subjects, the design "
            f"{design.n_case}/{design.n_control}"
        )
    fit = result.fit
    coefficients = [
        Coefficient(_term(term), float(estimate), float(se), float(t), float(p))
        for term, estimate, se, t, p in zip(
            fit.params.index,
            fit.params.to_numpy(float),
            fit.bse.to_numpy(float),
            fit.tvalues.to_numpy(float),
            fit.pvalues.to_numpy(float),
            strict=True,
        )
    ]
    return MixedModelFit(
        n=result.n_case + result.n_control,
        n_case=result.n_case,
        n_control=result.n_control,
        n_sites=int(result.n_sites),
        df=float(result.df),
        t=float(result.t),
        p=float(result.pvalue),
        d=float(result.d),
        d_ci=[float(v) for v in result.d_ci],
        d_se=float(result.d_se),
        variance_components={_term(k): float(v) for k, v in fit.variance_components.items()},
        residual_variance=float(fit.scale),
        llf=float(fit.llf),
        slope_lrt=SlopeLRT(
            statistic=float(result.slope_lrt),
            p_mixture=float(result.slope_lrt_pvalue),
            p_chi2_1=float(result.slope_lrt_pvalue_chi2),
            llf_without_slope=float(result.fit_no_slope.llf),
        ),
        coefficients=coefficients,
    )


def mass_model(
    Y: Any,
    design: Design,
    random_slope: bool,
    progress: Advance | None = None,
    chunk_size: int = 2048,
) -> Any:
    """The fitted mass-univariate model (ML) of ``Y`` on the design, one fit per feature.

    ``Y`` is a numpy array or a dask array (fitted over its feature chunks of
    ``chunk_size``, never gathered).
    """
    lazy = hasattr(Y, "map_blocks")
    return mass_mixed_model(
        Y if lazy else np.asarray(Y, dtype=np.float64),
        design.data,
        design.fixed,
        MODEL_GROUP,
        random_slopes=(MODEL_TERM,) if random_slope else (),
        reml=False,
        chunk_size=chunk_size,
        progress=progress,
    )


def mass_fit(
    Y: Any,
    design: Design,
    random_slope: bool,
    progress: Advance | None = None,
    chunk_size: int = 2048,
) -> pd.DataFrame:
    """estimate, se, t, p and d (with CI) of Dx of :func:`mass_model`, per feature."""
    result = mass_model(Y, design, random_slope, progress, chunk_size)
    return mass_table(result, design.n_case, design.n_control)


def mass_table(result: Any, n_case: int, n_control: int) -> pd.DataFrame:
    """The Dx row of a :class:`~consortium.analysis.mass.MassMixedResult` per feature.

    estimate, se, t, p and d with its CI (df = n - p); shared by :func:`mass_fit` and
    the federated coordinator, which fits from the sites' cross-products.
    """
    t = result.tvalues["dx"].to_numpy(float)
    df = float(result.df_resid)
    d, ci_low, ci_high = d_from_t(t, n_case, n_control, df)
    return pd.DataFrame(
        {
            "estimate": result.params["dx"].to_numpy(float),
            "se": result.bse["dx"].to_numpy(float),
            "t": t,
            "p": result.pvalues["dx"].to_numpy(float),
            "d": np.asarray(d, float),
            "d_ci_low": np.asarray(ci_low, float),
            "d_ci_high": np.asarray(ci_high, float),
        }
    )


def fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q values."""
    return np.asarray(fdr_bh(np.asarray(p, float)), float)

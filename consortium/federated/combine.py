"""Coordinator side of federated mode: the pooled results from the sites' messages.

Every function takes validated ``ok`` messages (:mod:`sites.federated.messages`) and
computes what the pooled analysis would, reusing its code:

- the mixed model (:func:`combine_mixed`) stacks the sites' cross-products with
  :func:`consortium.analysis.mixed.stack_cross_products` and runs the same profiled
  likelihood optimiser as :func:`~consortium.analysis.mixed.mixed_model`;
- the per-feature model (:func:`combine_mass`) does the same with the optimiser of
  :func:`~consortium.analysis.mass.mass_mixed_model`;
- the site meta-analysis (:func:`combine_meta`) pools the sites' own OLS summaries
  with :func:`~consortium.analysis.meta.random_effects`;
- distributed ComBat pools with :mod:`harmonization.distributed`;
- consortium-wide DPABI mean regression pools the sites' sums
  (:func:`combine_standardize`).

Groups (sites) are ordered by site label, as the pooled fit orders them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.mass import MassMixedResult, mass_from_cross_products
from consortium.analysis.meta import RandomEffectsResult, random_effects
from consortium.analysis.mixed import (
    CrossProducts,
    MixedModelResult,
    fit_theta,
    result_from_cross_products,
    stack_cross_products,
)
from sites.federated.crossprod import GroupCrossProducts
from sites.federated.messages import arrays_of

__all__ = [
    "combine_combat_coefficients",
    "combine_combat_variance",
    "combine_mass",
    "combine_meta",
    "combine_mixed",
    "combine_standardize",
    "cross_products_of",
]


def _ok(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    ok = sorted((m for m in messages if m["status"] == "ok"), key=lambda m: m["site"])
    if not ok:
        raise ValueError("no site sent statistics; nothing to combine")
    return ok


def cross_products_of(messages: Sequence[Mapping[str, Any]]) -> CrossProducts:
    """The model's cross-products from the sites' ``mixed_stats``/``mass_stats`` messages."""
    parts = []
    for m in _ok(messages):
        a = arrays_of(m)
        parts.append(
            GroupCrossProducts(
                n=np.array([m["n"]]), ZtZ=a["ZtZ"][None], ZtX=a["ZtX"][None],
                ZtY=a["ZtY"][None], XtX=a["XtX"], XtY=a["XtY"], YtY=a["YtY"],
            )  # fmt: skip
        )
    return stack_cross_products(parts)


def _names(design: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    fixed = ["Intercept", *design.get("fixed", [])]
    random = ["Intercept", *design.get("random_slopes", [])]
    return fixed, random


def combine_mixed(
    messages: Sequence[Mapping[str, Any]], design: Mapping[str, Any], reml: bool, feature: int = 0
) -> MixedModelResult:
    """The mixed model of outcome ``feature`` from the sites' cross-products.

    Variance components are optimised here, at the coordinator; the result equals
    :func:`consortium.analysis.mixed.mixed_model` on the pooled subjects.
    """
    cp = cross_products_of(messages)
    one = CrossProducts(
        ZZ=cp.ZZ, ZW=cp.ZW[feature : feature + 1], WW=cp.WW[feature : feature + 1],
        nobs=cp.nobs, k_fe=cp.k_fe,
    )  # fmt: skip
    fixed, random = _names(design)
    theta, converged = fit_theta(one, len(random), reml)
    return result_from_cross_products(one, fixed, random, theta, reml, converged)


def combine_mass(
    messages: Sequence[Mapping[str, Any]],
    design: Mapping[str, Any],
    reml: bool,
    feature_names: Sequence[str] | None = None,
) -> MassMixedResult:
    """Per-feature mixed models from the sites' cross-products (edges, voxels)."""
    fixed, random = _names(design)
    return mass_from_cross_products(
        cross_products_of(messages), fixed, random, reml, feature_names=feature_names
    )


def combine_meta(
    messages: Sequence[Mapping[str, Any]], method: str = "REML", test: str = "z"
) -> tuple[pd.DataFrame, RandomEffectsResult]:
    """Site table (as :func:`~consortium.analysis.meta.site_effects`) and the pooled effect.

    Refusing sites are listed with ``included = False`` and their reason.
    """
    rows = []
    for m in sorted(messages, key=lambda m: m["site"]):
        s = m.get("scalars") or {}
        rows.append({
            "site": m["site"],
            "n_case": int(s.get("n_case", m.get("groups", {}).get("case", 0))),
            "n_control": int(s.get("n_control", m.get("groups", {}).get("control", 0))),
            "t": s.get("t", np.nan), "df": s.get("df", np.nan),
            "yi": s.get("yi", np.nan), "vi": s.get("vi", np.nan),
            "included": m["status"] == "ok", "reason": m.get("reason", ""),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    used = table[table.included]
    return table, random_effects(used.yi, used.vi, method=method, test=test)


def combine_combat_coefficients(spec: Any, messages: Sequence[Mapping[str, Any]]) -> Any:
    """Distributed ComBat round 1 -> pooled least-squares coefficients."""
    from harmonization.distributed import SiteStats, pool_coefficients

    stats = [
        SiteStats(m["site"], m["n"], arrays_of(m)["xtx"], arrays_of(m)["xty"])
        for m in _ok(messages)
    ]
    return pool_coefficients(spec, stats)


def combine_combat_variance(
    spec: Any, counts: Mapping[str, int], coef: Any, messages: Sequence[Mapping[str, Any]]
) -> Any:
    """Distributed ComBat round 2 -> grand mean and pooled variance (``PooledModel``)."""
    from harmonization.distributed import SiteResiduals, pool_variance

    residuals = [SiteResiduals(m["site"], arrays_of(m)["ssr"]) for m in _ok(messages)]
    return pool_variance(spec, dict(counts), coef, residuals)


def combine_standardize(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Consortium-wide quantities of DPABI mean regression from the sites' sums.

    With N subjects, subject means m_i and maps x_i: mu = sum x_i / N; the z-scored
    subject mean c_i = (m_i - mean(m)) / sd(m) (SD with N - 1); since sum c_i = 0 and
    sum c_i^2 = N - 1, the no-intercept coefficient of c in x - mu is
    beta = (sum m_i x_i - mean(m) sum x_i) / (sd(m) (N - 1)).
    """
    ok = _ok(messages)
    N = sum(m["n"] for m in ok)
    if N < 3:
        raise ValueError(f"{N} subjects in all; mean regression needs at least 3")
    arrays = [arrays_of(m) for m in ok]
    sum_maps = np.sum([a["sum_maps"] for a in arrays], axis=0)
    sum_mean_maps = np.sum([a["sum_mean_maps"] for a in arrays], axis=0)
    sum_m = sum(m["scalars"]["sum_means"] for m in ok)
    sum_m2 = sum(m["scalars"]["sum_means_sq"] for m in ok)
    mean_m = sum_m / N
    var_m = (sum_m2 - N * mean_m**2) / (N - 1)
    if not var_m > 0:
        raise ValueError("all subjects have the same map mean; it cannot be regressed out")
    sd_m = float(np.sqrt(var_m))
    beta = (sum_mean_maps - mean_m * sum_maps) / (sd_m * (N - 1))
    return {
        "n": N, "mu": sum_maps / N, "mean_of_means": mean_m, "sd_of_means": sd_m, "beta": beta,
    }  # fmt: skip

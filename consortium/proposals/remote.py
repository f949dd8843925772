"""Remote analyses on a grant's data, returning aggregates only.

Analyses: ``mixed_model`` (outcome ~ case + covariates + (1 | site), the REST-meta-MDD
DMN mega-analysis, via :func:`consortium.analysis.mixed_model`) and ``meta_analysis``
(per-site OLS t of case vs control with the requested covariates, as Hedges' g, pooled
by :func:`consortium.analysis.random_effects`). The analysed subset is chosen with
filters that select whole cells of the grant's strata (:mod:`.strata`);
:mod:`consortium.proposals.disclosure` decides whether the result may leave.
The outcome may first be harmonized across the analysed sites by any registered
harmonizer (``harmonize``, default ``none``; :mod:`.harmonize`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from consortium.analysis.meta import random_effects, site_effects
from consortium.analysis.mixed import mixed_model
from consortium.analysis.results import (
    Coefficient,
    RemoteMetaAnalysis,
    RemoteMixedModel,
    pooled_effect,
    result_to_dict,
)
from consortium.errors import ConfedError
from consortium.proposals import strata as strata_mod
from consortium.proposals.disclosure import DisclosureRefused, check_cells
from consortium.proposals.harmonize import harmonize_outcome
from consortium.proposals.scope import ScopedData
from sites.federated.query import filter_mask

ANALYSES = ("mixed_model", "meta_analysis")


def _check_request(req: dict, columns: list[str], data: ScopedData) -> None:
    if req["analysis"] not in ANALYSES:
        raise ConfedError("bad_analysis", f"analysis must be one of {ANALYSES}", 422)
    if req["measure"] not in data.tables:
        raise ConfedError(
            "forbidden",
            f"measure {req['measure']!r} is not a network measure of this grant "
            f"(granted: {', '.join(sorted(data.tables)) or 'none'})",
            403,
        )
    if req["outcome"] not in data.tables[req["measure"]].columns:
        raise ConfedError(
            "unknown_outcome",
            f"outcome {req['outcome']!r} is not a column of {req['measure']}",
            422,
        )
    if "dx" not in columns:
        raise ConfedError("forbidden", "the grant does not include the dx column", 403)
    used = [*req["covariates"], *(f["column"] for f in req["filters"])]
    outside = [c for c in used if c not in columns and c != "site"]
    if outside:
        raise ConfedError(
            "forbidden", f"columns outside the grant: {', '.join(sorted(set(outside)))}", 403
        )


def _check_filters(frame: pd.DataFrame, filters: list[dict]) -> None:
    """422 naming the filter whose value does not fit its column's type."""
    for f in filters:
        col, op, value = f["column"], f["op"], f["value"]
        what = f"filter {col} {op} {value!r}"
        if col not in frame.columns:
            raise ConfedError("bad_filter", f"{what}: no column {col!r} in the data", 422)
        values = value if isinstance(value, list) else [value]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if pd.api.types.is_numeric_dtype(frame[col]):
            if not numbers:
                raise ConfedError("bad_filter", f"{what}: {col} is numeric, give numbers", 422)
        elif op in ("ge", "le") or numbers:
            raise ConfedError(
                "bad_filter", f"{what}: {col} is categorical, compare it with eq, ne or in", 422
            )


def _apply_filters(frame: pd.DataFrame, filters: list[dict]) -> pd.DataFrame:
    _check_filters(frame, filters)
    for f in filters:
        try:
            keep = filter_mask(frame[f["column"]], f["op"], f["value"])
        except ValueError as exc:
            raise ConfedError("bad_filter", str(exc), 422) from exc
        frame = frame[keep]
    return frame


def analysed_subset(
    req: dict, data: ScopedData, dx_labels: dict, columns: list[str], strata: dict, minimum: int
) -> tuple[pd.DataFrame, list[str], dict]:
    """The rows the query uses, its categorical columns and the strata report.

    Rows: the whole cells of the grant's strata that the filters select, each with at
    least ``minimum`` complete cases (outcome and covariates present); smaller cells
    are left out and named (by label only) in the report.
    """
    _check_request(req, columns, data)
    frame = data.subjects.copy()
    # float64: bundles store float32, and sums of squares in float32 lose ~1e-6 relative
    frame["_y"] = data.tables[req["measure"]][req["outcome"]].to_numpy(dtype=np.float64)
    frame["_row"] = np.arange(len(frame))
    _check_filters(frame, req["filters"])
    plan = strata_mod.plan_cells(frame, strata, [dx_labels["case"], dx_labels["control"]], minimum)
    selected = strata_mod.select(frame, req["filters"], strata)
    keep, suppressed, partial = strata_mod.whole_cells(selected, plan)
    frame = frame.assign(_cell=plan.cell)[keep]
    frame = frame.dropna(subset=["_y", "dx", *req["covariates"]])
    sizes = frame["_cell"].value_counts()
    thin = sorted(sizes.index[sizes < minimum])
    frame = frame[~frame["_cell"].isin(thin)]
    report = {
        "definition": strata,
        "cells": {str(k): int(v) for k, v in frame["_cell"].value_counts().sort_index().items()},
        "merged": sorted(set(frame["_cell"]) & plan.merged),
        "suppressed": sorted([*suppressed, *thin]),
        "partly_selected": partial,
        "outside_strata": plan.outside,
    }
    categorical = ["site", "dx"] + [
        c for c in req["covariates"] if not pd.api.types.is_numeric_dtype(frame[c])
    ]
    return frame, categorical, report


def _design(frame: pd.DataFrame, covariates: list[str], case: str) -> tuple[pd.DataFrame, list]:
    model = pd.DataFrame({"y": frame["_y"].to_numpy(), "site": frame["site"].to_numpy()})
    model["case"] = (frame["dx"] == case).to_numpy(dtype=float)
    fixed = ["case"]
    for c in covariates:
        if pd.api.types.is_numeric_dtype(frame[c]):
            model[c] = frame[c].to_numpy(dtype=float)
            fixed.append(c)
        else:
            levels = sorted(frame[c].astype(str).unique())
            for level in levels[1:]:
                name = f"{c}[{level}]"
                model[name] = (frame[c].astype(str) == level).to_numpy(dtype=float)
                fixed.append(name)
    return model, fixed


def _mixed(frame, req, dx_labels) -> dict[str, Any]:
    model, fixed = _design(frame, req["covariates"], dx_labels["case"])
    if model["site"].nunique() < 2:
        raise ConfedError("too_few_sites", "a mixed model across sites needs two sites", 422)
    return mixed_fields(mixed_model(model, "y", fixed, "site"), req["outcome"], fixed)


def mixed_fields(res: Any, outcome: str, fixed: list[str]) -> dict[str, Any]:
    """The result fields of a fitted mixed model (pooled or federated)."""
    table = res.summary()
    return {
        "coefficients": [
            Coefficient(
                str(term), float(row["estimate"]), float(row["se"]), float(row["t"]),
                float(row["p"]), df=float(row["df"]),
            )  # fmt: skip
            for term, row in table.iterrows()
        ],
        "variance_components": {k: float(v) for k, v in res.variance_components.items()},
        "residual_variance": float(res.scale),
        "converged": bool(res.converged),
        "formula": f"{outcome} ~ 1 + {' + '.join(fixed)} + (1 | site)",
    }


def _meta(frame, req, dx_labels) -> dict[str, Any]:
    """Per-site OLS ``y ~ 1 + case + covariates`` -> t of case -> Hedges' g -> pooled (REML).

    One implementation with the coordinator's site meta-analysis
    (:func:`consortium.analysis.meta.site_effects`): covariates constant (or collinear)
    at a site are left out of that site's model and listed per site.

    References
    ----------
    Hedges LV (1981). J Educ Stat 6:107-128.
    Borenstein M et al. (2009). Introduction to Meta-Analysis. Wiley.
    """
    model, fixed = _design(frame, req["covariates"], dx_labels["case"])
    table = site_effects(model, "y", "case", "site", fixed[1:], min_per_group=2)
    return meta_fields(table, req["outcome"], fixed)


def meta_fields(table: pd.DataFrame, outcome: str, fixed: list[str]) -> dict[str, Any]:
    """The result fields of a site table (as ``site_effects``; pooled or federated)."""
    used = table[table["included"].astype(bool)]
    if len(used) < 2:
        raise ConfedError("too_few_sites", "a meta-analysis needs two sites", 422)
    res = random_effects(used["yi"].to_numpy(), used["vi"].to_numpy())
    pooled = pooled_effect(res)
    dropped = used.get("covariates_dropped", pd.Series("", index=used.index)).fillna("")
    per_site = {
        str(row.site): {
            "g": float(row.yi),
            "vi": float(row.vi),
            "covariates_dropped": d.split(", ") if d else [],
        }
        for row, d in zip(used.itertuples(index=False), dropped, strict=True)
    }
    excluded = {str(r.site): r.reason for r in table[~table["included"].astype(bool)].itertuples()}
    return {
        "pooled": pooled,
        "sites": per_site,
        "sites_excluded": excluded,
        "model": f"{outcome} ~ 1 + {' + '.join(fixed)}, OLS per site",
    }


def checked_subset(
    req: dict, data: ScopedData, dx_labels: dict, columns: list[str], minimum: int, strata: dict
) -> tuple[pd.DataFrame, list[str], dict, dict]:
    """The analysed rows, categorical columns, strata report and cell counts, once the
    per-result disclosure rules (strata, ``min_cell_size``) allow them."""
    frame, categorical, report = analysed_subset(req, data, dx_labels, columns, strata, minimum)
    if frame.empty:
        raise DisclosureRefused(
            "min_cell_size",
            "no whole strata cell with at least the minimum cell size "
            f"{minimum} is selected (suppressed: {', '.join(report['suppressed']) or 'none'})",
        )
    cells = check_cells(frame, categorical, minimum)
    if req["analysis"] == "meta_analysis":
        check_cells(frame.assign(_cell=frame["site"] + "/" + frame["dx"]), ["_cell"], minimum)
    return frame, categorical, report, cells


def run_query(
    req: dict,
    data: ScopedData,
    dx_labels: dict,
    columns: list[str],
    minimum: int,
    strata: dict,
) -> tuple[dict, pd.DataFrame]:
    """Check the per-result disclosure rules, then run.

    Returns the aggregate result and the analysed rows (``subject``, ``site``, ``dx``,
    ``_row``: position in ``data``), for the caller's history check
    (:func:`consortium.proposals.history.check_and_hold`) before release.
    """
    frame, _, report, cells = checked_subset(req, data, dx_labels, columns, minimum, strata)
    frame = harmonize_outcome(frame, req, data, dx_labels)
    mixed = req["analysis"] == "mixed_model"
    fit = _mixed if mixed else _meta
    result = (RemoteMixedModel if mixed else RemoteMetaAnalysis)(
        analysis=req["analysis"],
        measure=req["measure"],
        outcome=req["outcome"],
        harmonize=req.get("harmonize") or "none",
        n_subjects=len(frame),
        cells=cells,
        strata=report,
        **fit(frame, req, dx_labels),
    )
    return result_to_dict(result), frame[["subject", "site", "dx", "_row"]]


__all__ = [
    "ANALYSES", "DisclosureRefused", "checked_subset", "meta_fields", "mixed_fields", "run_query",
]  # fmt: skip

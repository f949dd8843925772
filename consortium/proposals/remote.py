"""Remote analyses on a grant's data, returning aggregates only.

Analyses: ``mixed_model`` (outcome ~ case + covariates + (1 | site), the REST-meta-MDD
DMN mega-analysis, via :func:`consortium.analysis.mixed_model`) and ``meta_analysis``
(per-site Hedges' g of case vs control pooled by
:func:`consortium.analysis.random_effects`). The analysed subset is chosen with
filters on granted columns; :mod:`consortium.proposals.disclosure` decides whether
the result may leave.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from consortium.errors import ConfedError
from consortium.proposals.disclosure import DisclosureRefused, check_cells, check_differencing
from consortium.proposals.scope import ScopedData

ANALYSES = ("mixed_model", "meta_analysis")
OPS = ("eq", "ne", "in", "ge", "le")


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


def _apply_filters(frame: pd.DataFrame, filters: list[dict]) -> pd.DataFrame:
    for f in filters:
        col, op, value = f["column"], f["op"], f["value"]
        if op not in OPS:
            raise ConfedError("bad_filter", f"filter op must be one of {OPS}, got {op!r}", 422)
        series = frame[col]
        if op == "eq":
            keep = series == value
        elif op == "ne":
            keep = series != value
        elif op == "in":
            keep = series.isin(value if isinstance(value, list) else [value])
        elif op == "ge":
            keep = series >= value
        else:
            keep = series <= value
        frame = frame[keep.fillna(False).astype(bool)]
    return frame


def analysed_subset(req: dict, data: ScopedData, dx_labels: dict, columns: list[str]):
    """The rows the query uses (complete cases after filters) and its categorical columns."""
    _check_request(req, columns, data)
    frame = data.subjects.copy()
    # float64: bundles store float32, and sums of squares in float32 lose ~1e-6 relative
    frame["_y"] = data.tables[req["measure"]][req["outcome"]].to_numpy(dtype=np.float64)
    frame = _apply_filters(frame, req["filters"])
    frame = frame[frame["dx"].isin([dx_labels["case"], dx_labels["control"]])]
    frame = frame.dropna(subset=["_y", "dx", *req["covariates"]])
    categorical = ["site", "dx"] + [
        c for c in req["covariates"] if not pd.api.types.is_numeric_dtype(frame[c])
    ]
    return frame, categorical


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
    from consortium.analysis import mixed_model

    model, fixed = _design(frame, req["covariates"], dx_labels["case"])
    if model["site"].nunique() < 2:
        raise ConfedError("too_few_sites", "a mixed model across sites needs two sites", 422)
    res = mixed_model(model, "y", fixed, "site")
    table = res.summary()
    return {
        "fixed_effects": {
            term: {k: float(row[k]) for k in ("estimate", "se", "t", "df", "p")}
            for term, row in table.iterrows()
        },
        "variance_components": {k: float(v) for k, v in res.variance_components.items()},
        "residual_variance": float(res.scale),
        "converged": bool(res.converged),
        "formula": f"{req['outcome']} ~ 1 + {' + '.join(fixed)} + (1 | site)",
    }


def _meta(frame, req, dx_labels) -> dict[str, Any]:
    from consortium.analysis import random_effects
    from consortium.analysis.meta import hedges_g_from_t

    yi, vi, per_site = [], [], {}
    for site, rows in frame.groupby("site"):
        case = rows.loc[rows["dx"] == dx_labels["case"], "_y"].to_numpy()
        ctrl = rows.loc[rows["dx"] == dx_labels["control"], "_y"].to_numpy()
        t = stats.ttest_ind(case, ctrl).statistic
        g, v = hedges_g_from_t(t, len(case), len(ctrl))
        yi.append(float(g))
        vi.append(float(v))
        per_site[str(site)] = {"g": float(g), "vi": float(v)}
    if len(yi) < 2:
        raise ConfedError("too_few_sites", "a meta-analysis needs two sites", 422)
    res = random_effects(np.array(yi), np.array(vi))
    pooled = {k: v for k, v in res.as_dict().items() if k != "weights"}
    return {"pooled": pooled, "sites": per_site}


def run_query(
    req: dict,
    data: ScopedData,
    dx_labels: dict,
    columns: list[str],
    minimum: int,
    previous: dict[int, set[str]],
) -> tuple[dict, set[str]]:
    """Check the disclosure rules, then run; returns (aggregate result, subject set)."""
    frame, categorical = analysed_subset(req, data, dx_labels, columns)
    cells = check_cells(frame, categorical, minimum)
    if req["analysis"] == "meta_analysis":
        check_cells(frame.assign(_cell=frame["site"] + "/" + frame["dx"]), ["_cell"], minimum)
    subjects = set(frame["subject"])
    check_differencing(subjects, previous, minimum)
    fit = _mixed if req["analysis"] == "mixed_model" else _meta
    result = {
        "analysis": req["analysis"],
        "measure": req["measure"],
        "outcome": req["outcome"],
        "n_subjects": len(frame),
        "cells": cells,
        **fit(frame, req, dx_labels),
    }
    return result, subjects


__all__ = ["ANALYSES", "DisclosureRefused", "run_query"]

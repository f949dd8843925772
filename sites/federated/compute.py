"""Site statistics of every federated task kind, computed on the site's own subjects.

Each function takes the task (its ``params``), the site's subject table and its
outcome array, and returns an unsigned message of :mod:`sites.federated.messages`;
none returns a subject-level row. The design of a task is explicit, so a site needs
no coordinator code to rebuild it::

    params = {"design": {"dx": "dx", "fixed": ["dx", "age", "sex"],
                         "random_slopes": ["dx"],
                         "codes": {"dx": {"MDD": 1, "HC": -1}, "sex": {"M": 1, "F": 2}}},
              "source": {...}, "dims": {"feature": 1}}

``codes`` maps the labels of a text column to numbers (the coordinator's encodings);
numeric columns are used as they are. Subjects with ``dx > 0`` are cases, the others
controls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sites.federated.crossprod import group_cross_products
from sites.federated.messages import MessageError, make_message, refusal
from sites.federated.query import apply_query
from sites.federated.siteols import one_site_summary

__all__ = [
    "COMPUTE",
    "combat_apply",
    "combat_residuals",
    "combat_stats",
    "encode_table",
    "group_counts",
    "mass_stats",
    "meta_summary",
    "mixed_stats",
    "standardize_apply",
    "standardize_sums",
]


def _design(params: Mapping[str, Any]) -> Mapping[str, Any]:
    design = params.get("design")
    if not isinstance(design, Mapping):
        raise MessageError("task params.design: missing")
    return design


def encode_table(table: pd.DataFrame, design: Mapping[str, Any]) -> pd.DataFrame:
    """The design's columns as numbers, text columns coded with ``design['codes']``.

    Raises :class:`MessageError` naming the column for a missing column, an uncoded
    label or a missing value.
    """
    codes = design.get("codes") or {}
    names = [design["dx"], *design.get("fixed", []), *design.get("random_slopes", [])]
    out = {}
    for name in dict.fromkeys(names):
        if name not in table.columns:
            raise MessageError(f"column {name!r} is not in the site's subject table")
        col = table[name]
        if name in codes:
            mapped = col.astype("string").map(lambda v, c=codes[name]: c.get(v) if v in c else None)
            unknown = sorted(set(col.astype(str)[mapped.isna()]))
            if unknown:
                raise MessageError(f"column {name!r}: labels {unknown[:5]} have no agreed code")
            col = mapped.astype(float)
        elif not pd.api.types.is_numeric_dtype(col):
            raise MessageError(f"column {name!r} is not numeric and the task gives no codes")
        values = col.to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise MessageError(f"column {name!r} has {int((~np.isfinite(values)).sum())} missing")
        out[name] = values
    return pd.DataFrame(out, index=table.index)


def group_counts(encoded: pd.DataFrame, dx: str) -> dict[str, int]:
    """Cases (``dx > 0``) and controls (the others) among the site's subjects."""
    d = encoded[dx].to_numpy()
    return {"case": int(np.sum(d > 0)), "control": int(np.sum(d <= 0))}


def _check_cells(site: str, groups: Mapping[str, int], min_cell: int) -> str | None:
    small = {g: n for g, n in groups.items() if n < min_cell}
    if small:
        return (
            f"site {site}: fewer than the minimum cell size {min_cell} in "
            + ", ".join(f"{g} ({n})" for g, n in sorted(small.items()))
        )
    return None


def _outcomes(Y: np.ndarray, n: int) -> np.ndarray:
    Y = np.asarray(Y, dtype=float)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if Y.ndim != 2 or Y.shape[0] != n:
        raise MessageError(f"outcomes must be subjects x features with {n} rows, got {Y.shape}")
    bad = ~np.isfinite(Y)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise MessageError(f"outcomes: {int(bad.sum())} non-finite values (first: feature {col})")
    return Y


def _min_per_group(task: Mapping[str, Any], min_cell: int) -> int:
    """The site's minimum cell size, or the analysis's ``params.min_per_group`` if larger."""
    return max(min_cell, int(task["params"].get("min_per_group", 0)))


def _researcher_query(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> tuple[pd.DataFrame, np.ndarray] | str:
    """A researcher's request (``params.query``) cut and checked here first, if any."""
    if "query" not in task["params"]:
        return table, Y
    return apply_query(task["params"], site, table, Y, min_cell)


def mixed_stats(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> dict[str, Any]:
    """The site's mixed-model cross-products (one or a few outcomes, or every feature)."""
    cut = _researcher_query(task, site, table, Y, min_cell)
    if isinstance(cut, str):
        return refusal(task, site, cut)
    table, Y = cut
    design = _design(task["params"])
    enc = encode_table(table, design)
    groups = group_counts(enc, design["dx"])
    problem = _check_cells(site, groups, _min_per_group(task, min_cell))
    if problem:
        return refusal(task, site, problem)
    n = len(enc)
    X = np.column_stack([np.ones(n)] + [enc[c].to_numpy() for c in design.get("fixed", [])])
    Z = np.column_stack(
        [np.ones(n)] + [enc[c].to_numpy() for c in design.get("random_slopes", [])]
    )
    cp = group_cross_products(X, Z, _outcomes(Y, n))
    dims = {"feature": cp.YtY.shape[0], "fixed": X.shape[1], "random": Z.shape[1]}
    arrays = {"ZtZ": cp.ZtZ[0], "ZtX": cp.ZtX[0], "ZtY": cp.ZtY[0],
              "XtX": cp.XtX, "XtY": cp.XtY, "YtY": cp.YtY}  # fmt: skip
    return make_message(task, site, n, groups, dims, arrays)


#: Per-feature (edges, voxels) statistics are the same cross-products, over all features.
mass_stats = mixed_stats


def meta_summary(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> dict[str, Any]:
    """The site's OLS summary of diagnosis on one outcome (t, df, Hedges' g and variance)."""
    cut = _researcher_query(task, site, table, Y, min_cell)
    if isinstance(cut, str):
        return refusal(task, site, cut)
    table, Y = cut
    design = _design(task["params"])
    enc = encode_table(table, design)
    dx = design["dx"]
    groups = group_counts(enc, dx)
    problem = _check_cells(site, groups, _min_per_group(task, min_cell))
    if problem:
        return refusal(task, site, problem)
    y = _outcomes(Y, len(enc))
    if y.shape[1] != 1:
        raise MessageError(f"meta_summary takes one outcome, got {y.shape[1]}")
    block = enc.assign(__y=y[:, 0])
    covariates = [c for c in design.get("fixed", []) if c != dx]
    row = one_site_summary(block, "__y", dx, covariates)
    if "t" not in row:
        return refusal(task, site, f"site {site}: {row['reason']}")
    scalars = {
        "t": row["t"], "df": row["df"], "yi": row["yi"], "vi": row["vi"],
        "n_case": groups["case"], "n_control": groups["control"], "included": 1.0,
    }  # fmt: skip
    return make_message(task, site, len(enc), groups, {}, {}, scalars)


def _combat_spec(params: Mapping[str, Any]) -> Any:
    from harmonization.covariates import CovariateEncoder
    from harmonization.distributed import DesignSpec

    enc = params.get("encoder") or {}
    encoder = CovariateEncoder(list(enc.get("columns", [])), dict(enc.get("levels", {})))
    return DesignSpec(tuple(params["sites"]), encoder, params.get("ref_site"))


def _covariates(table: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame | None:
    """The encoder's columns; coded with ``params['design']`` when the task gives one."""
    columns = list((params.get("encoder") or {}).get("columns", []))
    if "design" in params:
        table = encode_table(table, params["design"])
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MessageError(f"columns {missing} are not in the site's subject table")
    return table[columns].reset_index(drop=True) if columns else None


def combat_stats(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> dict[str, Any]:
    """Distributed ComBat round 1: the site's ``D'D`` and ``D'Y`` (Chen et al. 2022).

    With a ``design`` in the task, a site below the minimum cell size refuses.
    """
    from harmonization.distributed import site_stats

    params = task["params"]
    if "design" in params:
        design = _design(params)
        groups = group_counts(encode_table(table, design), design["dx"])
        problem = _check_cells(site, groups, _min_per_group(task, min_cell))
        if problem:
            return refusal(task, site, problem)
    spec = _combat_spec(params)
    Y = _outcomes(Y, len(table))
    stats = site_stats(spec, site, Y, _covariates(table, params))
    dims = {"param": stats.xtx.shape[0], "feature": Y.shape[1]}
    return make_message(task, site, stats.n, {}, dims, {"xtx": stats.xtx, "xty": stats.xty})


def combat_residuals(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> dict[str, Any]:
    """Distributed ComBat round 2: per-feature residual sums of squares at the site."""
    from harmonization.distributed import PooledCoefficients, site_residuals

    params = task["params"]
    spec = _combat_spec(params)
    Y = _outcomes(Y, len(table))
    coef = PooledCoefficients(np.asarray(params["coef"], dtype=float))
    res = site_residuals(spec, site, Y, coef, _covariates(table, params))
    return make_message(task, site, Y.shape[0], {}, {"feature": Y.shape[1]}, {"ssr": res.ssr})


def combat_apply(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Distributed ComBat round 3: harmonize locally; send only the site's effects.

    Returns the message and the harmonized data, which stay at the site.
    """
    from harmonization.distributed import PooledModel, site_harmonize

    params = task["params"]
    spec = _combat_spec(params)
    Y = _outcomes(Y, len(table))
    m = params["model"]
    model = PooledModel(
        np.asarray(m["coef"], dtype=float), np.asarray(m["grand_mean"], dtype=float),
        np.asarray(m["var_pooled"], dtype=float), int(m["n_sites"]), m.get("ref_site"),
    )  # fmt: skip
    out, effects = site_harmonize(spec, site, Y, model, _covariates(table, params))
    msg = make_message(task, site, Y.shape[0], {}, {"feature": Y.shape[1]}, effects)
    return msg, out


def standardize_sums(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> dict[str, Any]:
    """Consortium-wide DPABI mean regression, round 1: the site's sums.

    With subject means ``m_i`` of the maps ``x_i``: ``sum_i x_i``, ``sum_i m_i x_i``
    (voxel vectors), ``sum_i m_i`` and ``sum_i m_i^2`` (numbers).
    """
    x = _outcomes(Y, len(table))
    m = x.mean(axis=1)
    arrays = {"sum_maps": x.sum(axis=0), "sum_mean_maps": m @ x}
    scalars = {"sum_means": float(m.sum()), "sum_means_sq": float(m @ m)}
    return make_message(task, site, x.shape[0], {}, {"feature": x.shape[1]}, arrays, scalars)


def standardize_apply(
    task: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Round 2: standardize the site's maps against the consortium-wide quantities.

    ``params['pooled']`` holds the voxel means ``mu``, the mean and SD of the subject
    means and the voxel-wise coefficients ``beta`` of the z-scored subject mean
    (:func:`consortium.federated.combine.combine_standardize`). Returns the message and
    the standardized maps, which stay at the site.
    """
    x = _outcomes(Y, len(table))
    pooled = task["params"]["pooled"]
    method = task["params"].get("method", "mean_regression_sd")
    mu = np.asarray(pooled["mu"], dtype=float)
    beta = np.asarray(pooled["beta"], dtype=float)
    c = (x.mean(axis=1) - pooled["mean_of_means"]) / pooled["sd_of_means"]
    r = (x - mu) - np.outer(c, beta)
    if method == "mean_regression_sd":
        sd = x.std(axis=1, ddof=1)
        if (sd == 0).any():
            raise MessageError(f"subject row(s) {np.flatnonzero(sd == 0)[:10]} have a constant map")
        r /= sd[:, None]
    elif method != "mean_regression":
        raise MessageError(f"params.method: {method!r} has no consortium-wide version")
    r += mu
    msg = make_message(task, site, x.shape[0], {}, {}, {}, {"n_written": x.shape[0]})
    return msg, r


#: Task kind -> site computation. ``combat_apply`` and ``standardize_apply`` also
#: return the data they produce, which the agent writes to the site's own store.
COMPUTE = {
    "mixed_stats": mixed_stats,
    "mass_stats": mass_stats,
    "meta_summary": meta_summary,
    "combat_stats": combat_stats,
    "combat_residuals": combat_residuals,
    "combat_apply": combat_apply,
    "standardize_sums": standardize_sums,
    "standardize_apply": standardize_apply,
}

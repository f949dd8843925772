"""A researcher's remote analysis, cut and checked at the site before anything is computed.

A federated remote analysis (``mode: federated`` of a grant's analysis request) sends
each site a ``mixed_stats`` or ``meta_summary`` task whose ``params.query`` carries
the request::

    {"dx": "dx", "case": "ASD", "control": "TDC",
     "filters": [{"column": "sex", "op": "eq", "value": "F"}],
     "covariates": ["age", "sex"], "levels": {"sex": ["F", "M"]},
     "min_cell": 10}

The site keeps its case and control subjects, applies the filters, drops subjects
with a missing outcome or covariate, then applies the disclosure rule
``min_cell_size`` (:func:`sites.disclosure.cell_counts`, the rule of pooled remote
analyses) to diagnosis and every categorical covariate, with the larger of the
request's and the site's own minimum. Only then are the statistics computed: a
``case`` column (1 case, 0 control) and one 0/1 column ``name[level]`` per non-first
level of a categorical covariate, as the pooled remote design codes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sites.disclosure import CellSizeError, cell_counts
from sites.federated.messages import MessageError

__all__ = ["OPS", "apply_query", "filter_mask", "query_columns"]

OPS = ("eq", "ne", "in", "ge", "le")


def query_columns(query: Mapping[str, Any]) -> list[str]:
    """The design's fixed columns, in the pooled remote order: case, then covariates."""
    fixed = ["case"]
    levels = query.get("levels") or {}
    for c in query.get("covariates", []):
        fixed += [f"{c}[{v}]" for v in levels[c][1:]] if c in levels else [c]
    return fixed


def filter_mask(series: pd.Series, op: str, value: Any) -> pd.Series:
    """Rows kept by one filter of a remote query: the one rule, applied by the site
    (federated) and by the coordinator on pooled data (:mod:`consortium.proposals.remote`).

    Raises ``ValueError`` for an operator not in :data:`OPS`.
    """
    if op not in OPS:
        raise ValueError(f"filter op must be one of {OPS}, got {op!r}")
    if op == "eq":
        keep = series == value
    elif op == "ne":
        keep = series != value
    elif op == "in":
        keep = series.isin(value if isinstance(value, list) else [value])
    else:
        keep = series >= value if op == "ge" else series <= value
    return keep.fillna(False).astype(bool)


def _keep(series: pd.Series, f: Mapping[str, Any]) -> pd.Series:
    try:
        return filter_mask(series, f.get("op"), f.get("value"))
    except ValueError as exc:
        raise MessageError(f"query.filters: {exc}") from exc


def _cut(query: Mapping[str, Any], table: pd.DataFrame, y: np.ndarray) -> pd.DataFrame:
    dx = query["dx"]
    frame = table.reset_index(drop=True).assign(_y=y)
    for name in [dx, *query.get("covariates", []), *(f["column"] for f in query["filters"])]:
        if name not in frame.columns:
            raise MessageError(f"query: column {name!r} is not in the site's subject table")
    frame = frame[frame[dx].isin([query["case"], query["control"]])]
    for f in query.get("filters", []):
        frame = frame[_keep(frame[f["column"]], f)]
    return frame.dropna(subset=["_y", *query.get("covariates", [])])


def _encode(query: Mapping[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"case": (frame[query["dx"]] == query["case"]).to_numpy(float)})
    levels = query.get("levels") or {}
    for c in query.get("covariates", []):
        if c in levels:
            text = frame[c].astype(str).to_numpy()
            for level in levels[c][1:]:
                out[f"{c}[{level}]"] = (text == level).astype(float)
        else:
            out[c] = frame[c].to_numpy(dtype=float)
    return out


def apply_query(
    params: Mapping[str, Any], site: str, table: pd.DataFrame, Y: np.ndarray, min_cell: int
) -> tuple[pd.DataFrame, np.ndarray] | str:
    """The coded subjects and outcome the request analyses, or the refusal's reason.

    ``Y`` has one column (the request's outcome). The reason of a refusal names the
    rule (``refused by rule min_cell_size: ...``) and the site.
    """
    query = params["query"]
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2 or Y.shape[1] != 1 or Y.shape[0] != len(table):
        raise MessageError(f"query: one outcome per subject expected, got shape {Y.shape}")
    frame = _cut(query, table, Y[:, 0])
    minimum = max(int(min_cell), int(query.get("min_cell", 0)))
    levels = query.get("levels") or {}
    groups = [query["dx"], *(c for c in query.get("covariates", []) if c in levels)]
    try:
        cell_counts(frame, groups, minimum)
    except CellSizeError as exc:
        return f"refused by rule {exc.rule}: site {site}: {exc}"
    return _encode(query, frame), frame["_y"].to_numpy(dtype=float)[:, None]

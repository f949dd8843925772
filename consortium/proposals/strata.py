"""Strata of a grant: the only ways a remote analysis may cut the data.

The steering committee fixes, per grant, the strata a researcher may filter on:
numeric columns by band edges (``{"age": [18, 30, 45, 65, 100]}``: bands
``[18, 30)``, ``[30, 45)``, ``[45, 65)``, ``[65, 100]``) and categorical columns
by levels (``{"sex": ["F", "M"]}``). ``site`` and ``dx`` are always cell
dimensions. A *cell* is one site x diagnosis x stratum combination.

Rules (see ``docs/researcher/proposals.md``):

- Every released result is computed on a union of whole cells. Filters may only
  select whole cells: a numeric stratum takes ``ge``/``le`` with a band edge, a
  categorical one ``eq``/``ne``/``in`` with its levels, ``site`` and ``dx`` their
  values. Anything else is refused naming the filter and what is allowed.
- Every cell has at least ``min_cell_size`` subjects. Within each lane (same site,
  diagnosis and categorical strata) a small band is merged with its neighbouring
  band along the first numeric stratum (upwards; the last small group downwards);
  cells still too small are suppressed (left out of every analysis). The cells
  are fixed by the grant's data alone, never by the query, so all queries of a
  grant use one partition.
- Subjects whose stratum value is missing or outside the strata are in no cell
  and never analysed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from consortium.errors import ConfedError
from consortium.proposals.disclosure import DisclosureRefused

CELL_DIMENSIONS = ("site", "dx")
MAX_STRATA = 5
MAX_VALUES = 50


def normalize(spec: Mapping[str, Sequence], columns: Sequence[str]) -> dict[str, list]:
    """Check a strata definition against the grant's columns; returns a plain copy.

    Parameters
    ----------
    spec : mapping
        Column -> band edges (numbers, strictly increasing, at least two) or levels
        (distinct strings, at least one).
    columns : sequence of str
        The grant's phenotype columns.

    Returns
    -------
    dict
        ``{column: [float edges] | [str levels]}`` in the order given.
    """
    if len(spec) > MAX_STRATA:
        raise ConfedError("bad_strata", f"strata: at most {MAX_STRATA} columns", 422)
    out: dict[str, list] = {}
    for column, values in spec.items():
        if column in CELL_DIMENSIONS:
            raise ConfedError(
                "bad_strata", f"strata: {column} is always a cell dimension, do not list it", 422
            )
        if column not in columns:
            raise ConfedError(
                "bad_strata",
                f"strata: {column} is not a column of the grant ({', '.join(columns)})",
                422,
            )
        if len(values) > MAX_VALUES:
            raise ConfedError("bad_strata", f"strata: at most {MAX_VALUES} values per column", 422)
        out[column] = _edges(column, values) if _numeric(values) else _levels(column, values)
    return out


def _numeric(values: Sequence) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _edges(column: str, values: Sequence) -> list[float]:
    edges = [float(v) for v in values]
    bad = len(edges) < 2 or any(not math.isfinite(v) for v in edges)
    if bad or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ConfedError(
            "bad_strata",
            f"strata: band edges of {column} must be at least two finite, strictly "
            f"increasing numbers, got {list(values)}",
            422,
        )
    return edges


def _levels(column: str, values: Sequence) -> list[str]:
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfedError(
            "bad_strata",
            f"strata: {column} needs band edges (numbers) or levels (non-empty strings), "
            f"got {list(values)}",
            422,
        )
    if len(set(values)) != len(values):
        raise ConfedError("bad_strata", f"strata: a level of {column} is listed twice", 422)
    return list(values)


def default_strata(age_bands: Sequence[float], columns: Sequence[str]) -> dict[str, list]:
    """The consortium-wide default: the settings' age bands, if the grant has ``age``."""
    return {"age": [float(e) for e in age_bands]} if "age" in columns else {}


def _fmt(x: float) -> str:
    return f"{x:g}"


def band_label(edges: Sequence[float], lo: int, hi: int) -> str:
    """Label of bands ``lo..hi`` (inclusive) merged: ``[18, 45)``; the last band is closed."""
    close = "]" if hi == len(edges) - 2 else ")"
    return f"[{_fmt(edges[lo])}, {_fmt(edges[hi + 1])}{close}"


def _codes(values: pd.Series, spec: list) -> np.ndarray:
    """Band or level index of every value; -1 when missing or outside the strata."""
    missing = values.isna().to_numpy()
    if isinstance(spec[0], str):
        lookup = {level: i for i, level in enumerate(spec)}
        codes = np.array([lookup.get(str(v), -1) for v in values], dtype=int)
    else:
        if not pd.api.types.is_numeric_dtype(values):
            raise ConfedError(
                "bad_strata",
                f"stratum {values.name} has band edges but the column is not numeric",
                422,
            )
        x = values.to_numpy(dtype=float)
        codes = np.searchsorted(spec, x, side="right") - 1
        codes[x == spec[-1]] = len(spec) - 2  # the last band is closed
        codes[(x < spec[0]) | (x > spec[-1])] = -1
    codes[missing] = -1
    return codes


@dataclass
class CellPlan:
    """The grant's fixed partition of its subjects into cells.

    Attributes
    ----------
    cell : pd.Series
        Cell label of every subject row (index as the subjects frame); ``None`` for
        rows in no cell (stratum value missing or outside the strata, not case or
        control).
    merged : set of str
        Labels of cells made of more than one band.
    small : set of str
        Labels of cells with fewer than the minimum subjects even after merging
        (suppressed: never analysed).
    outside : list of str
        Strata with case/control subjects outside them (missing or out of range).
    """

    cell: pd.Series
    merged: set[str] = field(default_factory=set)
    small: set[str] = field(default_factory=set)
    outside: list[str] = field(default_factory=list)


def _label(site, dx, parts: Mapping[str, str]) -> str:
    return ", ".join([f"site={site}", f"dx={dx}", *(f"{c}={v}" for c, v in parts.items())])


def plan_cells(
    subjects: pd.DataFrame, strata: Mapping[str, list], dx_values: Sequence[str], minimum: int
) -> CellPlan:
    """Assign every subject of the grant to its cell, merging small bands."""
    codes = {c: _codes(subjects[c], spec) for c, spec in strata.items()}
    inside = subjects["dx"].isin(list(dx_values)).to_numpy()
    outside = [c for c, k in codes.items() if ((k < 0) & inside).any()]
    for k in codes.values():
        inside &= k >= 0
    axis = next((c for c, spec in strata.items() if not isinstance(spec[0], str)), None)
    cell = pd.Series([None] * len(subjects), index=subjects.index, dtype=object)
    plan = CellPlan(cell, outside=outside)
    rows = subjects.loc[inside]
    if rows.empty:
        return plan
    lanes = [c for c in strata if c != axis]
    keys = [rows["site"], rows["dx"], *(pd.Series(codes[c][inside], rows.index) for c in lanes)]
    for lane, members in rows.groupby(keys, sort=True).groups.items():
        site, dx, *lane_codes = lane
        parts = {c: strata[c][int(i)] for c, i in zip(lanes, lane_codes, strict=True)}
        if axis is None:
            _place(plan, list(members), _label(site, dx, parts), minimum, False)
            continue
        bands = pd.Series(codes[axis][subjects.index.get_indexer(members)], index=members)
        for lo, hi, idx in _merge(bands, len(strata[axis]) - 1, minimum):
            label = _label(site, dx, {axis: band_label(strata[axis], lo, hi), **parts})
            _place(plan, idx, label, minimum, hi > lo)
    return plan


def _merge(bands: pd.Series, n_bands: int, minimum: int) -> list[tuple[int, int, list]]:
    """Greedy groups of consecutive bands with >= minimum subjects (lo, hi, row index).

    Bands are taken upwards until the group is large enough; a small remainder at the
    top joins the group below it. A lane smaller than the minimum stays one group.
    """
    groups, lo, acc = [], 0, []
    for b in range(n_bands):
        acc += list(bands.index[bands.to_numpy() == b])
        if len(acc) >= minimum:
            groups.append((lo, b, acc))
            lo, acc = b + 1, []
    if groups:
        first, _, rows = groups.pop()
        groups.append((first, n_bands - 1, rows + acc))
    else:
        groups.append((0, n_bands - 1, acc))
    return groups


def _place(plan: CellPlan, idx: list, label: str, minimum: int, merged: bool) -> None:
    plan.cell.loc[idx] = label
    if len(idx) < minimum:
        plan.small.add(label)
    elif merged:
        plan.merged.add(label)


def select(
    subjects: pd.DataFrame, filters: Sequence[Mapping], strata: Mapping[str, list]
) -> pd.Series:
    """Rows the filters select; refuses any filter that is not a whole-cell filter."""
    keep = pd.Series(True, index=subjects.index)
    for f in filters:
        keep &= _one_filter(subjects, f, strata)
    return keep


def _describe(f: Mapping) -> str:
    return f"{f['column']} {f['op']} {f['value']!r}"


def _allowed(strata: Mapping[str, list]) -> str:
    parts = [f"{c} (band edges {', '.join(_fmt(e) for e in s)})" if not isinstance(s[0], str)
             else f"{c} (levels {', '.join(s)})" for c, s in strata.items()]  # fmt: skip
    return ", ".join(["site", "dx", *parts])


def _one_filter(subjects: pd.DataFrame, f: Mapping, strata: Mapping[str, list]) -> pd.Series:
    column, op, value = f["column"], f["op"], f["value"]
    if column not in strata and column not in CELL_DIMENSIONS:
        raise DisclosureRefused(
            "strata",
            f"filter {_describe(f)}: {column} is not a stratum of this grant; filters may "
            f"only select whole cells of: {_allowed(strata)}",
        )
    spec = strata.get(column)
    if spec is not None and not isinstance(spec[0], str):
        return _band_filter(subjects, f, spec)
    values = value if isinstance(value, list) else [value]
    if op not in ("eq", "ne", "in") or not all(isinstance(v, str) for v in values):
        raise ConfedError(
            "bad_filter",
            f"filter {_describe(f)}: {column} is categorical; use eq, ne or in with "
            + (f"its levels {', '.join(spec)}" if spec else "text values"),
            422,
        )
    unknown = [v for v in values if spec is not None and v not in spec]
    if unknown:
        raise ConfedError(
            "bad_filter",
            f"filter {_describe(f)}: {', '.join(unknown)} not a level of {column} "
            f"(levels: {', '.join(spec)})",
            422,
        )
    if op == "in":
        return subjects[column].astype(str).isin(values)
    hit = subjects[column].astype(str) == values[0]
    return hit if op == "eq" else ~hit


def _band_filter(subjects: pd.DataFrame, f: Mapping, edges: list[float]) -> pd.Series:
    op, value = f["op"], f["value"]
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    allowed = ", ".join(_fmt(e) for e in edges)
    if op not in ("ge", "le") or not numeric:
        raise ConfedError(
            "bad_filter",
            f"filter {_describe(f)}: {f['column']} is a banded stratum; use ge or le with a "
            f"number, one of the band edges {allowed}",
            422,
        )
    hits = [i for i, e in enumerate(edges) if math.isclose(e, float(value), abs_tol=1e-9)]
    if not hits:
        inside = int(np.clip(np.searchsorted(edges, float(value), side="right") - 1, 0,
                             len(edges) - 2))  # fmt: skip
        raise DisclosureRefused(
            "strata",
            f"filter {_describe(f)} splits the band {band_label(edges, inside, inside)} of "
            f"{f['column']}; filters may only select whole bands: use ge or le with one of "
            f"the band edges {allowed}",
        )
    codes = pd.Series(_codes(subjects[f["column"]], edges), index=subjects.index)
    edge = hits[0]
    # ge e_i: the bands starting at or above e_i; le e_j: the bands ending at or below e_j
    return (codes >= edge) if op == "ge" else (codes >= 0) & (codes <= edge - 1)


def whole_cells(selected: pd.Series, plan: CellPlan) -> tuple[pd.Series, list, list]:
    """Rows of the whole, large-enough cells the filters select.

    Returns
    -------
    keep : pd.Series of bool
    suppressed : list of str
        Selected cells left out for having fewer than the minimum subjects.
    partial : list of str
        Merged cells the filters select only in part (left out).
    """
    labelled = plan.cell.notna()
    by_cell = selected[labelled].groupby(plan.cell[labelled]).agg(["any", "all"])
    touched = by_cell[by_cell["any"]]
    suppressed = sorted(label for label in touched.index if label in plan.small)
    partial = sorted(set(touched.index[~touched["all"]]) - set(suppressed))
    keep = selected & labelled & ~plan.cell.isin([*suppressed, *partial])
    return keep, suppressed, partial

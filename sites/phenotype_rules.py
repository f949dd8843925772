"""Phenotype rules of the contract: the columns of ``subjects.parquet`` and their checks.

Part of the site–coordinator contract (:mod:`sites.contract` re-exports the
public names): the canonical phenotype columns (:data:`PHENOTYPE_COLUMNS`),
each with its type, unit, allowed codes or plausible range and whether it is
required; the allow-list rule for extra columns (no dates, no free text, no
identifying names); and :func:`check_subjects_table`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

from sites.naming import ContractError, check_name
from sites.table_rules import check_columns, check_key_column, key_prefix


@dataclass(frozen=True)
class PhenotypeColumn:
    """One canonical phenotype column of ``subjects.parquet``.

    Attributes
    ----------
    name : str
        Column name.
    kind : {"key", "label", "number", "code"}
        ``key``: the subject pseudonym; ``label``: one of the manifest's
        ``dx_labels``; ``number``: float; ``code``: one of ``codes``.
    unit : str
        Unit of a number.
    codes : tuple of str
        Allowed values of a ``code`` column.
    plausible : tuple of float or None
        Hard bounds (inclusive) of a ``number``; anything outside is refused.
    required : bool
        Whether the column must be present with a value for every subject.
    """

    name: str
    kind: str
    unit: str = ""
    codes: tuple[str, ...] = ()
    plausible: tuple[float, float] | None = None
    required: bool = False


PHENOTYPE_COLUMNS: dict[str, PhenotypeColumn] = {
    c.name: c
    for c in (
        PhenotypeColumn("subject_key", "key", required=True),
        PhenotypeColumn("dx", "label", required=True),
        PhenotypeColumn("age", "number", "years", plausible=(0.0, 120.0), required=True),
        PhenotypeColumn("sex", "code", codes=("M", "F"), required=True),
        PhenotypeColumn("mean_fd", "number", "mm", plausible=(0.0, 10.0)),
        PhenotypeColumn("education_years", "number", "years", plausible=(0.0, 40.0)),
        PhenotypeColumn("episode", "code", codes=("first", "recurrent")),
        PhenotypeColumn("medication", "code", codes=("naive", "treated")),
        PhenotypeColumn("hamd", "number", "points", plausible=(0.0, 60.0)),
    )
}
#: Required canonical columns (present, and a value for every included subject).
REQUIRED_COLUMNS = tuple(n for n, c in PHENOTYPE_COLUMNS.items() if c.required)
#: An allow-listed extra column holds numbers or at most this many distinct codes ...
MAX_CATEGORIES = 12
#: ... each matching this pattern (short, no spaces, so no names or sentences).
CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,23}")
#: Extra columns whose name contains one of these are identifying and refused.
IDENTIFYING_NAME_PARTS = (
    "name", "birth", "dob", "date", "address", "phone", "email", "mrn", "ssn", "postcode",
    "zip",
)  # fmt: skip
_DATE_RE = re.compile(
    r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{8}|"
    r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?[ -]?\d",
    re.IGNORECASE,
)


def looks_like_date(value: object) -> bool:
    """Whether ``value`` is a date, or a text holding a date."""
    if isinstance(value, date | datetime | pd.Timestamp | np.datetime64):
        return True
    return isinstance(value, str) and bool(_DATE_RE.search(value))


def _check_numbers(values: pd.Series, column: str, where: str, keys: pd.Series | None) -> None:
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        raise ContractError(
            f"{where}: column '{column}' must hold numbers (has {values.dtype}); "
            "text may not leave the site"
        )
    numbers = values.to_numpy(dtype=float)
    spec = PHENOTYPE_COLUMNS.get(column)
    missing = np.isnan(numbers)
    if spec is not None and spec.required and missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise ContractError(
            f"{where}: column '{column}' has no value for {key_prefix(keys, i)} (required)"
        )
    bad = np.isinf(numbers)
    if spec is not None and spec.plausible is not None:
        low, high = spec.plausible
        with np.errstate(invalid="ignore"):
            bad |= (numbers < low) | (numbers > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        bounds = spec.plausible if spec is not None and spec.plausible else "finite"
        raise ContractError(
            f"{where}: column '{column}' = {numbers[i]!r} of {key_prefix(keys, i)} is "
            f"outside the plausible range {bounds}"
        )


def _check_codes(
    values: pd.Series, column: str, allowed: Iterable[str], required: bool, where: str, keys
) -> None:
    allowed = tuple(allowed)
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if required:
                raise ContractError(
                    f"{where}: column '{column}' has no value for {key_prefix(keys, i)} (required)"
                )
            continue
        if value not in allowed:
            raise ContractError(
                f"{where}: column '{column}' of {key_prefix(keys, i)} holds a value that is "
                f"not one of {list(allowed)}"
            )


def check_extra_column(values: pd.Series, column: str, where: str = "subjects.parquet") -> None:
    """Check an allow-listed extra phenotype column: numbers, or a few short codes.

    Raises
    ------
    ContractError
        The name is not a valid name or looks identifying; a value is a date;
        the column holds free text (more than :data:`MAX_CATEGORIES` distinct
        values, or a value not matching :data:`CODE_RE`).
    """
    check_name(column, f"{where}: column")
    lowered = column.lower()
    if any(part in lowered for part in IDENTIFYING_NAME_PARTS):
        raise ContractError(
            f"{where}: column '{column}' has an identifying name "
            f"(contains one of {list(IDENTIFYING_NAME_PARTS)}); it may not leave the site"
        )
    if pd.api.types.is_bool_dtype(values):
        return
    if pd.api.types.is_numeric_dtype(values):
        _check_numbers(values, column, where, None)
        return
    present = values[values.notna()]
    if any(looks_like_date(v) for v in present):
        raise ContractError(f"{where}: column '{column}' holds dates; dates may not leave the site")
    if present.nunique() > MAX_CATEGORIES or not all(
        isinstance(v, str) and CODE_RE.fullmatch(v) for v in present
    ):
        raise ContractError(
            f"{where}: column '{column}' looks like free text (more than {MAX_CATEGORIES} "
            "distinct values, or values that are not short codes of letters, digits, "
            "'_', '.', '+', '-'); free text may not leave the site"
        )


def check_dx_labels(dx_labels: object, where: str = "manifest.json: dx_labels") -> dict[str, str]:
    """Return ``{"case": ..., "control": ...}`` if both are valid, distinct names."""
    if not isinstance(dx_labels, Mapping) or set(dx_labels) != {"case", "control"}:
        raise ContractError(f"{where} must map exactly 'case' and 'control' to labels")
    labels = {role: check_name(dx_labels[role], f"{where}.{role}") for role in dx_labels}
    if labels["case"] == labels["control"]:
        raise ContractError(f"{where}: case and control have the same label")
    return labels


def check_subjects_table(
    df: pd.DataFrame,
    dx_labels: Mapping[str, str],
    extras: Iterable[str] = (),
    where: str = "subjects.parquet",
) -> None:
    """Check every column and value of a bundle's subjects table.

    Parameters
    ----------
    df : DataFrame
        One row per included subject.
    dx_labels : mapping
        ``{"case": label, "control": label}``; ``dx`` must be one of them.
    extras : iterable of str
        The site's allow-listed extra columns (the manifest's ``phenotype_columns``
        beyond the canonical ones); each is checked by :func:`check_extra_column`.
    where : str
        The file, for messages.

    Raises
    ------
    ContractError
        Naming the file, the column and, for a value, the subject key prefix.
    """
    labels = check_dx_labels(dx_labels)
    extras = set(extras) - set(PHENOTYPE_COLUMNS)
    check_columns(
        df,
        (*PHENOTYPE_COLUMNS, *sorted(extras)),
        REQUIRED_COLUMNS,
        where,
        f"canonical columns: {', '.join(PHENOTYPE_COLUMNS)}; extras must be allow-listed "
        "by the site",
    )
    check_key_column(df["subject_key"], where)
    keys = df["subject_key"]
    if keys.duplicated().any():
        i = int(np.flatnonzero(keys.duplicated().to_numpy())[0])
        raise ContractError(f"{where}: column 'subject_key' repeats {key_prefix(keys, i)}")
    for column in df.columns:
        spec = PHENOTYPE_COLUMNS.get(column)
        if spec is None:
            check_extra_column(df[column], column, where)
        elif spec.kind == "number":
            _check_numbers(df[column], column, where, keys)
        elif spec.kind == "code":
            _check_codes(df[column], column, spec.codes, spec.required, where, keys)
        elif spec.kind == "label":
            _check_codes(df[column], column, labels.values(), True, where, keys)

"""QC rules of the contract: the reason codes and the layout of the QC tables.

Part of the site–coordinator contract (:mod:`sites.contract` re-exports the
public names): the QC reason codes (:data:`QC_CODES`), the columns of
``qc.parquet`` and ``qc_reasons.parquet``, and their checks
(:func:`check_qc_tables`, :func:`check_included`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sites.naming import NAME_RE, ContractError
from sites.phenotype_rules import PHENOTYPE_COLUMNS
from sites.table_rules import check_columns, check_key_column, key_prefix


@dataclass(frozen=True)
class QCCode:
    """One QC exclusion reason code.

    Attributes
    ----------
    text : str
        What the code means, for people.
    field : {"phenotype", "atlas", "metric", "none"}
        What the reason's ``field`` names: a canonical phenotype column, an
        atlas, a map metric, or nothing (empty).
    value, threshold : str
        What the reason's ``value`` and ``threshold`` numbers are (empty: unused, NaN).
    """

    text: str
    field: str
    value: str = ""
    threshold: str = ""


#: The QC reason codes; every exclusion in a bundle is one of these.
QC_CODES: dict[str, QCCode] = {
    "missing_value": QCCode("required phenotype value missing", "phenotype"),
    "not_a_number": QCCode("phenotype value is not a number", "phenotype"),
    "unknown_code": QCCode("phenotype code not in the site's mapping", "phenotype"),
    "implausible_value": QCCode(
        "phenotype value outside the contract's plausible range", "phenotype", "value", "bound"
    ),
    "age_out_of_range": QCCode("age outside the site's QC window", "phenotype", "years", "bound"),
    "motion_missing": QCCode("mean framewise displacement unknown", "phenotype"),
    "head_motion": QCCode("mean FD above the threshold", "phenotype", "mm", "max mm"),
    "missing_timeseries": QCCode("no time series file", "atlas"),
    "too_few_volumes": QCCode("too few volumes", "atlas", "volumes", "min volumes"),
    "non_finite": QCCode("NaN or inf in an ROI's time series", "atlas", "ROI index"),
    "zero_variance_roi": QCCode("ROI with zero variance (coverage)", "atlas", "ROI index"),
    "non_finite_connectivity": QCCode("non-finite connectivity", "atlas"),
    "missing_map": QCCode("no map file", "metric"),
    "excluded_by_release": QCCode("excluded when the release was made (coordinator)", "none"),
}
#: Columns of ``qc.parquet`` (``mean_fd`` optional) and of ``qc_reasons.parquet``.
QC_COLUMNS = ("subject_key", "included", "reason_codes", "mean_fd")
QC_REASON_COLUMNS = ("subject_key", "code", "field", "value", "threshold")
REASON_SEPARATOR = ";"


def empty_qc_reasons() -> pd.DataFrame:
    """A ``qc_reasons`` table without rows, with the contract's dtypes."""
    return pd.DataFrame(
        {
            "subject_key": pd.Series(dtype=object),
            "code": pd.Series(dtype=object),
            "field": pd.Series(dtype=object),
            "value": pd.Series(dtype=float),
            "threshold": pd.Series(dtype=float),
        }
    )


def join_codes(codes: Iterable[str]) -> str:
    """The ``reason_codes`` cell: distinct codes, sorted, ``;``-joined."""
    return REASON_SEPARATOR.join(sorted(set(codes)))


def _check_field(code: str, field: object, where: str, keys: pd.Series, i: int) -> None:
    kind = QC_CODES[code].field
    ok = isinstance(field, str) and (
        (kind == "phenotype" and field in PHENOTYPE_COLUMNS)
        or (kind in ("atlas", "metric") and bool(NAME_RE.fullmatch(field)) and ".." not in field)
        or (kind == "none" and field == "")
    )
    if not ok:
        raise ContractError(
            f"{where}: column 'field' of {key_prefix(keys, i)} is not a valid {kind} "
            f"name for code {code!r}"
        )


def check_qc_tables(
    qc: pd.DataFrame,
    reasons: pd.DataFrame,
    where: tuple[str, str] = ("qc.parquet", "qc_reasons.parquet"),
) -> None:
    """Check a bundle's QC table and its long-form reasons table.

    ``qc`` has one row per subject of the site's phenotype table
    (:data:`QC_COLUMNS`); ``reasons`` one row per exclusion reason
    (:data:`QC_REASON_COLUMNS`). Codes must be in :data:`QC_CODES`, fields
    controlled names, value and threshold numbers; a subject is excluded if
    and only if it has reasons, and ``reason_codes`` lists exactly its codes.

    Raises
    ------
    ContractError
        Naming the file, the column and the subject key prefix.
    """
    qc_file, reasons_file = where
    check_columns(qc, QC_COLUMNS, QC_COLUMNS[:3], qc_file)
    check_key_column(qc["subject_key"], qc_file)
    keys = qc["subject_key"]
    if keys.duplicated().any():
        i = int(np.flatnonzero(keys.duplicated().to_numpy())[0])
        raise ContractError(f"{qc_file}: column 'subject_key' repeats {key_prefix(keys, i)}")
    if not pd.api.types.is_bool_dtype(qc["included"]):
        raise ContractError(f"{qc_file}: column 'included' must be boolean")
    if "mean_fd" in qc.columns:
        if not pd.api.types.is_numeric_dtype(qc["mean_fd"]):
            raise ContractError(f"{qc_file}: column 'mean_fd' must hold numbers")
    check_columns(reasons, QC_REASON_COLUMNS, QC_REASON_COLUMNS, reasons_file)
    check_key_column(reasons["subject_key"], reasons_file)
    rkeys = reasons["subject_key"]
    unknown = ~rkeys.isin(set(keys))
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ContractError(
            f"{reasons_file}: column 'subject_key': {key_prefix(rkeys, i)} is not in {qc_file}"
        )
    for column in ("value", "threshold"):
        if not pd.api.types.is_numeric_dtype(reasons[column]) or pd.api.types.is_bool_dtype(
            reasons[column]
        ):
            raise ContractError(f"{reasons_file}: column '{column}' must hold numbers")
    for i, (code, field) in enumerate(zip(reasons["code"], reasons["field"], strict=True)):
        if code not in QC_CODES:
            raise ContractError(
                f"{reasons_file}: column 'code' of {key_prefix(rkeys, i)} is not a QC code "
                f"({', '.join(QC_CODES)})"
            )
        _check_field(code, field, reasons_file, rkeys, i)
    codes = reasons.groupby("subject_key", sort=False)["code"].agg(join_codes)
    for i, (key, included, joined) in enumerate(
        zip(keys, qc["included"], qc["reason_codes"], strict=True)
    ):
        expected = codes.get(key, "")
        if not isinstance(joined, str) or joined != expected:
            raise ContractError(
                f"{qc_file}: column 'reason_codes' of {key_prefix(keys, i)} does not list "
                f"its codes in {reasons_file} ({expected!r})"
            )
        if bool(included) == bool(expected):
            raise ContractError(
                f"{qc_file}: column 'included' of {key_prefix(keys, i)} contradicts its "
                "reason codes (excluded if and only if it has reasons)"
            )


def check_included(qc: pd.DataFrame, subjects: pd.DataFrame) -> None:
    """The included subjects of ``qc.parquet`` are exactly those of ``subjects.parquet``."""
    included = set(qc.loc[qc["included"].astype(bool), "subject_key"])
    listed = set(subjects["subject_key"])
    if included != listed:
        odd = sorted(included ^ listed)[0]
        raise ContractError(
            f"qc.parquet: column 'included' disagrees with subjects.parquet for subject "
            f"{str(odd)[:12]}..."
        )

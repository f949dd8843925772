"""Checks shared by every table of a bundle: column sets, subject keys, network summaries.

Part of the site–coordinator contract (:mod:`sites.contract` re-exports the
public names): the column-set rule, the subject-key rule and the way a message
names a subject (a key prefix, never the whole key) are defined here once and
used by :mod:`sites.phenotype_rules`, :mod:`sites.qc_codes` and
:mod:`sites.atlas_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

from sites.naming import ContractError, check_name

#: A subject key: HMAC-SHA256 in lowercase hex.
SUBJECT_KEY_RE = re.compile(r"[0-9a-f]{64}")


def key_prefix(keys: pd.Series | None, i: int) -> str:
    """How a message names row ``i``: a subject key prefix, or the row number without keys."""
    if keys is None:
        return f"row {i}"
    return f"subject {str(keys.iloc[i])[:12]}..."


def check_key_column(values: pd.Series, where: str) -> None:
    """Every value of a ``subject_key`` column is a pseudonym (:data:`SUBJECT_KEY_RE`)."""
    for i, value in enumerate(values):
        if not isinstance(value, str) or not SUBJECT_KEY_RE.fullmatch(value):
            raise ContractError(
                f"{where}: column 'subject_key' row {i} holds {str(value)[:16]!r}..., "
                "not a pseudonym (64 lowercase hex)"
            )


def check_columns(
    df: pd.DataFrame,
    allowed: tuple[str, ...],
    required: Iterable[str],
    where: str,
    hint: str = "",
) -> None:
    """Every column of ``df`` is in ``allowed`` and every ``required`` one is present.

    ``hint`` replaces the list of allowed columns in the message.
    """
    for column in df.columns:
        if not isinstance(column, str) or column not in allowed:
            raise ContractError(
                f"{where}: column {str(column)[:64]!r} is not allowed "
                f"({hint or 'allowed: ' + ', '.join(allowed)})"
            )
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ContractError(f"{where}: missing required column(s) {missing}")


def check_network_table(df: pd.DataFrame, where: str) -> None:
    """Check a network summaries table: ``subject_key`` then float columns with valid names."""
    if "subject_key" in df.columns:
        check_key_column(df["subject_key"], where)
    for column in df.columns:
        if column == "subject_key":
            continue
        check_name(column, f"{where}: column")
        values = df[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            raise ContractError(f"{where}: column '{column}' must hold numbers")

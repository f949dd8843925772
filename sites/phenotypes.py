"""Phenotype tables: read a site's table and map it to canonical columns.

Tables are CSV, TSV (BIDS ``participants.tsv`` included, ``n/a`` is missing)
or XLSX. The site config maps source columns to canonical names and source
codes to canonical values (``DX_GROUP`` -> ``dx`` with ``{1: MDD, 2: HC}``).
Values are compared as text, and integral numbers are written without a
decimal part, so a code ``1`` matches ``1``, ``1.0`` and ``"1"``.

Only canonical columns and explicitly allow-listed extra columns leave the
site; an allow-listed column holding dates or free text is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sites.config import PhenotypeConfig

NUMERIC = ("age", "mean_fd", "education_years", "hamd")
CODED = {"sex": ("M", "F"), "episode": ("first", "recurrent"), "medication": ("naive", "treated")}
MAX_CATEGORIES = 12
MAX_CATEGORY_LENGTH = 24


class PhenotypeError(ValueError):
    """A phenotype table that cannot be used; the message names file, column, subject."""


@dataclass
class Phenotypes:
    """Canonical phenotypes of a site and per-subject problems found on the way.

    Attributes
    ----------
    table : DataFrame
        Index ``subject_id`` (the site's own identifiers), canonical columns
        and allow-listed extras.
    problems : dict
        subject_id -> list of reasons (unknown codes, missing values); quality
        control turns these into recorded exclusions.
    """

    table: pd.DataFrame
    problems: dict[str, list[str]] = field(default_factory=dict)


def read_table(path: str | Path, sheet: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/XLSX table with every cell as text (keeps leading zeros)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm"):
            table = pd.read_excel(path, sheet_name=sheet or 0, dtype=str)
        elif suffix in (".tsv", ".tab"):
            table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a"])
        elif suffix == ".csv":
            table = pd.read_csv(path, dtype=str, na_values=["n/a"])
        else:
            raise PhenotypeError(f"{path}: unknown phenotype table format (use .csv, .tsv, .xlsx)")
    except FileNotFoundError as exc:
        raise PhenotypeError(f"{path}: phenotype table not found") from exc
    except PhenotypeError:
        raise
    except Exception as exc:  # parser errors
        raise PhenotypeError(f"{path}: cannot read phenotype table ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _as_code(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
        return None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def load_phenotypes(config: PhenotypeConfig, path: Path) -> Phenotypes:
    """Read the phenotype table at ``path`` and map it to canonical columns.

    Raises
    ------
    PhenotypeError
        Missing source columns, missing or duplicate subject IDs, an
        allow-listed column with dates or free text.
    """
    raw = read_table(path, config.sheet)
    missing = [c for c in [*config.columns, *config.allow] if c not in raw.columns]
    if missing:
        raise PhenotypeError(f"{path}: column(s) {missing} not found (have {list(raw.columns)})")
    target = {canonical: source for source, canonical in config.columns.items()}
    ids = raw[target["subject_id"]].map(_as_code)
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0]) + 2
        raise PhenotypeError(f"{path}: row {row} has no subject ID in '{target['subject_id']}'")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise PhenotypeError(
            f"{path}: duplicate subject ID(s) {sorted(set(duplicated))[:5]} in "
            f"'{target['subject_id']}'"
        )
    out = pd.DataFrame(index=pd.Index(ids.to_numpy(dtype=str), name="subject_id"))
    problems: dict[str, list[str]] = {}

    def note(subject: str, reason: str) -> None:
        problems.setdefault(subject, []).append(reason)

    for canonical, source in target.items():
        if canonical == "subject_id":
            continue
        column = raw[source].to_numpy()
        if canonical in NUMERIC:
            out[canonical] = _numeric(column, out.index, source, canonical, note)
        else:
            out[canonical] = _coded(column, out.index, source, canonical, config, note)
    for extra in config.allow:
        if extra in config.columns:
            raise PhenotypeError(f"{path}: column '{extra}' is both mapped and allow-listed")
        out[extra] = _allowed_extra(raw[extra], path, extra)
    return Phenotypes(table=out, problems=problems)


def _numeric(column, subjects, source, canonical, note) -> np.ndarray:
    values = np.full(len(column), np.nan)
    for i, (subject, value) in enumerate(zip(subjects, column, strict=True)):
        code = _as_code(value)
        if code is None:
            if canonical == "age":
                note(subject, f"{canonical}: missing value in '{source}'")
            continue
        try:
            values[i] = float(code)
        except ValueError:
            note(subject, f"{canonical}: '{code}' in '{source}' is not a number")
    return values


def _coded(column, subjects, source, canonical, config: PhenotypeConfig, note) -> list:
    mapping = {str(k): v for k, v in config.values.get(canonical, {}).items()}
    allowed = CODED.get(canonical)
    if canonical == "dx":
        allowed = tuple(dict.fromkeys(mapping.values())) or None
    out: list[str | None] = []
    for subject, value in zip(subjects, column, strict=True):
        code = _as_code(value)
        label = mapping.get(code, code) if code is not None else None
        if label is None:
            if canonical in ("dx", "sex"):
                note(subject, f"{canonical}: missing value in '{source}'")
        elif allowed is not None and label not in allowed:
            note(subject, f"{canonical}: code '{code}' in '{source}' not in {list(allowed)}")
            label = None
        out.append(label)
    return out


def _allowed_extra(series: pd.Series, path: Path, name: str) -> pd.Series:
    present = series.dropna().astype(str).str.strip()
    numeric = pd.to_numeric(present, errors="coerce")
    if numeric.notna().all():
        return pd.to_numeric(series, errors="coerce").astype(float).to_numpy()
    looks_like_date = pd.to_datetime(present, errors="coerce", format="mixed").notna().mean()
    if looks_like_date > 0.5:
        raise PhenotypeError(f"{path}: column '{name}' holds dates; dates may not leave the site")
    if present.nunique() > MAX_CATEGORIES or present.str.len().max() > MAX_CATEGORY_LENGTH:
        raise PhenotypeError(
            f"{path}: column '{name}' looks like free text (more than {MAX_CATEGORIES} "
            f"distinct values or values longer than {MAX_CATEGORY_LENGTH} characters); "
            "free text may not leave the site"
        )
    return series.to_numpy()

"""Phenotype tables: read a site's table and map it to canonical columns.

Tables are CSV, TSV (BIDS ``participants.tsv`` included, ``n/a`` is missing)
or XLSX. The site config maps source columns to canonical names and source
codes to canonical values (``DX_GROUP`` -> ``dx`` with ``{1: MDD, 2: HC}``).
Values are compared as text, and integral numbers are written without a
decimal part, so a code ``1`` matches ``1``, ``1.0`` and ``"1"``.

Only canonical columns and explicitly allow-listed extra columns leave the
site; an allow-listed column holding dates or free text is refused. The
column types, codes and plausible ranges are those of :mod:`sites.contract`,
which the coordinator applies again at ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sites.config import PhenotypeConfig
from sites.contract import PHENOTYPE_COLUMNS, ContractError, check_extra_column
from sites.qc import Reason

NUMERIC = tuple(n for n, c in PHENOTYPE_COLUMNS.items() if c.kind == "number")
CODED = {n: c.codes for n, c in PHENOTYPE_COLUMNS.items() if c.kind == "code"}


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
        subject_id -> list of :class:`sites.qc.Reason` (unknown codes, missing
        or implausible values); quality control turns these into recorded
        exclusions.
    """

    table: pd.DataFrame
    problems: dict[str, list[Reason]] = field(default_factory=dict)
    codes: dict[str, CodeUse] = field(default_factory=dict)


@dataclass
class CodeUse:
    """How the codes of one coded source column met the config's value map.

    Attributes
    ----------
    source : str
        The source column.
    seen : dict
        Code -> number of subjects holding it (empty cells not counted).
    mapped : dict
        The config's value map of the column (code -> label).
    unmapped : int
        Subjects whose code maps to no allowed label.
    labels : dict
        Allowed label -> number of subjects mapped to it.
    """

    source: str
    seen: dict[str, int] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)
    unmapped: int = 0
    labels: dict[str, int] = field(default_factory=dict)

    def describe(self, canonical: str) -> str:
        seen = ", ".join(f"{c!r} ({n})" for c, n in sorted(self.seen.items()))
        mapped = ", ".join(f"{c!r} -> {label}" for c, label in sorted(self.mapped.items()))
        return (
            f"column '{self.source}' ({canonical}): codes seen {seen or 'none'} (subjects); "
            f"codes mapped {mapped or 'none (codes used as labels)'}"
        )


def check_code_maps(phen: Phenotypes, dx_groups: tuple[str, str], where: Path) -> None:
    """Refuse a value map that leaves most subjects unmapped or puts all in one group.

    Raises
    ------
    PhenotypeError
        More than half the subjects with a code in a coded column are unmapped,
        or some diagnosis codes are unmapped and every mapped subject falls in
        one of ``dx_groups``; the message lists the codes seen and the codes
        mapped. Set ``[phenotypes] accept_unmapped_codes = true`` (or pass
        ``--accept-unmapped-codes``) to compute anyway.
    """
    hint = (
        "; fix [phenotypes.values] in the site config, or set [phenotypes] "
        "accept_unmapped_codes = true (--accept-unmapped-codes) if this is intended"
    )
    for canonical, use in phen.codes.items():
        total = sum(use.seen.values())
        if total and use.unmapped * 2 > total:
            raise PhenotypeError(
                f"{where}: {use.unmapped} of {total} subjects have a {canonical} code that is "
                f"not mapped; {use.describe(canonical)}{hint}"
            )
        groups = [g for g in dx_groups if use.labels.get(g)]
        if canonical == "dx" and use.unmapped and len(groups) == 1:
            raise PhenotypeError(
                f"{where}: every mapped subject is {groups[0]} and {use.unmapped} subjects have "
                f"an unmapped dx code; {use.describe(canonical)}{hint}"
            )


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
    problems: dict[str, list[Reason]] = {}
    codes: dict[str, CodeUse] = {}

    def note(subject: str, reason: Reason) -> None:
        problems.setdefault(subject, []).append(reason)

    for canonical, source in target.items():
        if canonical == "subject_id":
            continue
        column = raw[source].to_numpy()
        if canonical in NUMERIC:
            out[canonical] = _numeric(column, out.index, source, canonical, note)
        else:
            codes[canonical] = CodeUse(source)
            out[canonical] = _coded(column, out.index, codes[canonical], canonical, config, note)
    for extra in config.allow:
        if extra in config.columns:
            raise PhenotypeError(f"{path}: column '{extra}' is both mapped and allow-listed")
        out[extra] = _allowed_extra(raw[extra], path, extra)
    return Phenotypes(table=out, problems=problems, codes=codes)


def _numeric(column, subjects, source, canonical, note) -> np.ndarray:
    spec = PHENOTYPE_COLUMNS[canonical]
    values = np.full(len(column), np.nan)
    for i, (subject, value) in enumerate(zip(subjects, column, strict=True)):
        code = _as_code(value)
        if code is None:
            if spec.required:
                note(subject, Reason("missing_value", canonical, detail=f"empty '{source}'"))
            continue
        try:
            values[i] = float(code)
        except ValueError:
            text = f"{canonical}: {code!r} in '{source}' is not a number"
            note(subject, Reason("not_a_number", canonical, detail=text))
            continue
        _plausible(subject, values[i], canonical, source, note)
    return values


def _plausible(subject: str, value: float, canonical: str, source: str, note) -> None:
    low, high = PHENOTYPE_COLUMNS[canonical].plausible
    if not low <= value <= high:
        bound = low if value < low else high
        text = f"{canonical}: {value:g} in '{source}' outside the plausible [{low:g}, {high:g}]"
        note(subject, Reason("implausible_value", canonical, float(value), bound, text))


def _coded(column, subjects, use: CodeUse, canonical, config: PhenotypeConfig, note) -> list:
    mapping = {str(k): v for k, v in config.values.get(canonical, {}).items()}
    use.mapped = mapping
    source = use.source
    allowed = CODED.get(canonical)
    if canonical == "dx":
        allowed = (config.dx_case, config.dx_control)
    out: list[str | None] = []
    for subject, value in zip(subjects, column, strict=True):
        code = _as_code(value)
        label = mapping.get(code, code) if code is not None else None
        if code is not None:
            use.seen[code] = use.seen.get(code, 0) + 1
        if label is None:
            if PHENOTYPE_COLUMNS[canonical].required:
                note(subject, Reason("missing_value", canonical, detail=f"empty '{source}'"))
        elif label not in allowed:
            text = f"{canonical}: code {code!r} in '{source}' not in {list(allowed)}"
            if mapping:
                text += f" (codes mapped: {sorted(mapping)})"
            note(subject, Reason("unknown_code", canonical, detail=text))
            use.unmapped += 1
            label = None
        else:
            use.labels[label] = use.labels.get(label, 0) + 1
        out.append(label)
    return out


def _allowed_extra(series: pd.Series, path: Path, name: str) -> np.ndarray:
    """The allow-listed column as numbers or stripped codes, checked by the contract."""
    present = series.dropna().astype(str).str.strip()
    if pd.to_numeric(present, errors="coerce").notna().all():
        values = pd.to_numeric(series, errors="coerce").astype(float)
    else:
        values = series.where(series.isna(), series.astype(str).str.strip())
    try:
        check_extra_column(values, name, where=str(path))
    except ContractError as exc:
        raise PhenotypeError(str(exc)) from exc
    return values.to_numpy()

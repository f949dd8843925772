"""The site–coordinator contract: every rule both sides apply, defined once.

The site agent applies these rules before it signs a bundle; the coordinator
imports this module and applies the same rules at ingest, so a value the site
accepts is never refused at ingest, and the reverse.

This module holds:

- naming rules for everything a manifest names (sites, atlases, metrics,
  network columns, files inside a bundle);
- the phenotype columns a bundle may carry (:data:`PHENOTYPE_COLUMNS`), each
  with its type, unit, allowed codes or plausible range, and whether it is
  required; the allow-list rule for extra columns (no dates, no free text,
  no identifying names);
- the QC reason codes (:data:`QC_CODES`) and the layout of ``qc.parquet`` and
  ``qc_reasons.parquet``;
- the table checks both sides run: :func:`check_subjects_table`,
  :func:`check_qc_tables`, :func:`check_network_table`, :func:`check_manifest`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from sites.naming import NAME_PATTERN, NAME_RE, ContractError, check_name  # noqa: F401 (re-exported)

#: Folders a bundle may hold files in (besides its top level).
BUNDLE_FOLDERS = ("maps", "atlases")
#: Most members a bundle archive may hold (a bundle has a few dozen files).
MAX_BUNDLE_FILES = 1000


def check_bundle_path(value: object, what: str = "manifest.json: file") -> str:
    """Return ``value`` if it is a valid relative file path inside a bundle.

    A path is one name, or a folder of :data:`BUNDLE_FOLDERS` and one name.
    """
    if not isinstance(value, str):
        raise ContractError(f"{what} {value!r} is not a string")
    parts = PurePosixPath(value).parts
    if value != PurePosixPath(value).as_posix() or not 1 <= len(parts) <= 2:
        raise ContractError(f"{what} {value[:80]!r} is not a valid bundle path")
    if len(parts) == 2 and parts[0] not in BUNDLE_FOLDERS:
        raise ContractError(
            f"{what} {value[:80]!r} is not a valid bundle path "
            f"(folders allowed: {', '.join(BUNDLE_FOLDERS)})"
        )
    for part in parts:
        check_name(part, what)
    return value


# --------------------------------------------------------------------------- manifest layout

#: Largest ``manifest.json`` either side reads (a real one is a few kB).
MAX_MANIFEST_BYTES = 1024**2
#: Largest ``manifest.sig`` / ``signature.json`` (an Ed25519 signature and a PEM key).
MAX_SIGNER_BYTES = 64 * 1024
#: Files every bundle lists.
REQUIRED_FILES = ("subjects.parquet", "qc.parquet")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def parse_manifest(data: bytes, what: str = "manifest.json") -> dict:
    """Parse manifest bytes into a JSON object, refusing oversized or deeply nested ones.

    Parameters
    ----------
    data : bytes
        The exact ``manifest.json`` bytes.
    what : str
        Where the manifest comes from, for messages.

    Raises
    ------
    ContractError
        Larger than :data:`MAX_MANIFEST_BYTES`, not JSON, nested too deeply, or
        not a JSON object.
    """
    import json

    if len(data) > MAX_MANIFEST_BYTES:
        raise ContractError(
            f"{what}: {len(data)} bytes, larger than the limit of {MAX_MANIFEST_BYTES}"
        )
    try:
        manifest = json.loads(data)
    except RecursionError as exc:
        raise ContractError(f"{what}: nested too deeply to be a manifest") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError(f"{what}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ContractError(f"{what}: not a JSON object")
    return manifest


def _check_version_type(manifest: Mapping) -> None:
    version = manifest.get("format_version")
    if version is not None and not isinstance(version, str):
        kind = "number" if isinstance(version, int | float) else type(version).__name__
        raise ContractError(
            f"manifest.json: format_version must be a string, got the {kind} {version!r}"
        )


def check_manifest_files(manifest: Mapping) -> dict[str, int]:
    """Check the manifest's file table and that every named atlas and map has its files.

    Every key of ``files`` must be a valid bundle path (:func:`check_bundle_path`)
    with a SHA-256 and a size; every name under ``connectivity``, ``atlases`` and
    ``maps`` must be a valid name (:func:`check_name`) whose files are listed.

    Parameters
    ----------
    manifest : mapping
        A parsed manifest (:func:`parse_manifest`).

    Returns
    -------
    dict
        Bundle path -> declared size in bytes.

    Raises
    ------
    ContractError
        Naming the field or file and the rule.
    """
    _check_version_type(manifest)
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not files:
        raise ContractError("manifest.json: no 'files' table")
    if len(files) > MAX_BUNDLE_FILES:
        raise ContractError(f"manifest.json: lists {len(files)} files (at most {MAX_BUNDLE_FILES})")
    sizes = {}
    for path, entry in files.items():
        check_bundle_path(path)
        if not isinstance(entry, Mapping):
            raise ContractError(f"manifest.json: files entry of {path!r} is not an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ContractError(f"manifest.json: size of {path!r} is not a byte count")
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise ContractError(f"manifest.json: sha256 of {path!r} is not a SHA-256 hex digest")
        sizes[path] = size
    for name in REQUIRED_FILES:
        if name not in files:
            raise ContractError(f"manifest.json: required file {name} is not listed")
    _check_named_files(manifest, files)
    _check_atlas_files(manifest, files)
    return sizes


def atlas_path(name: str) -> str:
    """The bundle path of the table of atlas ``name``: ``atlases/<name>.tsv``."""
    return f"atlases/{name}.tsv"


def _check_atlas_files(manifest: Mapping, files: Mapping) -> None:
    """Each ``atlases/<name>.tsv`` belongs to a connectivity entry that pins its SHA-256."""
    connectivity = manifest.get("connectivity", {})
    for path in files:
        if path.startswith("atlases/"):
            name = path[len("atlases/") : -len(".tsv")] if path.endswith(".tsv") else ""
            if name not in connectivity:
                raise ContractError(
                    f"manifest.json: {path!r} is not the atlas table of a connectivity entry"
                )
    for name, entry in connectivity.items():
        digest = entry.get("atlas_sha256") if isinstance(entry, Mapping) else None
        if digest is None:
            continue
        listed = files.get(atlas_path(name))
        if not isinstance(listed, Mapping) or listed.get("sha256") != digest:
            raise ContractError(
                f"manifest.json: connectivity entry {name!r} pins atlas_sha256 "
                f"{str(digest)[:16]}... but {atlas_path(name)} is not listed with that hash"
            )


def _check_named_files(manifest: Mapping, files: Mapping) -> None:
    """Names under connectivity/atlases/maps are valid and their files listed."""
    needed = {
        "connectivity": ("connectivity_{}.parquet",),
        "atlases": (),
        "maps": ("maps/{}.npy", "maps/{}_mask.nii.gz"),
    }
    for section, patterns in needed.items():
        entries = manifest.get(section, {})
        if section == "atlases" and isinstance(entries, list):
            entries = {}  # a list of atlas descriptions: names are checked elsewhere
        if not isinstance(entries, Mapping):
            raise ContractError(f"manifest.json: {section} must be an object")
        for name in entries:
            check_name(name, f"manifest.json: {section} name")
            for pattern in patterns:
                if pattern.format(name) not in files:
                    raise ContractError(
                        f"manifest.json: {section} entry {name!r} has no file "
                        f"{pattern.format(name)} listed in 'files'"
                    )


# --------------------------------------------------------------------------- phenotypes

#: A subject key: HMAC-SHA256 in lowercase hex.
SUBJECT_KEY_RE = re.compile(r"[0-9a-f]{64}")


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


def _key_prefix(keys: pd.Series | None, i: int) -> str:
    if keys is None:
        return f"row {i}"
    return f"subject {str(keys.iloc[i])[:12]}..."


def looks_like_date(value: object) -> bool:
    """Whether ``value`` is a date, or a text holding a date."""
    if isinstance(value, date | datetime | pd.Timestamp | np.datetime64):
        return True
    return isinstance(value, str) and bool(_DATE_RE.search(value))


def _check_key_column(values: pd.Series, where: str) -> None:
    for i, value in enumerate(values):
        if not isinstance(value, str) or not SUBJECT_KEY_RE.fullmatch(value):
            raise ContractError(
                f"{where}: column 'subject_key' row {i} holds {str(value)[:16]!r}..., "
                "not a pseudonym (64 lowercase hex)"
            )


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
            f"{where}: column '{column}' has no value for {_key_prefix(keys, i)} (required)"
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
            f"{where}: column '{column}' = {numbers[i]!r} of {_key_prefix(keys, i)} is "
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
                    f"{where}: column '{column}' has no value for {_key_prefix(keys, i)} (required)"
                )
            continue
        if value not in allowed:
            raise ContractError(
                f"{where}: column '{column}' of {_key_prefix(keys, i)} holds a value that is "
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
    _check_columns(
        df,
        (*PHENOTYPE_COLUMNS, *sorted(extras)),
        REQUIRED_COLUMNS,
        where,
        f"canonical columns: {', '.join(PHENOTYPE_COLUMNS)}; extras must be allow-listed "
        "by the site",
    )
    _check_key_column(df["subject_key"], where)
    keys = df["subject_key"]
    if keys.duplicated().any():
        i = int(np.flatnonzero(keys.duplicated().to_numpy())[0])
        raise ContractError(f"{where}: column 'subject_key' repeats {_key_prefix(keys, i)}")
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


# --------------------------------------------------------------------------- QC


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


def _check_columns(
    df: pd.DataFrame, allowed: tuple[str, ...], required, where: str, hint: str = ""
) -> None:
    for column in df.columns:
        if not isinstance(column, str) or column not in allowed:
            raise ContractError(
                f"{where}: column {str(column)[:64]!r} is not allowed "
                f"({hint or 'allowed: ' + ', '.join(allowed)})"
            )
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ContractError(f"{where}: missing required column(s) {missing}")


def _check_field(code: str, field: object, where: str, keys: pd.Series, i: int) -> None:
    kind = QC_CODES[code].field
    ok = isinstance(field, str) and (
        (kind == "phenotype" and field in PHENOTYPE_COLUMNS)
        or (kind in ("atlas", "metric") and bool(NAME_RE.fullmatch(field)) and ".." not in field)
        or (kind == "none" and field == "")
    )
    if not ok:
        raise ContractError(
            f"{where}: column 'field' of {_key_prefix(keys, i)} is not a valid {kind} "
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
    _check_columns(qc, QC_COLUMNS, QC_COLUMNS[:3], qc_file)
    _check_key_column(qc["subject_key"], qc_file)
    keys = qc["subject_key"]
    if keys.duplicated().any():
        i = int(np.flatnonzero(keys.duplicated().to_numpy())[0])
        raise ContractError(f"{qc_file}: column 'subject_key' repeats {_key_prefix(keys, i)}")
    if not pd.api.types.is_bool_dtype(qc["included"]):
        raise ContractError(f"{qc_file}: column 'included' must be boolean")
    if "mean_fd" in qc.columns:
        if not pd.api.types.is_numeric_dtype(qc["mean_fd"]):
            raise ContractError(f"{qc_file}: column 'mean_fd' must hold numbers")
    _check_columns(reasons, QC_REASON_COLUMNS, QC_REASON_COLUMNS, reasons_file)
    _check_key_column(reasons["subject_key"], reasons_file)
    rkeys = reasons["subject_key"]
    unknown = ~rkeys.isin(set(keys))
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ContractError(
            f"{reasons_file}: column 'subject_key': {_key_prefix(rkeys, i)} is not in {qc_file}"
        )
    for column in ("value", "threshold"):
        if not pd.api.types.is_numeric_dtype(reasons[column]) or pd.api.types.is_bool_dtype(
            reasons[column]
        ):
            raise ContractError(f"{reasons_file}: column '{column}' must hold numbers")
    for i, (code, field) in enumerate(zip(reasons["code"], reasons["field"], strict=True)):
        if code not in QC_CODES:
            raise ContractError(
                f"{reasons_file}: column 'code' of {_key_prefix(rkeys, i)} is not a QC code "
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
                f"{qc_file}: column 'reason_codes' of {_key_prefix(keys, i)} does not list "
                f"its codes in {reasons_file} ({expected!r})"
            )
        if bool(included) == bool(expected):
            raise ContractError(
                f"{qc_file}: column 'included' of {_key_prefix(keys, i)} contradicts its "
                "reason codes (excluded if and only if it has reasons)"
            )


def check_network_table(df: pd.DataFrame, where: str) -> None:
    """Check a network summaries table: ``subject_key`` then float columns with valid names."""
    if "subject_key" in df.columns:
        _check_key_column(df["subject_key"], where)
    for column in df.columns:
        if column == "subject_key":
            continue
        check_name(column, f"{where}: column")
        values = df[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            raise ContractError(f"{where}: column '{column}' must hold numbers")


#: One ROI label of an atlas table: a letter or digit, then up to 79 letters, digits,
#: spaces or ``_ . , : ' ( ) / + -`` (``"Left Frontal Pole"``); never a tab or newline.
ATLAS_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.,:'()/+-]{0,79}")
#: Columns of an atlas table ``atlases/<name>.tsv`` (``x, y, z`` optional, together).
ATLAS_COLUMNS = ("index", "label", "network", "dmn", "x", "y", "z")


def n_rois_of(n_edges: int) -> int:
    """The number of ROIs whose upper triangle has ``n_edges`` edges (or -1 if none)."""
    n = int(round((1 + math.sqrt(1 + 8 * n_edges)) / 2))
    return n if n * (n - 1) // 2 == n_edges else -1


def check_atlas_table(table: pd.DataFrame, n_edges: int | None, where: str) -> None:
    """Check an atlas table (``atlases/<name>.tsv``) of a bundle.

    Parameters
    ----------
    table : DataFrame
        Columns :data:`ATLAS_COLUMNS` (``x, y, z`` optional); one row per ROI.
    n_edges : int or None
        Edges of the atlas's connectivity; the table must have the ROIs they imply.
    where : str
        The file, for messages.

    Raises
    ------
    ContractError
        ``index`` not 1..n in order, a label outside :data:`ATLAS_LABEL_RE`, a
        network that is not a valid name, ``dmn`` not 0/1, coordinates not
        finite numbers, or a row count that does not match ``n_edges``.
    """
    required = ATLAS_COLUMNS[:4]
    coords = [c for c in ("x", "y", "z") if c in table.columns]
    if coords and len(coords) != 3:
        raise ContractError(f"{where}: columns x, y, z must come together")
    _check_columns(table, ATLAS_COLUMNS, required, where)
    n = len(table)
    index = pd.to_numeric(table["index"], errors="coerce").to_numpy()
    if n == 0 or not np.array_equal(index, np.arange(1, n + 1)):
        raise ContractError(f"{where}: column 'index' must be 1..{n} in order")
    if n_edges is not None and n * (n - 1) // 2 != n_edges:
        raise ContractError(
            f"{where}: {n} ROIs but the connectivity has {n_edges} edges "
            f"({n_rois_of(n_edges)} ROIs)"
        )
    for i, label in enumerate(table["label"]):
        if not isinstance(label, str) or not ATLAS_LABEL_RE.fullmatch(label):
            raise ContractError(
                f"{where}: label of ROI {i + 1} {str(label)[:80]!r} is not a valid atlas "
                "label (1-80 letters, digits, spaces or _ . , : ' ( ) / + -)"
            )
    for i, network in enumerate(table["network"]):
        check_name(network, f"{where}: network of ROI {i + 1}")
    if not table["dmn"].isin([0, 1]).all():
        raise ContractError(f"{where}: column 'dmn' must hold 0 or 1")
    if coords:
        values = table[coords].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ContractError(f"{where}: columns x, y, z must hold finite numbers")


#: Top-level keys a manifest may hold; any other is refused (it could carry free text).
MANIFEST_KEYS = frozenset(
    {
        "format_version", "site_id", "created", "software", "dx_labels", "connectivity",
        "motion", "qc_rules", "maps", "pseudonymization", "phenotype_columns", "counts", "files",
    }
)  # fmt: skip
#: How subject keys are made; the manifest states it in these exact words.
PSEUDONYMIZATION = "HMAC-SHA256(site secret, '<site_id>:<subject_id>'), hex"
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
#: String values that are not contract names, by manifest path (``*``: any key or index).
_MANIFEST_STRINGS: dict[tuple[str, ...], re.Pattern] = {
    ("created",): re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)?"),
    ("pseudonymization",): re.compile(re.escape(PSEUDONYMIZATION)),
    ("connectivity", "*", "labels", "*"): ATLAS_LABEL_RE,
    ("connectivity", "*", "networks", "*"): ATLAS_LABEL_RE,
    ("connectivity", "*", "columns"): re.compile(r"[0-9]+(-[0-9]+)?( *, *[0-9]+(-[0-9]+)?)*"),
    ("connectivity", "*", "atlas_sha256"): _HEX64_RE,
    ("files", "*", "sha256"): _HEX64_RE,
}


def _string_rule(path: tuple[str, ...]) -> re.Pattern:
    for pattern, rule in _MANIFEST_STRINGS.items():
        same_length = len(pattern) == len(path)
        if same_length and all(p in ("*", q) for p, q in zip(pattern, path, strict=True)):
            return rule
    return NAME_RE


def _check_manifest_values(value: object, path: tuple[str, ...]) -> None:
    """Every key and string of the manifest is a name, or a value of a fixed form."""
    where = "manifest.json: " + ".".join(path)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if path[:1] != ("files",):  # file keys: check_bundle_path
                check_name(key, f"{where} key")
            _check_manifest_values(item, (*path, str(key)))
    elif isinstance(value, list):
        for item in value:
            _check_manifest_values(item, (*path, "*"))
    elif isinstance(value, str):
        rule = _string_rule(path)
        if not rule.fullmatch(value) or (rule is NAME_RE and ".." in value):
            # The value is not echoed: it may be the very free text being refused.
            raise ContractError(f"{where}: not a name or a controlled value")


def check_manifest(manifest: Mapping) -> None:
    """Check the manifest's keys and string values: names, codes and fixed forms only.

    No free text can travel in a manifest: unknown top-level keys are refused,
    and every string is a contract name unless its place has a fixed form (a
    timestamp, a hash, an atlas label, an ROI selection).
    """
    unknown = sorted(set(manifest) - MANIFEST_KEYS)
    if unknown:
        key = str(unknown[0])
        shown = repr(key) if NAME_RE.fullmatch(key) else "(not a name)"
        raise ContractError(f"manifest.json: key {shown} is not allowed")
    _check_manifest_values({k: v for k, v in manifest.items() if k != "files"}, ())
    check_name(manifest.get("site_id"), "manifest.json: site_id")
    check_dx_labels(manifest.get("dx_labels"))
    for section in ("connectivity", "maps"):
        entries = manifest.get(section, {})
        if not isinstance(entries, Mapping):
            raise ContractError(f"manifest.json: {section} must be an object")
        for name in entries:
            check_name(name, f"manifest.json: {section} name")
    columns = manifest.get("phenotype_columns", [])
    if not isinstance(columns, list):
        raise ContractError("manifest.json: phenotype_columns must be a list")
    for column in columns:
        check_name(column, "manifest.json: phenotype_columns entry")


def declared_extras(manifest: Mapping) -> list[str]:
    """The allow-listed extra columns a manifest declares (beyond the canonical ones)."""
    return [c for c in manifest.get("phenotype_columns", []) if c not in PHENOTYPE_COLUMNS]


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

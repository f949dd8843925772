"""Manifest rules of the contract: bundle paths, the file table and the manifest's values.

Part of the site–coordinator contract (:mod:`sites.contract` re-exports the
public names): which paths a bundle may hold (:func:`check_bundle_path`), size
limits, :func:`parse_manifest`, the file table (:func:`check_manifest_files`)
and the keys and string values a manifest may carry (:func:`check_manifest`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath

from sites.atlas_rules import ATLAS_LABEL_RE
from sites.naming import NAME_RE, ContractError, check_name
from sites.phenotype_rules import PHENOTYPE_COLUMNS, check_dx_labels

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


# --------------------------------------------------------------------------- manifest values

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

"""Checks of an unpacked bundle at ingest: identity and signature, contract, values.

Second step of ingest (:mod:`consortium.ingest`): the manifest must name the
uploading site and verify with its registered key (:func:`check_identity`); the
tables must satisfy the site-coordinator contract and connectivity and maps
must be finite and plausible (:func:`check_values`); small groups are flagged
(:func:`group_flags`), not refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from consortium.db.models import Site
from consortium.errors import ConfedError
from sites import contract
from sites.bundle import (
    MANIFEST,
    SIGNATURE,
    SUPPORTED_VERSIONS,
    BundleError,
    check_contract,
    verify_manifest_signature,
)

MAX_ABS_Z = 20.0  # |atanh(r)| = 20 means |r| = 1 - 8e-18: a copy of a region, not a correlation


def check_identity(bundle_dir: Path, site: Site) -> tuple[bytes, dict]:
    """The manifest bytes and manifest, once they name ``site`` and verify with its key.

    Raises
    ------
    ConfedError
        ``bad_bundle`` (422), ``site_mismatch`` or ``signature_invalid`` (403),
        ``unsupported_format_version`` (422).
    """
    manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
    try:
        manifest = contract.parse_manifest(manifest_bytes)
    except contract.ContractError as exc:
        raise ConfedError("bad_bundle", str(exc), 422) from exc
    claimed = manifest.get("site_id")
    if claimed != site.id:
        raise ConfedError(
            "site_mismatch",
            f"{MANIFEST}: bundle claims site {claimed!r} but was uploaded by site {site.id}",
            403,
        )
    sig_path = bundle_dir / SIGNATURE
    if not sig_path.is_file():
        raise ConfedError("signature_invalid", f"{SIGNATURE}: missing", 403)
    try:
        verify_manifest_signature(
            manifest_bytes, sig_path.read_bytes(), site.public_key_pem.encode()
        )
    except BundleError as exc:
        raise ConfedError(
            "signature_invalid",
            f"{exc} (not the key registered for site {site.id})",
            403,
        ) from exc
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ConfedError(
            "unsupported_format_version",
            f"{MANIFEST}: format version {version!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})",
            422,
        )
    return manifest_bytes, manifest


def _check_finite(name: str, values: np.ndarray, keys: list[str], bound: float | None) -> None:
    bad = ~np.isfinite(values)
    if bound is not None:
        with np.errstate(invalid="ignore"):
            bad |= np.abs(values) > bound
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        row = int(rows[0])
        col = int(np.flatnonzero(bad[row])[0])
        what = "non-finite" if not np.isfinite(values[row, col]) else f"|value| > {bound}"
        raise ConfedError(
            "bad_values",
            f"{name}: {what} value {values[row, col]!r} for subject {keys[row][:16]}... "
            f"(column {col}; {len(rows)} subject(s) affected)",
            422,
        )


def check_values(bundle) -> dict[str, int]:
    """Contract and value checks beyond the bundle format; returns group counts by label.

    Raises
    ------
    ConfedError
        ``contract_violation`` (422) naming the file and column when a table,
        column or value breaks :mod:`sites.contract`; ``bad_values`` (422) for
        non-finite or implausibly large connectivity and map values.
    """
    try:
        check_contract(bundle)
    except contract.ContractError as exc:
        raise ConfedError("contract_violation", str(exc), 422) from exc
    subjects: pd.DataFrame = bundle.subjects
    if len(subjects) == 0:
        raise ConfedError(
            "no_subjects",
            f"site {bundle.manifest.get('site_id')}: the bundle has 0 included subjects "
            "(subjects.parquet is empty); every subject was excluded by QC at the site",
            422,
        )
    labels = bundle.manifest["dx_labels"]
    key_list = subjects["subject_key"].astype(str).tolist()
    for atlas in sorted(bundle.manifest.get("connectivity", {})):
        edges = bundle.connectivity(atlas)
        _check_finite(f"connectivity_{atlas}.parquet", edges, key_list, MAX_ABS_Z)
        summaries = bundle.network_summaries(atlas).to_numpy(dtype=float)
        _check_finite(f"networks_{atlas}.parquet", summaries, key_list, MAX_ABS_Z)
    for metric in bundle.map_names:
        _, values = bundle.maps(metric)
        _check_finite(f"maps/{metric}.npy", np.asarray(values), key_list, None)
    counts = subjects["dx"].astype(str).value_counts()
    return {str(labels[g]): int(counts.get(str(labels[g]), 0)) for g in ("case", "control")}


def group_flags(group_counts: dict[str, int], minimum: int) -> list[str]:
    """Flags ``small_group:<label>=<n><<minimum>`` for groups below ``minimum``."""
    return [
        f"small_group:{label}={n}<{minimum}" for label, n in group_counts.items() if n < minimum
    ]

"""Bundle format basics: version, reserved file names, errors, hashing and signature.

Shared by the writer (:mod:`sites.bundle_writer`) and the reader
(:mod:`sites.bundle`, which re-exports these names) of submission bundles.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from sites import contract
from sites import keys as site_keys

#: 2.0: QC reasons are contract codes (``qc.parquet`` + ``qc_reasons.parquet``), no
#: ``qc.csv``; 1.0 bundles carried free-text reasons and are no longer accepted.
FORMAT_VERSION = "2.0"
SUPPORTED_VERSIONS = ("2.0",)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNER = "signature.json"
UNLISTED = (MANIFEST, SIGNATURE, SIGNER)


class BundleError(Exception):
    """A bundle that fails a check; the message names the file and the check."""


def sha256_file(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest_signature(
    manifest_bytes: bytes, signature_bytes: bytes, public_key_pem: bytes
) -> None:
    """Check the Ed25519 signature of ``manifest.json``; raise :class:`BundleError`."""
    try:
        key = site_keys.load_public_key(public_key_pem)
    except site_keys.KeyFileError as exc:
        raise BundleError(f"{SIGNER}: public key check failed ({exc})") from exc
    try:
        key.verify(signature_bytes, manifest_bytes)
    except InvalidSignature as exc:
        raise BundleError(
            f"{SIGNATURE}: signature check failed: manifest.json was not signed by key "
            f"{site_keys.fingerprint(key)[:16]}..."
        ) from exc


def check_layout(manifest: dict[str, Any]) -> dict[str, int]:
    """:func:`sites.contract.check_manifest_files` with :class:`BundleError`."""
    try:
        return contract.check_manifest_files(manifest)
    except contract.ContractError as exc:
        raise BundleError(str(exc)) from exc

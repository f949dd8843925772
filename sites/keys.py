"""Ed25519 signing keys of a site.

A site signs the manifest of each bundle with its private key; the
coordinator verifies with the public key registered for that site. Keys are
PEM files (PKCS#8 private, SubjectPublicKeyInfo public). Secret files are
created with permissions 0600 and never overwritten.

References
----------
.. [1] Bernstein D.J. et al. (2012). High-speed high-security signatures.
   Journal of Cryptographic Engineering 2:77-89. RFC 8032 (EdDSA).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class KeyFileError(ValueError):
    """A key file that is missing or not an Ed25519 key."""


def write_private_file(path: Path, data: bytes) -> Path:
    """Create ``path`` with mode 0600 (refusing to overwrite) and write ``data``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite a secret") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    return path


def generate_keypair(private_path: str | Path, public_path: str | Path) -> tuple[Path, Path]:
    """Create an Ed25519 key pair; the private key file gets mode 0600."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(Path(private_path), private_pem)
    public_path = Path(public_path)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public_pem(key.public_key()))
    return Path(private_path), public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: private key not found") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(pem: bytes, source: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyFileError(f"{source}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{source}: not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: Ed25519PublicKey | bytes) -> str:
    """SHA-256 (hex) of the raw 32-byte public key; ``bytes`` input is PEM."""
    if isinstance(key, bytes):
        key = load_public_key(key)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()

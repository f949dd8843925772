"""Member sites: registration with an Ed25519 public key, listing."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.auth import issue_token
from consortium.db.models import Site, Token
from consortium.errors import ConfedError
from sites.contract import ContractError, check_name


def check_site_id(site_id: object) -> str:
    """The contract's name rule (the API schemas apply the same one), as a 422."""
    try:
        return check_name(site_id, "site id")
    except ContractError as err:
        raise ConfedError("bad_site_id", str(err), 422) from err


def check_public_key(pem: str, site_id: str) -> None:
    """Refuse anything but a PEM-encoded Ed25519 public key."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ConfedError(
            "bad_public_key", f"site {site_id}: public key is not valid PEM ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfedError(
            "bad_public_key", f"site {site_id}: public key is {type(key).__name__}, not Ed25519"
        )


def add_site(
    session: Session, site_id: str, name: str, public_key_pem: str, actor: str, days: int = 365
) -> tuple[Site, Token, str]:
    """Register a site and issue its first token (returned in plaintext once)."""
    check_site_id(site_id)
    if session.get(Site, site_id) is not None:
        raise ConfedError("conflict", f"site {site_id} already exists", 409)
    check_public_key(public_key_pem, site_id)
    site = Site(id=site_id, name=name, public_key_pem=public_key_pem)
    session.add(site)
    session.flush()
    token, plaintext = issue_token(session, "site", site_id, label=f"site {site_id}", days=days)
    audit.append(session, actor, "site.add", f"site:{site_id}", {"name": name, "token": token.id})
    return site, token, plaintext


def list_sites(session: Session) -> list[Site]:
    return list(session.execute(select(Site).order_by(Site.id)).scalars())


def get_site(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise ConfedError("not_found", f"site {site_id} not found", 404)
    return site


def set_public_key(session: Session, site_id: str, public_key_pem: str, actor: str) -> Site:
    """Replace a site's signing key (after a compromise or a lost key)."""
    site = get_site(session, site_id)
    check_public_key(public_key_pem, site_id)
    site.public_key_pem = public_key_pem
    audit.append(session, actor, "site.set_key", f"site:{site_id}", {})
    return site

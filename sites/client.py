"""Site-side client of the coordinator: ``confed site submit`` and ``confed site status``.

The coordinator's address and the site's token come from the ``[coordinator]``
table of ``site.toml``::

    [coordinator]
    url = "https://coordinator.example.org"
    token_file = "keys/coordinator.token"   # the token printed by `confed coord site add`

or from ``--url`` / ``--token-file`` / the ``CONFED_COORDINATOR_URL`` and
``CONFED_SITE_TOKEN`` environment variables. Uploads are retried on transient
failures only (a reset or refused connection, a timeout, a 429/502/503/504
answer): this is safe because the coordinator treats an upload of the same
bundle (same manifest hash) as the same submission. Other failures (a URL
without a scheme, an unknown host, TLS against plain HTTP, a 404 from a URL
that ends in ``/api/v1``, any other refusal) are explained at once.

Every answer to an upload (accepted, duplicate or refused) carries a signed
receipt of the coordinator's audit log; ``submit`` keeps each one in
``receipts.jsonl`` next to the config and pins the coordinator's public key at
the first submission (see :mod:`sites.receipts`); ``verify-receipts`` checks
them all against the coordinator's log as it is now.

The commands themselves (``submit_command``, ``status_command``,
``verify_receipts_command``) live in :mod:`sites.client_commands`; this module
holds what they and :mod:`sites.proposals_client` share: the connection, the
uploads, the receipts and the ``--config`` / ``--url`` / ``--token-file`` options.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer

from sites import receipts as rc
from sites.bundle import BundleError, export_bundle, read_bundle

API = "/api/v1"
RETRY_STATUS = {429, 502, 503, 504}
#: Network errors worth retrying: the connection broke or was slow (and refused ones).
TRANSIENT_ERRORS = (
    httpx.TimeoutException,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
MAX_BACKOFF = 60.0


class SubmitError(RuntimeError):
    """A refused or failed upload; the message carries the coordinator's reason."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        receipt: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.receipt = receipt


@dataclass(frozen=True)
class Connection:
    url: str
    token: str
    site_id: str
    root: Path | None = None  # the config's folder: receipts and the pinned key live here


def read_connection(
    config: Path, url: str | None = None, token_file: Path | None = None
) -> Connection:
    """Coordinator URL, token and site id from ``site.toml`` (options override it)."""
    try:
        data = tomllib.loads(Path(config).read_text())
    except FileNotFoundError as exc:
        raise SubmitError(f"{config}: config file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SubmitError(f"{config}: invalid TOML ({exc})") from exc
    site_id = data.get("site_id")
    if not isinstance(site_id, str) or not site_id:
        raise SubmitError(f"{config}: site_id is missing")
    section = data.get("coordinator") or {}
    url = url or os.environ.get("CONFED_COORDINATOR_URL") or section.get("url")
    if not url:
        raise SubmitError(
            f"{config}: no coordinator url (set [coordinator] url, --url or CONFED_COORDINATOR_URL)"
        )
    token = os.environ.get("CONFED_SITE_TOKEN") if token_file is None else None
    if not token:
        path = token_file or section.get("token_file")
        if not path:
            raise SubmitError(
                f"{config}: no site token (set [coordinator] token_file, --token-file "
                "or CONFED_SITE_TOKEN)"
            )
        path = Path(path).expanduser()
        if not path.is_absolute():
            path = Path(config).parent / path
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise SubmitError(f"{path}: cannot read the site token ({exc})") from exc
        if not token:
            raise SubmitError(f"{path}: the token file is empty")
    return Connection(url.rstrip("/"), token, site_id, Path(config).resolve().parent)


def _error_of(response: httpx.Response) -> SubmitError:
    receipt = None
    try:
        answer = response.json()
        body = answer["error"]
        code, message = body["code"], body["message"]
        receipt = answer.get("receipt")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = None, response.text[:500] or response.reason_phrase
    return SubmitError(
        f"coordinator answered {response.status_code}: {message}",
        response.status_code,
        code,
        receipt,
    )


def check_url(url: str) -> None:
    """Refuse a coordinator URL without an http(s) scheme or host, with the fix."""
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise SubmitError(
            f"coordinator url {url!r} has no http:// or https:// scheme and host; "
            "write it in full, e.g. https://coordinator.example.org or http://127.0.0.1:8000"
        )


def _transient(exc: httpx.TransportError) -> bool:
    """A broken or slow connection, or a refused one (the coordinator may be restarting)."""
    refused = isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower()
    return isinstance(exc, TRANSIENT_ERRORS) or refused


def _explain_transport(conn: Connection, exc: httpx.TransportError) -> SubmitError:
    """A final network failure, explained (unknown host, refused, TLS mismatch)."""
    text = str(exc)
    lowered = text.lower()
    host = httpx.URL(conn.url).host
    if any(
        m in lowered
        for m in (
            "name or service not known",
            "nodename nor servname",
            "name resolution",
            "getaddrinfo",
            "no address associated",
        )
    ):
        hint = f"the host name {host!r} is unknown (check the spelling of the url)"
    elif "ssl" in lowered or "tls" in lowered or "certificate" in lowered:
        hint = (
            "the TLS handshake failed: the server may speak plain HTTP (try http:// "
            "instead of https://) or its certificate is not trusted"
        )
    elif "refused" in lowered:
        hint = "nothing listens at that address and port (check the url's port, or "
        hint += "whether the coordinator is running; it may be restarting)"
    else:
        hint = "check the url and the network"
    return SubmitError(f"cannot reach {conn.url}: {hint} ({text})")


def _explain_status(conn: Connection, error: SubmitError) -> SubmitError:
    if error.status == 404 and conn.url.rstrip("/").endswith(API):
        base = conn.url.rstrip("/")[: -len(API)]
        return SubmitError(
            f"{error} -- the url ends in {API}; give the coordinator's base url without "
            f"it ({base})",
            error.status,
            error.code,
            error.receipt,
        )
    return error


def upload(
    conn: Connection,
    tar_path: Path,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 600.0,
    transport: httpx.BaseTransport | None = None,
    on_retry: Callable[[int, Exception, float], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """Upload a bundle tar; returns the coordinator's answer and the attempts used.

    Transient failures (:data:`TRANSIENT_ERRORS`, :data:`RETRY_STATUS` answers)
    are retried with exponential backoff and jitter; any other failure is final
    and explained at once.
    """
    check_url(conn.url)
    size = tar_path.stat().st_size
    headers = {
        "Authorization": f"Bearer {conn.token}",
        "Content-Type": "application/x-tar",
        "Content-Length": str(size),
    }
    last: Exception | None = None
    with httpx.Client(base_url=conn.url, timeout=timeout, transport=transport) as client:
        for attempt in range(1, retries + 2):
            try:
                with open(tar_path, "rb") as fh:
                    response = client.post(f"{API}/submissions", content=fh, headers=headers)
            except httpx.TransportError as exc:
                last = _explain_transport(conn, exc)
                if not _transient(exc):
                    raise last from exc
            else:
                if response.status_code in (200, 201):
                    return response.json(), attempt
                last = _error_of(response)
                if response.status_code not in RETRY_STATUS:
                    raise _explain_status(conn, last)
            if attempt <= retries:
                delay = min(backoff * 2 ** (attempt - 1), MAX_BACKOFF) * (0.5 + random.random())
                if on_retry is not None:
                    on_retry(attempt, last, delay)
                time.sleep(delay)
    raise SubmitError(f"upload failed after {retries + 1} attempts: {last}")


def submit(
    bundle: Path,
    conn: Connection,
    retries: int = 5,
    backoff: float = 1.0,
    on_retry: Callable[[int, Exception, float], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """Verify a bundle (directory or .tar) locally, then upload it."""
    bundle = Path(bundle)
    try:
        opened = read_bundle(bundle, verify=True)
    except BundleError as exc:
        raise SubmitError(f"{bundle}: not a valid bundle ({exc})") from exc
    if opened.site_id != conn.site_id:
        raise SubmitError(
            f"{bundle}: bundle is for site {opened.site_id}, the config is for {conn.site_id}"
        )
    context = {"bundle_hash": opened.bundle_hash, "bundle": str(bundle)}
    try:
        if bundle.is_file():
            answer, attempts = upload(conn, bundle, retries, backoff, on_retry=on_retry)
        else:
            with tempfile.TemporaryDirectory(prefix="confed-submit-") as tmp:
                tar_path = export_bundle(bundle, Path(tmp) / f"{bundle.name}.tar")
                answer, attempts = upload(conn, tar_path, retries, backoff, on_retry=on_retry)
    except SubmitError as exc:
        if exc.receipt is not None:
            keep_receipt(conn, exc.receipt, {**context, "outcome": f"rejected: {exc.code}"})
        raise
    outcome = "accepted" if answer.get("created") else "duplicate"
    problem = keep_receipt(conn, answer.get("receipt"), {**context, "outcome": outcome})
    if problem:
        answer["receipt_problem"] = problem
    return answer, attempts


def _get(conn: Connection, path: str) -> httpx.Response:
    check_url(conn.url)
    headers = {"Authorization": f"Bearer {conn.token}"}
    try:
        response = httpx.get(f"{conn.url}{API}{path}", headers=headers, timeout=60)
    except httpx.TransportError as exc:
        raise _explain_transport(conn, exc) from exc
    return response


def fetch_audit_key(conn: Connection) -> bytes:
    """The coordinator's audit signing key (PEM), as it publishes it now."""
    response = _get(conn, "/audit/key")
    if response.status_code != 200:
        raise _error_of(response)
    return response.json()["public_key_pem"].encode()


def fetch_entry_hash(conn: Connection, seq: int) -> str | None:
    """The coordinator's current hash of audit entry ``seq``; None if it has no such entry."""
    response = _get(conn, f"/audit/entries/{seq}/hash")
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise _error_of(response)
    return response.json()["entry_hash"]


def keep_receipt(conn: Connection, raw: Any, context: dict[str, Any]) -> str | None:
    """Store a receipt next to the config; pin the coordinator key on first use.

    Returns
    -------
    str or None
        A problem to show (no receipt, bad signature, key changed), or None.
    """
    if conn.root is None:
        return None
    receipt = rc.parse_receipt(raw)
    if receipt is None:
        return "the coordinator's answer carries no valid receipt"
    rc.store_receipt(conn.root, receipt, {**context, "site_id": conn.site_id, "url": conn.url})
    pinned = rc.pinned_key(conn.root)
    if pinned is None:
        try:
            pinned = fetch_audit_key(conn)
            rc.pin_key(conn.root, pinned)
        except (SubmitError, ValueError) as exc:
            return f"cannot pin the coordinator's audit key: {exc}"
    why = rc.verify_receipt(receipt, pinned)
    return f"receipt of entry {receipt.seq} does not verify: {why}" if why else None


def fetch_status(conn: Connection, limit: int = 20) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {conn.token}"}
    try:
        response = httpx.get(
            f"{conn.url}{API}/sites/{conn.site_id}/status",
            params={"limit": limit},
            headers=headers,
            timeout=60,
        )
    except httpx.TransportError as exc:
        raise SubmitError(f"cannot reach {conn.url}: {exc}") from exc
    if response.status_code != 200:
        raise _error_of(response)
    return response.json()


def check_receipts(conn: Connection) -> list[tuple[int, dict[str, Any], str, str]]:
    """Check every stored receipt: ``(line, record, status, detail)`` per receipt.

    Status is ``ok``, ``missing`` (the coordinator has no such entry), ``altered``
    (the entry's hash is not the one signed) or ``bad-signature`` (the receipt does
    not verify with the pinned key, or the line is unreadable).
    """
    if conn.root is None:
        raise SubmitError("no site folder: receipts are kept next to the site config")
    pinned = rc.pinned_key(conn.root)
    if pinned is None:
        raise SubmitError(
            f"no pinned coordinator key ({conn.root / rc.PINNED_KEY_FILE}): it is stored at the "
            "first submission"
        )
    results = []
    for line, record, receipt in rc.stored_receipts(conn.root):
        if receipt is None:
            results.append((line, record, "bad-signature", "not a readable receipt"))
            continue
        why = rc.verify_receipt(receipt, pinned)
        if why:
            results.append((line, record, "bad-signature", why))
            continue
        current = fetch_entry_hash(conn, receipt.seq)
        if current is None:
            status, detail = "missing", f"the coordinator has no audit entry {receipt.seq}"
        elif current != receipt.entry_hash:
            status = "altered"
            detail = f"entry hash is now {current[:16]}..., signed {receipt.entry_hash[:16]}..."
        else:
            status, detail = "ok", f"entry hash {current[:16]}..."
        results.append((line, record, status, detail))
    return results


ConfigOpt = typer.Option(..., "--config", help="Site config (TOML).")
UrlOpt = typer.Option(None, "--url", help="Coordinator URL (overrides the config).")
TokenOpt = typer.Option(None, "--token-file", help="File holding the site token.")

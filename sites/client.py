"""Site-side client of the coordinator: ``confed site submit`` and ``confed site status``.

The coordinator's address and the site's token come from the ``[coordinator]``
table of ``site.toml``::

    [coordinator]
    url = "https://coordinator.example.org"
    token_file = "keys/coordinator.token"   # the token printed by `confed coord site add`

or from ``--url`` / ``--token-file`` / the ``CONFED_COORDINATOR_URL`` and
``CONFED_SITE_TOKEN`` environment variables. Uploads are retried on network
errors and 5xx answers: this is safe because the coordinator treats an upload
of the same bundle (same manifest hash) as the same submission.
"""

from __future__ import annotations

import json
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
from rich.console import Console

from sites.bundle import BundleError, export_bundle, read_bundle

API = "/api/v1"
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_BACKOFF = 60.0
err = Console(stderr=True)
out = Console()


class SubmitError(RuntimeError):
    """A refused or failed upload; the message carries the coordinator's reason."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Connection:
    url: str
    token: str
    site_id: str


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
    return Connection(url.rstrip("/"), token, site_id)


def _error_of(response: httpx.Response) -> SubmitError:
    try:
        body = response.json()["error"]
        code, message = body["code"], body["message"]
    except (ValueError, KeyError, TypeError):
        code, message = None, response.text[:500] or response.reason_phrase
    return SubmitError(
        f"coordinator answered {response.status_code}: {message}", response.status_code, code
    )


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

    Network errors and 429/5xx answers are retried with exponential backoff and
    jitter; any other error answer is final.
    """
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
                last = SubmitError(f"cannot reach {conn.url}: {exc}")
            else:
                if response.status_code in (200, 201):
                    return response.json(), attempt
                last = _error_of(response)
                if response.status_code not in RETRY_STATUS:
                    raise last
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
    if bundle.is_file():
        return upload(conn, bundle, retries, backoff, on_retry=on_retry)
    with tempfile.TemporaryDirectory(prefix="confed-submit-") as tmp:
        tar_path = export_bundle(bundle, Path(tmp) / f"{bundle.name}.tar")
        return upload(conn, tar_path, retries, backoff, on_retry=on_retry)


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


def _report_retry(attempt: int, exc: Exception, delay: float) -> None:
    err.print(
        f"attempt {attempt} failed ({exc}); retrying in {delay:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


ConfigOpt = typer.Option(..., "--config", help="Site config (TOML).")
UrlOpt = typer.Option(None, "--url", help="Coordinator URL (overrides the config).")
TokenOpt = typer.Option(None, "--token-file", help="File holding the site token.")


def submit_command(
    bundle: Path = typer.Argument(..., help="Bundle directory or .tar."),
    config: Path = ConfigOpt,
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
    retries: int = typer.Option(5, help="Retries on network errors and 5xx answers."),
    backoff: float = typer.Option(2.0, help="First retry delay in seconds (doubles each time)."),
) -> None:
    """Upload a bundle to the coordinator (safe to repeat: same bundle, same submission)."""
    try:
        conn = read_connection(config, url, token_file)
        answer, attempts = submit(bundle, conn, retries, backoff, _report_retry)
    except SubmitError as exc:
        _fail(exc)
    sub = answer["submission"]
    state = "accepted" if answer["created"] else "already accepted earlier"
    out.print(
        f"{state}: submission {sub['id']} of site {sub['site_id']}, {sub['n_subjects']} "
        f"subjects, bundle {sub['bundle_hash']}"
        + (f" ({attempts} attempts)" if attempts > 1 else ""),
        soft_wrap=True,
        highlight=False,
    )
    for flag in sub["flags"]:
        out.print(f"flag: {flag}", highlight=False)


def status_command(
    config: Path = ConfigOpt,
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
    limit: int = typer.Option(10, help="Recent uploads to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the coordinator's answer."),
) -> None:
    """Show what the coordinator accepted or rejected from this site, and why."""
    try:
        conn = read_connection(config, url, token_file)
        status = fetch_status(conn, limit)
    except SubmitError as exc:
        _fail(exc)
    if as_json:
        out.print_json(json.dumps(status))
        return
    current = status["current"]
    if current:
        flags = f" flags: {', '.join(current['flags'])}" if current["flags"] else ""
        out.print(
            f"current submission {current['id']}: {current['n_subjects']} subjects, "
            f"received {current['received_at']}, bundle {current['bundle_hash']}{flags}",
            soft_wrap=True,
            highlight=False,
        )
    else:
        out.print("no accepted submission yet")
    for sub in status["submissions"]:
        if sub["superseded_by_id"] is not None:
            out.print(
                f"older submission {sub['id']} (superseded by {sub['superseded_by_id']}), "
                f"bundle {sub['bundle_hash']}",
                soft_wrap=True,
                highlight=False,
            )
    for up in status["uploads"]:
        reason = f" {up['error_code']}: {up['message']}" if up["outcome"] == "rejected" else ""
        out.print(
            f"upload {up['received_at']}: {up['outcome']}{reason}", soft_wrap=True, highlight=False
        )

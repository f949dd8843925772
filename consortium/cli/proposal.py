"""`confed proposal` commands: the public register and exports, over the coordinator's API.

The coordinator URL comes from ``--url`` or ``CONFED_COORDINATOR_URL``; the researcher
token from ``--token-file`` or ``CONFED_TOKEN``. httpx is imported inside the
commands, so ``confed --help`` does not pay for it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from consortium.errors import ConfedError

if TYPE_CHECKING:
    import httpx

app = typer.Typer(no_args_is_help=True, add_completion=False)

UrlOpt = typer.Option(None, "--url", help="Coordinator URL (or CONFED_COORDINATOR_URL).")
TokenOpt = typer.Option(None, "--token-file", help="File with your token (or CONFED_TOKEN).")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _url(url: str | None) -> str:
    url = url or os.environ.get("CONFED_COORDINATOR_URL")
    if not url:
        _fail("no coordinator URL: pass --url or set CONFED_COORDINATOR_URL")
    return url.rstrip("/") + "/api/v1"


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            _fail(f"{token_file}: cannot read token ({exc})")
    else:
        token = os.environ.get("CONFED_TOKEN", "")
    if not token:
        _fail("no token: pass --token-file or set CONFED_TOKEN")
    return token


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        _fail(f"coordinator answered {r.status_code}: {message}")
    return r


@app.command("list")
def list_command(url: str | None = UrlOpt) -> None:
    """The public register: id, title, institution, status and dates."""
    import httpx

    try:
        rows = _check(httpx.get(f"{_url(url)}/register", timeout=60)).json()
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the coordinator: {exc}")
    typer.echo(f"{'id':<6} {'status':<20} {'submitted':<11} {'decided':<11} institution: title")
    for p in rows:
        sub = (p["submitted_at"] or "")[:10]
        dec = (p["decided_at"] or "")[:10]
        typer.echo(
            f"{p['code']:<6} {p['status']:<20} {sub:<11} {dec:<11} {p['institution']}: {p['title']}"
        )


@app.command("export")
def export_command(
    proposal: str = typer.Argument(..., help="Proposal id, e.g. P7."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder to create for the export."),
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
) -> None:
    """Export your grant's data: the coordinator builds it, you download and verify it."""
    import httpx

    from consortium.proposals.export import unpack_verified
    from sites.bundle import sha256_file

    if out.exists():
        _fail(f"{out} already exists; choose a new folder")
    headers = {"Authorization": f"Bearer {_token(token_file)}"}
    base = _url(url)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            made = _check(client.post(f"/proposals/{proposal}/exports")).json()
            with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as d:
                tar = Path(d) / "export.tar"
                with client.stream("GET", f"/proposals/{proposal}/exports/{made['id']}") as r:
                    if r.status_code >= 400:
                        r.read()
                        _check(r)
                    with open(tar, "wb") as fh:
                        for chunk in r.iter_bytes():
                            fh.write(chunk)
                if sha256_file(tar) != made["archive_sha256"]:
                    _fail("downloaded archive checksum differs from the coordinator's")
                manifest = unpack_verified(tar, out)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the coordinator: {exc}")
    except ConfedError as exc:
        _fail(exc.message)
    typer.echo(
        f"exported {manifest['proposal']}: {manifest['n_subjects']} subjects from "
        f"{', '.join(manifest['sites'])}, release {manifest['release']['name']} "
        f"({manifest['release']['hash'][:12]}) -> {out}"
    )


from consortium.cli import proposal_flow  # noqa: E402,F401  (draft, submit, vote, ...)

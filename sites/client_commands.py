"""The site's upload commands: ``confed site submit``, ``status`` and ``verify-receipts``.

Command-line front ends of :mod:`sites.client` (connection settings, uploads
with retries, receipts), imported only when one of them runs
(:mod:`sites.lazy_cli`, registered in :mod:`sites.cli`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from sites import receipts as rc
from sites.client import (
    ConfigOpt,
    SubmitError,
    TokenOpt,
    UrlOpt,
    check_receipts,
    fetch_status,
    read_connection,
    submit,
)

err = Console(stderr=True)
out = Console()


def _report_retry(attempt: int, exc: Exception, delay: float) -> None:
    """Tell the user an attempt failed and when the next one starts."""
    err.print(
        f"attempt {attempt} failed ({exc}); retrying in {delay:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


def _fail(exc: BaseException) -> None:
    """Print ``exc`` as an error and exit with status 1."""
    err.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def submit_command(
    bundle: Path = typer.Argument(..., help="Bundle directory or .tar."),
    config: Path = ConfigOpt,
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
    retries: int = typer.Option(
        5,
        help="Retries on transient failures (reset/refused connection, timeout, 429/502-504).",
    ),
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
    if answer.get("receipt"):
        out.print(
            f"receipt: audit entry {answer['receipt']['seq']}, kept in {rc.RECEIPTS_FILE}",
            highlight=False,
        )
    if answer.get("receipt_problem"):
        err.print(f"[yellow]warning:[/yellow] {answer['receipt_problem']}", highlight=False)


def verify_receipts_command(
    config: Path = ConfigOpt,
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
) -> None:
    """Check every kept receipt against the coordinator's audit log; exit 1 unless all ok."""
    try:
        conn = read_connection(config, url, token_file)
        results = check_receipts(conn)
    except (SubmitError, ValueError) as exc:
        _fail(exc)
    if not results:
        out.print(f"no receipts in {conn.root / rc.RECEIPTS_FILE}", highlight=False)
        return
    for line, record, status, detail in results:
        seq = (record.get("receipt") or {}).get("seq", "?")
        what = record.get("outcome", "?")
        bundle = str(record.get("bundle_hash") or "")[:16]
        out.print(
            f"{status}: receipt line {line}, audit entry {seq} ({what}, bundle {bundle}): {detail}",
            soft_wrap=True,
            highlight=False,
        )
    bad = [r for r in results if r[2] != "ok"]
    out.print(f"{len(results) - len(bad)} ok, {len(bad)} not ok", highlight=False)
    if bad:
        err.print(
            "[red]the coordinator's audit log no longer shows what it signed for you[/red]: "
            "keep receipts.jsonl and tell the coordinator operator (see "
            "docs/site-data-manager/README.md, 'Receipts')",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(code=1)


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

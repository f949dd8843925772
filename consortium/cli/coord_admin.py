"""More `confed coord` commands (issue #14): ``token list``, ``audit show``, ``signin-link``
and ``notify``. Registered on the groups of :mod:`consortium.cli.coord`; like them
they work on the root and database directly and import heavy modules lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from consortium.cli.coord import (
    DbOpt,
    JsonOpt,
    RootOpt,
    _actor,
    _fail,
    _open,
    app,
    audit_app,
    token_app,
)
from consortium.errors import ConfedError


@token_app.command("list")
def token_list(root: Path = RootOpt, db: str | None = DbOpt, as_json: bool = JsonOpt) -> None:
    """List tokens (never their secrets): id, role, site, label, expiry, state."""
    from sqlalchemy import select

    from consortium import audit
    from consortium.db.models import Token

    coord = _open(root, db)
    with coord.db.session() as session:
        rows = [
            {"id": t.id, "role": t.role, "site_id": t.site_id, "label": t.label,
             "expires_at": t.expires_at.isoformat(),
             "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None}
            for t in session.execute(select(Token).order_by(Token.created_at, Token.id)).scalars()
        ]
        audit.append(session, _actor(), "token.list", "tokens", {})
    coord.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"revoked {r['revoked_at'][:10]}" if r["revoked_at"] else "valid"
        typer.echo(f"{r['id']}\t{r['role']}\t{r['site_id'] or '-'}\t{r['expires_at'][:10]}\t"
                   f"{state}\t{r['label']}")


@audit_app.command("show")
def audit_show(
    actor: str = typer.Option("", help="only entries whose actor contains this"),
    action: str = typer.Option("", help="only actions starting with this (e.g. proposal.)"),
    since: str = typer.Option("", "--from", help="first day, YYYY-MM-DD"),
    until: str = typer.Option("", help="last day, YYYY-MM-DD"),
    page: int = typer.Option(1, min=1, help="page (newest first)"),
    size: int = typer.Option(50, min=1, max=1000, help="entries per page"),
    root: Path = RootOpt,
    db: str | None = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show audit entries, newest first, filtered like the portal's audit page."""
    from consortium import audit
    from consortium.portal.routes.audit import entries

    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            pg = entries(session, actor, action, since, until, page, size)
            rows = [{"seq": e.seq, "ts": e.ts.isoformat(), "actor": e.actor,
                     "action": e.action, "target": e.target, "details": e.details}
                    for e in pg.items]
            audit.append(session, _actor(), "audit.read", "audit", {"page": pg.number})
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['seq']}\t{r['ts'][:19]}\t{r['actor']}\t{r['action']}\t{r['target']}\t"
                   f"{json.dumps(r['details'])}")
    typer.echo(f"page {pg.number} of {pg.pages} ({pg.total} entries)")


@app.command("signin-link")
def signin_link(
    token_id: int = typer.Argument(..., help="the token the link signs in with"),
    url: str = typer.Option("http://127.0.0.1:8700", help="portal address users reach"),
    root: Path = RootOpt,
    db: str | None = DbOpt,
) -> None:
    """Issue a one-time portal sign-in link for a token and print it once."""
    from consortium.portal.sessions import issue_link
    from consortium.portal.settings import PortalSettings

    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            hours = PortalSettings.load(coord.settings.root).link_hours
            secret = issue_link(session, token_id, _actor(), hours)
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    typer.echo(f"one-time sign-in link ({hours} h), shown once: {url.rstrip('/')}/signin/link/"
               f"{secret}")


@app.command("notify")
def notify_command(root: Path = RootOpt, db: str | None = DbOpt) -> None:
    """Turn pending conditions into notifications (and e-mails, if SMTP is configured)."""
    from consortium.portal import mail, notify
    from consortium.portal.settings import PortalSettings
    from consortium.proposals.settings import ProposalSettings

    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            new = notify.sweep(session, ProposalSettings.load(coord.settings.root))
            sent = mail.deliver(session, PortalSettings.load(coord.settings.root), new)
    except OSError as exc:
        _fail(ConfedError("smtp_failed", f"notification e-mail not sent: {exc}"))
    finally:
        coord.close()
    typer.echo(f"{len(new)} new notification(s), {sent} e-mail(s) sent")

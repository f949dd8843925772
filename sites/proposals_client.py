"""`confed site proposals`: the proposals that request this site's data, and opting out.

Uses the site's connection settings (``site.toml`` ``[coordinator]``, ``--url``,
``--token-file`` or the environment), like ``confed site submit``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import typer
from rich.console import Console

from sites.client import ConfigOpt, SubmitError, TokenOpt, UrlOpt, _error_of, read_connection

out = Console()
err = Console(stderr=True)


def _fail(message: object) -> None:
    err.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def proposals_command(
    config: Path = ConfigOpt,
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
    opt_out: str | None = typer.Option(None, "--opt-out", help="Opt out of this proposal (P7)."),
    consent: str | None = typer.Option(None, "--consent", help="Consent to this proposal."),
    comment: str = typer.Option("", "--comment", help="Reason recorded with the answer."),
) -> None:
    """List proposals requesting this site's data; opt out or consent within the window."""
    if opt_out and consent:
        _fail("give either --opt-out or --consent, not both")
    try:
        conn = read_connection(config, url, token_file)
        headers = {"Authorization": f"Bearer {conn.token}"}
        with httpx.Client(base_url=f"{conn.url}/api/v1", headers=headers, timeout=60) as c:
            code = opt_out or consent
            if code:
                decision = "opt_out" if opt_out else "consent"
                r = c.post(
                    f"/proposals/{code}/consent", json={"decision": decision, "comment": comment}
                )
                if r.status_code >= 400:
                    raise _error_of(r)
                out.print(f"{code}: {decision} recorded for site {conn.site_id}", highlight=False)
                return
            r = c.get("/proposals")
            if r.status_code >= 400:
                raise _error_of(r)
    except (SubmitError, httpx.HTTPError) as exc:
        _fail(exc)
    for p in r.json():
        answer = p["consents"].get(conn.site_id, "no answer")
        out.print(
            f"{p['code']} [{p['status']}] {p['title']} ({p['institution']}); measures: "
            f"{', '.join(p['measures'])}; columns: {', '.join(p['columns'])}; release "
            f"{p['release_name']}; opt-out until {p['consent_deadline']}; this site: {answer}",
            soft_wrap=True,
            highlight=False,
        )

"""`confed proposal draft|submit|vote|activate|consent|analyze|status` over the API.

Registered on :data:`consortium.cli.proposal.app`; the same URL and token options
(``--url``/``CONFED_COORDINATOR_URL``, ``--token-file``/``CONFED_TOKEN``). Each
command is one or two API calls, so the coordinator applies exactly the rules it
applies to the portal and to any other client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from consortium.cli.proposal import TokenOpt, UrlOpt, _check, _fail, _token, _url, app

CodeArg = typer.Argument(..., help="Proposal id, e.g. P7.")


def _call(method: str, path: str, url: str | None, token_file: Path | None,
          body: Any = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {_token(token_file)}"}
    try:
        with httpx.Client(base_url=_url(url), headers=headers, timeout=600) as client:
            return _check(client.request(method, path, json=body)).json()
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the coordinator: {exc}")


@app.command("draft")
def draft(
    title: str = typer.Option(..., help="Title (3-300 characters)."),
    release: str = typer.Option(..., help="Release the data come from."),
    measure: list[str] = typer.Option([], help="Measure, e.g. networks:toy (repeat)."),
    column: list[str] = typer.Option([], help="Phenotype column, e.g. age (repeat)."),
    site: list[str] = typer.Option([], help="Site (repeat; none: every site of the release)."),
    abstract: str = typer.Option(..., help="Abstract."),
    aims: str = typer.Option(..., help="Aims."),
    plan: str = typer.Option(..., help="Analysis plan."),
    months: int = typer.Option(12, help="Duration in months (1-60)."),
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
) -> None:
    """Draft a proposal (researcher); prints its id."""
    body = {"title": title, "abstract": abstract, "aims": aims, "analysis_plan": plan,
            "measures": measure, "columns": column, "sites": site, "release_name": release,
            "duration_months": months}
    out = _call("POST", "/proposals", url, token_file, body)
    typer.echo(f"{out['code']} drafted ({out['status']}): {', '.join(out['sites'])}")


@app.command("submit")
def submit(
    proposal: str = CodeArg,
    accept_dua: bool = typer.Option(False, "--accept-dua", help="Accept the current DUA."),
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
) -> None:
    """Accept the data-use agreement and submit for review (proposer)."""
    if not accept_dua:
        _fail("pass --accept-dua to accept the data-use agreement (see GET /proposals/terms)")
    terms = _call("GET", "/proposals/terms", url, token_file)
    _call("POST", f"/proposals/{proposal}/dua", url, token_file, {"version": terms["version"]})
    out = _call("POST", f"/proposals/{proposal}/submit", url, token_file)
    typer.echo(f"{out['code']} {out['status']}")


@app.command("vote")
def vote(
    proposal: str = CodeArg,
    decision: str = typer.Option(..., help="approve, reject or revise"),
    comment: str = typer.Option("", help="Comment for the proposer and the committee."),
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
) -> None:
    """Vote on a proposal (steering)."""
    out = _call("POST", f"/proposals/{proposal}/votes", url, token_file,
                {"decision": decision, "comment": comment})
    typer.echo(f"vote {out['id']} recorded: {out['decision']} (round {out['review_round']})")


@app.command("activate")
def activate(proposal: str = CodeArg, url: str | None = UrlOpt,
             token_file: Path | None = TokenOpt) -> None:
    """Activate an approved proposal (committee)."""
    out = _call("POST", f"/proposals/{proposal}/activate", url, token_file)
    typer.echo(f"{out['code']} {out['status']}")


@app.command("consent")
def consent(
    proposal: str = CodeArg,
    decision: str = typer.Option(..., help="consent or opt_out"),
    comment: str = typer.Option("", help="Comment."),
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
) -> None:
    """Consent to or opt out of a proposal (site token)."""
    out = _call("POST", f"/proposals/{proposal}/consent", url, token_file,
                {"decision": decision, "comment": comment})
    typer.echo(f"site {out['site_id']}: {out['decision']}")


def _filters(specs: list[str]) -> list[dict]:
    out = []
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) != 3:
            _fail(f"--filter {spec!r}: expected column:op:value, e.g. age:ge:30")
        column, op, raw = parts
        value: Any = raw
        if op in ("ge", "le"):
            try:
                value = float(raw)
            except ValueError:
                _fail(f"--filter {spec!r}: {raw!r} is not a number")
        elif op == "in":
            value = raw.split(",")
        out.append({"column": column, "op": op, "value": value})
    return out


@app.command("analyze")
def analyze(
    proposal: str = CodeArg,
    analysis: str = typer.Option("mixed_model", help="mixed_model or meta_analysis"),
    measure: str = typer.Option(..., help="Granted network measure, e.g. networks:toy."),
    outcome: str = typer.Option(..., help="Outcome column of the measure."),
    covariate: list[str] = typer.Option([], help="Covariate (repeat)."),
    filter_: list[str] = typer.Option([], "--filter", help="column:op:value (repeat)."),
    harmonize: str = typer.Option("none", help="Registered harmonizer."),
    url: str | None = UrlOpt,
    token_file: Path | None = TokenOpt,
) -> None:
    """Run a remote aggregate analysis on your grant; a refusal names the rule."""
    body = {"analysis": analysis, "measure": measure, "outcome": outcome,
            "covariates": covariate, "filters": _filters(filter_), "harmonize": harmonize}
    out = _call("POST", f"/proposals/{proposal}/analyses", url, token_file, body)
    typer.echo(json.dumps(out["result"], indent=2))


@app.command("status")
def status(proposal: str = CodeArg, url: str | None = UrlOpt,
           token_file: Path | None = TokenOpt) -> None:
    """A proposal's status, dates, site answers and (when there is one) its grant."""
    p = _call("GET", f"/proposals/{proposal}", url, token_file)
    typer.echo(f"{p['code']} {p['status']}: {p['title']}")
    for key in ("created_at", "submitted_at", "decided_at", "consent_deadline",
                "activated_at", "ended_at"):
        if p.get(key):
            typer.echo(f"  {key.removesuffix('_at').replace('_', ' ')}: {p[key][:19]}")
    for site in p["sites"]:
        typer.echo(f"  site {site}: {p['consents'].get(site, 'no answer')}")

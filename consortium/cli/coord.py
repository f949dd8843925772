"""`confed coord` commands: service, sites, imports, releases, audit, fsck.

Commands other than ``serve`` work on the root and database directly (run them
on the coordinator host); each one is recorded in the audit log as ``cli:<user>``.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

import typer

from consortium.errors import ConfedError

app = typer.Typer(no_args_is_help=True, add_completion=False)
site_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Member sites.")
release_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Data releases.")
audit_app = typer.Typer(no_args_is_help=True, add_completion=False, help="The audit log.")
token_app = typer.Typer(no_args_is_help=True, add_completion=False, help="API tokens.")
app.add_typer(site_app, name="site")
app.add_typer(release_app, name="release")
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")

RootOpt = typer.Option(
    Path("."), "--root", envvar="CONFED_COORD_ROOT", help="coordinator data root"
)
DbOpt = typer.Option(
    None, "--db", envvar="CONFED_COORD_DB", help="database URL (default: stored at init)"
)
JsonOpt = typer.Option(False, "--json", help="machine-readable output")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


@app.callback()
def _owner_only(ctx: typer.Context) -> None:
    # database, store, exports and keys: files 0600, folders 0700 whatever the umask
    previous = os.umask(0o077)
    ctx.call_on_close(lambda: os.umask(previous))


def _validated(model, **fields):
    """``model(**fields)``, or exit with the API's message for the same invalid field."""
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        _fail(ConfedError("invalid_request", problems))


def _open(root: Path, db: str | None):
    from consortium.coordinator import Coordinator

    try:
        return Coordinator.open(root, db)
    except ConfedError as err:
        _fail(err)


@app.command("init")
def init(
    root: Path = RootOpt,
    db: str | None = DbOpt,
    max_upload_mb: int = typer.Option(2048, help="largest accepted upload (MiB)"),
    min_per_group: int = typer.Option(10, help="flag sites with fewer cases or controls"),
    token_days: int = typer.Option(365, help="lifetime of new tokens (days)"),
    checkpoint_file: Path | None = typer.Option(
        None,
        "--checkpoint-file",
        help="append-only file of signed audit checkpoints "
        "(default: <root>/audit-checkpoints.jsonl; a WORM or remote mount is better)",
    ),
) -> None:
    """Create the root, database and audit signing key; print the first admin token (once)."""
    from consortium import audit
    from consortium.auth import issue_token
    from consortium.coordinator import Coordinator
    from consortium.receipts import Notary
    from consortium.settings import SETTINGS_FILE, Settings

    root = root.resolve()
    if (root / SETTINGS_FILE).exists():
        _fail(ConfedError("exists", f"{root} is already a coordinator root"))
    settings = Settings(root, db, max_upload_mb * 1024**2, min_per_group, token_days)
    if checkpoint_file is not None:
        settings.checkpoint_file = str(checkpoint_file.resolve())
    root.mkdir(parents=True, exist_ok=True)
    Notary.open(root, settings.checkpoint_path)  # the audit signing key (kept if it exists)
    try:
        coord = Coordinator(settings)
    except Exception as err:  # a bad URL or unreachable server: leave no settings behind
        _fail(ConfedError("bad_database", f"cannot open database: {err}"))
    with coord.db.session() as session:
        token, plaintext = issue_token(session, "admin", label="first admin", days=token_days)
        audit.append(session, _actor(), "coordinator.init", str(root), {"token": token.id})
    settings.save()
    coord.close()
    typer.echo(f"coordinator root: {root}")
    typer.echo(f"database: {settings.database_url.split('@')[-1]}")
    typer.echo(f"admin token (shown once, store it safely): {plaintext}")
    typer.echo(f"audit checkpoints: {settings.checkpoint_path}")
    typer.echo(f"audit signing key fingerprint (publish it to sites): {coord.notary.fingerprint}")
    typer.echo(coord.notary.public_pem.decode().rstrip())


@app.command("serve")
def serve(
    root: Path = RootOpt,
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(8700, help="TCP port"),
    db: str | None = DbOpt,
) -> None:
    """Run the HTTP API (put a TLS reverse proxy in front of it)."""
    from consortium.server import serve as run

    try:
        run(str(root), host, port, db)
    except ConfedError as err:
        _fail(err)


@site_app.command("add")
def site_add(
    site_id: str = typer.Argument(..., help="site identifier, e.g. S01"),
    name: str = typer.Option(..., "--name", help="human-readable site name"),
    public_key: Path = typer.Option(..., "--public-key", help="the site's Ed25519 public key PEM"),
    root: Path = RootOpt,
    db: str | None = DbOpt,
) -> None:
    """Register a site and print its API token (shown once)."""
    from consortium.api.schemas import SiteCreate
    from consortium.registry import add_site

    _validated(SiteCreate, id=site_id, name=name, public_key_pem="")
    try:
        pem = public_key.read_text()
    except OSError as err:
        _fail(ConfedError("bad_file", f"{public_key}: cannot read public key ({err})"))
    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            _, _, plaintext = add_site(
                session, site_id, name, pem, _actor(), coord.settings.token_days
            )
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    typer.echo(f"site {site_id} added")
    typer.echo(f"site token (shown once, give it to the site): {plaintext}")


@site_app.command("set-key")
def site_set_key(
    site_id: str = typer.Argument(..., help="site identifier"),
    public_key: Path = typer.Option(..., "--public-key", help="the site's new Ed25519 public key"),
    root: Path = RootOpt,
    db: str | None = DbOpt,
) -> None:
    """Replace a site's registered public key (bundles must then be signed with the new key)."""
    from consortium.registry import set_public_key

    try:
        pem = public_key.read_text()
    except OSError as err:
        _fail(ConfedError("bad_file", f"{public_key}: cannot read public key ({err})"))
    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            set_public_key(session, site_id, pem, _actor())
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    typer.echo(f"site {site_id}: public key replaced")


@site_app.command("list")
def site_list(root: Path = RootOpt, db: str | None = DbOpt, as_json: bool = JsonOpt) -> None:
    """List sites with their current submission."""
    from consortium.registry import list_sites
    from consortium.releases import current_submissions

    coord = _open(root, db)
    with coord.db.session() as session:
        current = {s.site_id: s for s in current_submissions(session)}
        rows = [
            {
                "id": s.id,
                "name": s.name,
                "current_submission": current[s.id].id if s.id in current else None,
                "n_subjects": current[s.id].n_subjects if s.id in current else None,
                "flags": current[s.id].flags if s.id in current else [],
            }
            for s in list_sites(session)
        ]
    coord.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        sub = f"submission {r['current_submission']} ({r['n_subjects']} subjects)"
        flags = f" flags: {', '.join(r['flags'])}" if r["flags"] else ""
        typer.echo(f"{r['id']}\t{r['name']}\t{sub if r['current_submission'] else '-'}{flags}")


@token_app.command("revoke")
def token_revoke(token_id: int, root: Path = RootOpt, db: str | None = DbOpt) -> None:
    """Revoke a token by its id."""
    from consortium import audit
    from consortium.auth import revoke

    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            revoke(session, token_id)
            audit.append(session, _actor(), "token.revoke", f"token:{token_id}", {})
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    typer.echo(f"token {token_id} revoked")


@token_app.command("issue")
def token_issue(
    role: str = typer.Argument(..., help="admin, steering, site or researcher"),
    site: str | None = typer.Option(None, help="site id (site tokens)"),
    label: str = typer.Option("", help="what the token is for"),
    days: int = typer.Option(365, help="lifetime in days"),
    root: Path = RootOpt,
    db: str | None = DbOpt,
) -> None:
    """Issue a token and print it once."""
    from consortium import audit
    from consortium.api.schemas import TokenCreate
    from consortium.auth import issue_token

    _validated(TokenCreate, role=role, site_id=site, label=label, days=days)

    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            token, plaintext = issue_token(session, role, site, label, days)
            audit.append(session, _actor(), "token.issue", f"token:{token.id}", {"role": role})
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    typer.echo(f"token {token.id} ({role}), shown once: {plaintext}")


@app.command("import")
def import_bundle(
    archive: Path = typer.Argument(..., help="bundle .tar exported by the site"),
    site: str | None = typer.Option(None, help="site id (default: the manifest's site_id)"),
    root: Path = RootOpt,
    db: str | None = DbOpt,
) -> None:
    """Import an offline bundle with the same validation as an upload."""
    from consortium.ingest import ingest_archive, manifest_site_id

    if not archive.is_file():
        _fail(ConfedError("bad_file", f"{archive}: no such file"))
    coord = _open(root, db)
    try:
        site_id = site or manifest_site_id(archive)
        result = ingest_archive(coord, archive, site_id, _actor(), archive.name)
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    sub = result.submission
    state = "imported" if result.created else "already present"
    flags = f", flags: {', '.join(sub.flags)}" if sub.flags else ""
    typer.echo(
        f"{state}: submission {sub.id} of site {sub.site_id}, {sub.n_subjects} subjects, "
        f"bundle {sub.bundle_hash}{flags}"
    )


def _release_lines(release) -> list[str]:
    lines = [
        f"release {release.name}  hash {release.release_hash}",
        f"  created {release.created_at.isoformat()} by {release.created_by}",
    ]
    for m in release.members:
        lines.append(f"  {m.site_id}\tsubmission {m.submission_id}\tbundle {m.bundle_hash}")
    if release.excluded_subjects:
        lines.append(f"  {len(release.excluded_subjects)} excluded subject(s)")
    return lines


def _member_lines(session, release, minimum: int) -> list[str]:
    """Per site: subjects by group, and flags (small groups, superseded submissions)."""
    from sqlalchemy import func, select

    from consortium.db.models import Submission

    lines = []
    for m in release.members:
        sub = session.get(Submission, m.submission_id)
        groups = ", ".join(f"{label} {n}" for label, n in sorted(sub.group_counts.items()))
        flags = [
            f"below the minimum of {minimum} per group: {label} {n}"
            for label, n in sorted(sub.group_counts.items())
            if n < minimum
        ]
        earlier = session.execute(
            select(func.count())
            .select_from(Submission)
            .where(Submission.site_id == m.site_id, Submission.superseded_by_id.is_not(None))
        ).scalar_one()
        if earlier:
            flags.append(f"{earlier} earlier submission(s) superseded")
        if sub.superseded_by_id is not None:
            flags.append("this submission has since been superseded")
        flag_text = "; ".join(flags) if flags else "none"
        lines.append(f"  {m.site_id}: {sub.n_subjects} subjects ({groups})  flags: {flag_text}")
    return lines


def _print_release(release) -> None:
    for line in _release_lines(release):
        typer.echo(line)


@release_app.command("create")
def release_create(
    name: str,
    sites: str | None = typer.Option(None, "--sites", help="comma-separated site ids"),
    exclude_subjects: Path | None = typer.Option(
        None, "--exclude-subjects", help="file of subject keys, one per line"
    ),
    root: Path = RootOpt,
    db: str | None = DbOpt,
) -> None:
    """Freeze the current submissions into an immutable release."""
    from consortium.releases import create_release, read_exclusion_file

    site_list = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
    coord = _open(root, db)
    try:
        excluded = read_exclusion_file(exclude_subjects) if exclude_subjects else []
        with coord.db.session() as session:
            release = create_release(session, name, _actor(), site_list, excluded)
            lines = _release_lines(release)
            lines += _member_lines(session, release, coord.settings.min_per_group)
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    # only once committed: a closed pipe (`| head -1`) can no longer undo the release
    for line in lines:
        typer.echo(line)


@release_app.command("list")
def release_list(root: Path = RootOpt, db: str | None = DbOpt) -> None:
    """List releases."""
    from consortium.releases import list_releases

    coord = _open(root, db)
    with coord.db.session() as session:
        for r in list_releases(session):
            typer.echo(
                f"{r.name}\t{r.created_at.isoformat()}\t{len(r.members)} site(s)\t{r.release_hash}"
            )
    coord.close()


@release_app.command("show")
def release_show(
    name: str, root: Path = RootOpt, db: str | None = DbOpt, as_json: bool = JsonOpt
) -> None:
    """Show one release and check its hash."""
    from consortium.releases import get_release, recompute_release_hash

    coord = _open(root, db)
    try:
        with coord.db.session() as session:
            release = get_release(session, name)
            if as_json:
                from consortium.api.schemas import ReleaseOut

                typer.echo(ReleaseOut.model_validate(release).model_dump_json(indent=2))
            else:
                _print_release(release)
            ok = recompute_release_hash(release) == release.release_hash
    except ConfedError as err:
        _fail(err)
    finally:
        coord.close()
    if not ok:
        _fail(ConfedError("hash_mismatch", f"release {name}: recomputed hash differs"))


@audit_app.command("verify")
def audit_verify(root: Path = RootOpt, db: str | None = DbOpt) -> None:
    """Check the audit log's hash chain and the signed checkpoints outside the database.

    Exit 1 on a modified, deleted or reordered entry, on a checkpoint line whose
    signature is invalid, and on a database log that a checkpoint contradicts
    (rewritten, renumbered or truncated, even with the hashes recomputed).
    """
    from consortium.audit import verify_chain
    from consortium.receipts import ADVICE, verify_checkpoints

    coord = _open(root, db)
    with coord.db.session() as session:
        report = verify_chain(session)
        anchored = verify_checkpoints(
            session, coord.settings.checkpoint_path, coord.notary.public_pem
        )
    coord.close()
    for problem in report.problems + anchored.problems:
        typer.echo(f"BROKEN: {problem}", err=True)
    if anchored.problems:
        typer.echo(f"first mismatch: {anchored.problems[0]}", err=True)
        typer.echo(ADVICE, err=True)
    if not (report.ok and anchored.ok):
        raise typer.Exit(1)
    typer.echo(
        f"audit log intact: {report.n_entries} entries, consistent with "
        f"{anchored.n_checkpoints} signed checkpoint(s) in {coord.settings.checkpoint_path}"
    )


@app.command("fsck")
def fsck_command(
    root: Path = RootOpt,
    db: str | None = DbOpt,
    repair: bool = typer.Option(False, help="remove unreferenced objects and temporaries"),
) -> None:
    """Re-hash every stored object against the database; exit 1 on any error."""
    from consortium.fsck import fsck

    coord = _open(root, db)
    report = fsck(coord, repair=repair)
    coord.close()
    for err in report.errors:
        typer.echo(f"ERROR: {err}", err=True)
    verb = "removed" if repair else "found"
    if report.unreferenced:
        typer.echo(f"{verb} {len(report.unreferenced)} unreferenced object(s) (not an error)")
    if report.temporaries:
        typer.echo(f"{verb} {len(report.temporaries)} temporary file(s) (not an error)")
    if not report.clean:
        raise typer.Exit(1)
    typer.echo(f"store clean: {report.checked} objects verified")


@app.command("openapi")
def openapi(
    out: Path = typer.Option(Path("docs/operator/api.md"), help="Markdown file to write"),
) -> None:
    """Write the API reference (Markdown, from the OpenAPI spec)."""
    from consortium.openapi_docs import write_api_reference

    path = write_api_reference(out)
    typer.echo(f"wrote {path}")


from consortium.cli import coord_admin  # noqa: E402,F401  (token list, audit show, ...)

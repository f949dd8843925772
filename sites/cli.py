"""`confed-site` (also `confed site`): the site agent's commands.

``init`` makes the config, signing keys and pseudonymization secret;
``compute`` writes a bundle; ``validate`` re-checks one; ``export`` packs a
bundle as a ``.tar``. Upload commands (``submit``, ``status``,
``verify-receipts``, ``proposals``) live in :mod:`sites.client_commands` and
:mod:`sites.proposals_client` and are imported only when they run
(:mod:`sites.lazy_cli`). This module imports nothing heavy at import time
(numpy, pandas, nibabel, httpx, ...: inside the commands), so ``--help``
answers at once, and nothing from ``consortium``: a hospital runs the site
agent without the coordinator's code.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from sites.lazy_cli import LazyCommand, lazy_group

#: Upload commands, imported when run; the short help is their docstring's first line.
UPLOAD_COMMANDS = {
    "submit": LazyCommand(
        "sites.client_commands",
        "submit_command",
        "Upload a bundle to the coordinator (safe to repeat: same bundle, same submission).",
    ),
    "status": LazyCommand(
        "sites.client_commands",
        "status_command",
        "Show what the coordinator accepted or rejected from this site, and why.",
    ),
    "verify-receipts": LazyCommand(
        "sites.client_commands",
        "verify_receipts_command",
        "Check every kept receipt against the coordinator's audit log; exit 1 unless all ok.",
    ),
    "proposals": LazyCommand(
        "sites.proposals_client",
        "proposals_command",
        "List proposals requesting this site's data; opt out or consent within the window.",
    ),
}

app = typer.Typer(
    name="confed-site",
    help="Site agent: compute, validate, export and submit bundles.",
    no_args_is_help=True,
    add_completion=False,
    cls=lazy_group(UPLOAD_COMMANDS),
)
err = Console(stderr=True)
out = Console()

#: Exit code of `confed site compute` when too few subjects pass QC (no bundle written).
EXIT_TOO_FEW_INCLUDED = 3


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line (no traceback): bad input, not a bug."""
    from sites.bundle import BundleError

    return (ValueError, BundleError, FileExistsError, FileNotFoundError, PermissionError)


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


@app.command("init")
def init_command(
    site_id: str = typer.Option(..., "--site-id", help="Site identifier given by the coordinator."),
    out_path: Path = typer.Option(Path("site.toml"), "--out", help="Config file to write."),
    keys_dir: str = typer.Option("keys", "--keys-dir", help="Folder for keys, next to config."),
) -> None:
    """Create a site config, an Ed25519 key pair and a pseudonymization secret."""
    from sites.config import write_toml
    from sites.contract import check_name
    from sites.keys import fingerprint, generate_keypair
    from sites.pseudonym import new_secret
    from sites.template import TEMPLATE_COMMENTS, TEMPLATE_HEADER, key_paths, template_config

    try:
        check_name(site_id, "site id")  # the coordinator's rule for site ids
        if out_path.exists():
            raise FileExistsError(f"{out_path}: already exists; refusing to overwrite")
        base = out_path.parent
        keys = key_paths(keys_dir)
        previous = os.umask(0o077)  # keys, secret and config: owner only
        try:
            (base / keys_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(base / keys_dir, 0o700)
            _, public = generate_keypair(base / keys["private_key"], base / keys["public_key"])
            new_secret(base / keys["secret"])
        finally:
            os.umask(previous)
        config = template_config(site_id, keys_dir)
        write_toml(out_path, config, TEMPLATE_COMMENTS, TEMPLATE_HEADER)
    except _expected_errors() as exc:
        _fail(exc)
    out.print(f"wrote {out_path}, keys in {base / keys_dir}")
    out.print(f"public key fingerprint: {fingerprint(public.read_bytes())}")
    out.print("edit the config to describe your files, then run `confed site compute`.")


@app.command("compute")
def compute_command(
    config: Path = typer.Option(..., "--config", help="Site config (TOML)."),
    out_dir: Path = typer.Option(..., "--out", help="Bundle directory to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    accept_unmapped_codes: bool = typer.Option(
        False,
        "--accept-unmapped-codes",
        help="Compute even if most codes are unmapped or all subjects fall in one group.",
    ),
) -> None:
    """Compute connectivity, summaries, maps and QC; write a signed bundle."""
    from sites.agent import TooFewIncluded, check_out_dir, compute
    from sites.bundle import describe_bundle, read_bundle
    from sites.config import load_config
    from sites.qc import local_log_path

    try:
        check_out_dir(out_dir, overwrite)  # before any work
        site_config = load_config(config)
        if accept_unmapped_codes:
            site_config.phenotypes.accept_unmapped_codes = True
        bundle_dir = compute(site_config, out_dir, overwrite=overwrite, progress=not quiet)
        bundle = read_bundle(bundle_dir)
    except TooFewIncluded as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(code=EXIT_TOO_FEW_INCLUDED) from exc
    except _expected_errors() as exc:
        _fail(exc)
    out.print(describe_bundle(bundle), soft_wrap=True)
    _warn_one_group(bundle)
    out.print(
        f"QC log with subject IDs and file paths (stays at the site, not in the bundle): "
        f"{local_log_path(bundle_dir)}",
        soft_wrap=True,
        highlight=False,
    )


def _warn_one_group(bundle) -> None:
    """Warn when the included subjects of a bundle are all in one diagnostic group."""
    labels = bundle.manifest.get("dx_labels", {})
    counts = bundle.subjects["dx"].astype(str).value_counts()
    present = [label for label in labels.values() if counts.get(label, 0)]
    if len(present) == 1:
        missing = [label for label in labels.values() if label not in present]
        text = (
            f"site {bundle.site_id}: all {int(counts.sum())} included subjects are "
            f"{present[0]}; none is {', '.join(missing)} after QC. Case-control models need "
            "both groups at a site; check [phenotypes.values.dx] and the QC log."
        )
        err.print(
            f"[yellow]warning:[/yellow] {escape(text)}",
            soft_wrap=True,
            highlight=False,
        )


@app.command("validate")
def validate_command(
    path: Path = typer.Argument(..., help="Bundle directory or .tar."),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Check the signature against this PEM public key."
    ),
) -> None:
    """Re-check a bundle: format version, signature, file list, sizes, SHA-256, contract."""
    from sites.bundle import check_contract, describe_bundle, read_bundle

    try:
        pem = public_key.read_bytes() if public_key else None
        bundle = read_bundle(path, verify=True, public_key_pem=pem)
        check_contract(bundle)  # what the coordinator checks at ingest, checked here first
    except _expected_errors() as exc:
        _fail(exc)
    out.print(f"[green]valid[/green] {describe_bundle(bundle)}", soft_wrap=True)


@app.command("export")
def export_command(
    path: Path = typer.Argument(..., help="Bundle directory."),
    output: Path = typer.Option(..., "-o", "--output", help="Tar file to write."),
) -> None:
    """Verify a bundle and pack it as one .tar for upload or offline transfer."""
    from sites.bundle import export_bundle

    try:
        export_bundle(path, output)
    except _expected_errors() as exc:
        _fail(exc)
    out.print(f"wrote {output}")


def main() -> None:
    """Entry point of the ``confed-site`` console script."""
    app()


# `confed-site agent`: the federated agent (outbound polling; imports nothing heavy here).
from sites.federated.cli import app as _federated_agent  # noqa: E402

app.add_typer(_federated_agent, name="agent")


if __name__ == "__main__":
    main()


"""`confed site` commands (the site agent).

``init`` makes the config, signing keys and pseudonymization secret;
``compute`` writes a bundle; ``validate`` re-checks one; ``export`` packs a
bundle as a ``.tar``. Upload commands (``submit``, ``status``, ``proposals``)
are registered on the same ``app`` by :mod:`sites.client`.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from sites.bundle import BundleError, check_contract, describe_bundle, export_bundle, read_bundle
from sites.contract import check_name
from sites.keys import fingerprint, generate_keypair
from sites.pseudonym import new_secret

app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
out = Console()

EXPECTED_ERRORS = (ValueError, BundleError, FileExistsError, FileNotFoundError, PermissionError)
#: Exit code of `confed site compute` when too few subjects pass QC (no bundle written).
EXIT_TOO_FEW_INCLUDED = 3

CONFIG_TEMPLATE = """\
# confed site configuration (see docs/site-data-manager/README.md).
# Relative paths are relative to this file's folder; base_dir, if set, changes
# the base of the data paths and patterns only (never of the keys).
site_id = "{site_id}"

[keys]
private_key = "{private_key}"   # Ed25519, mode 0600: never share
public_key = "{public_key}"     # send this one to the coordinator
secret = "{secret}"             # pseudonymization secret, mode 0600: never share

[phenotypes]
path = "participants.tsv"
dx_case = "MDD"
dx_control = "HC"
allow = []                      # extra columns allowed to leave the site

[phenotypes.columns]            # source column -> canonical column
participant_id = "subject_id"
group = "dx"
age = "age"
sex = "sex"

[phenotypes.values.dx]          # source code -> label
"1" = "MDD"
"2" = "HC"

[phenotypes.values.sex]
"1" = "M"
"2" = "F"

[[connectivity]]
atlas = "dosenbach160"
source = "timeseries"
pattern = "ROISignals/ROISignals_{{subject_id}}.mat"
columns = "1409-1568"           # Dosenbach 160 in DPARSF ROISignals

[motion]
source = "realignment"          # phenotype | confounds | realignment | none
definition = "jenkinson"
pattern = "RealignParameter/{{subject_id}}/rp_{{subject_id}}.txt"

[qc]
max_mean_fd = 0.2
min_volumes = 50
min_included = 1                # fewest included subjects for a bundle to be written
"""


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
    try:
        check_name(site_id, "site id")  # the coordinator's rule for site ids
        if out_path.exists():
            raise FileExistsError(f"{out_path}: already exists; refusing to overwrite")
        base = out_path.parent
        private_rel = f"{keys_dir}/site_ed25519.pem"
        public_rel = f"{keys_dir}/site_ed25519.pub.pem"
        secret_rel = f"{keys_dir}/pseudonym.secret"
        previous = os.umask(0o077)  # keys, secret and config: owner only
        try:
            (base / keys_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(base / keys_dir, 0o700)
            _, public = generate_keypair(base / private_rel, base / public_rel)
            new_secret(base / secret_rel)
        finally:
            os.umask(previous)
        out_path.write_text(
            CONFIG_TEMPLATE.format(
                site_id=site_id, private_key=private_rel, public_key=public_rel, secret=secret_rel
            )
        )
    except EXPECTED_ERRORS as exc:
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
    except EXPECTED_ERRORS as exc:
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
    try:
        pem = public_key.read_bytes() if public_key else None
        bundle = read_bundle(path, verify=True, public_key_pem=pem)
        check_contract(bundle)  # what the coordinator checks at ingest, checked here first
    except EXPECTED_ERRORS as exc:
        _fail(exc)
    out.print(f"[green]valid[/green] {describe_bundle(bundle)}", soft_wrap=True)


@app.command("export")
def export_command(
    path: Path = typer.Argument(..., help="Bundle directory."),
    output: Path = typer.Option(..., "-o", "--output", help="Tar file to write."),
) -> None:
    """Verify a bundle and pack it as one .tar for upload or offline transfer."""
    try:
        export_bundle(path, output)
    except EXPECTED_ERRORS as exc:
        _fail(exc)
    out.print(f"wrote {output}")


# Upload commands live in sites.client (coordinator engineer); registered here.
from sites.client import (  # noqa: E402
    status_command,
    submit_command,
    verify_receipts_command,
)

app.command("submit")(submit_command)
app.command("status")(status_command)
app.command("verify-receipts")(verify_receipts_command)

from sites.proposals_client import proposals_command  # noqa: E402

app.command("proposals")(proposals_command)

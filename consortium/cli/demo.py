"""`confed demo` command: a consortium end to end on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _mapping(option: str, value: str) -> tuple[str, str]:
    if "=" not in value:
        raise typer.BadParameter(f"{option} expects CODE=LABEL, e.g. 1=ASD; got {value!r}")
    code, label = (part.strip() for part in value.split("=", 1))
    return code, label


def demo_command(
    sites: int = typer.Option(
        None,
        "--sites",
        min=1,
        max=17,
        help="Simulated sites, largest REST-meta-MDD sites first [default: all 17].",
    ),
    effect_size: float = typer.Option(
        -0.2, "--effect-size", help="Planted d of mean DMN FC, MDD minus controls."
    ),
    out: Path = typer.Option(Path("demo-output"), "--out", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulation."),
    subjects_scale: float = typer.Option(
        1.0, "--subjects-scale", min=0.01, help="Multiplies the published group sizes."
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="Real sites (one folder each, like abide-pcp-ho111) instead of a simulation.",
    ),
    atlas: str = typer.Option("ho111", "--atlas", help="Atlas of --data time series."),
    pattern: str = typer.Option(
        "{subject_id}_rois_ho.1D.gz",
        "--pattern",
        help="Time series file of a subject in its site folder.",
    ),
    phenotypes: str = typer.Option(
        "participants.csv", "--phenotypes", help="Phenotype table in each --data site folder."
    ),
    subject_column: str = typer.Option("FILE_ID", "--subject-column"),
    dx_column: str = typer.Option("DX_GROUP", "--dx-column"),
    dx_case: str = typer.Option("1=ASD", "--dx-case", help="CODE=LABEL of the case group."),
    dx_control: str = typer.Option(
        "2=TDC", "--dx-control", help="CODE=LABEL of the control group."
    ),
    age_column: str = typer.Option("AGE_AT_SCAN", "--age-column"),
    sex_column: str = typer.Option("SEX", "--sex-column", help="Coded 1 = male, 2 = female."),
    fd_column: str = typer.Option(
        "func_mean_fd", "--fd-column", help="Mean FD column; empty for none."
    ),
    only_sites: str = typer.Option(
        None, "--only-sites", help="Comma-separated --data site folders to use."
    ),
    max_subjects: int = typer.Option(
        None, "--max-subjects", min=1, help="Use at most this many subjects per group and site."
    ),
    min_per_group: int = typer.Option(
        10, "--min-per-group", min=1, help="Sites with fewer cases or controls are not analysed."
    ),
    jobs: int = typer.Option(None, "--jobs", min=1, help="Site processes at once [default: CPUs]."),
    no_voxels: bool = typer.Option(False, "--no-voxels", help="Skip the voxel-wise analysis."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    mode: str = typer.Option(
        "pooled", "--mode", help="pooled (sites submit bundles) or federated (sites keep "
        "them; their agents answer the DMN and edge-wise analyses with aggregates only)",
    ),
    serve: bool = typer.Option(
        None, "--serve/--no-serve", show_default="when run in a terminal",
        help="Afterwards keep the coordinator running with the web portal until Ctrl-C.",
    ),
    port: int = typer.Option(8700, "--port", help="Port of the portal with --serve."),
) -> None:
    """Run a simulated (or real, --data) consortium end to end and write an HTML report."""
    from consortium.demo import DemoError, RealDataOptions, format_summary, run_demo

    if mode not in ("pooled", "federated"):
        typer.echo(f"error: --mode {mode!r}: choose pooled or federated", err=True)
        raise typer.Exit(2)
    real = None
    if data is not None:
        case_code, case_label = _mapping("--dx-case", dx_case)
        control_code, control_label = _mapping("--dx-control", dx_control)
        real = RealDataOptions(
            atlas=atlas,
            phenotypes=phenotypes,
            pattern=pattern,
            subject_column=subject_column,
            dx_column=dx_column,
            dx_values={case_code: case_label, control_code: control_label},
            dx_case=case_label,
            dx_control=control_label,
            age_column=age_column,
            sex_column=sex_column,
            fd_column=fd_column or None,
            sites=tuple(s.strip() for s in only_sites.split(",")) if only_sites else None,
            max_subjects=max_subjects,
        )
    try:
        result = run_demo(
            out,
            n_sites=sites,
            effect_size=effect_size,
            seed=seed,
            subjects_scale=subjects_scale,
            data=data,
            real=real,
            min_per_group=min_per_group,
            jobs=jobs,
            voxels=not no_voxels,
            progress=not quiet,
            federated=mode == "federated",
        )
    except (DemoError, ValueError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(format_summary(result.summary))
    if serve or (serve is None and sys.stdin.isatty() and sys.stdout.isatty()):
        from consortium.portal.demo_serve import serve_demo

        serve_demo(out / "coordinator", port, typer.echo)

"""`confed analyze dmn|networks|edges|voxels`: consortium analyses of a release.

The data come either from a coordinator release (``--release NAME --root DIR
[--db URL]``) or directly from bundle directories (``--bundles DIR ...``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


class Contrast(StrEnum):
    all = "all"
    recurrent = "recurrent"
    fedn = "fedn"
    fedn_vs_recurrent = "fedn_vs_recurrent"


class Harmonize(StrEnum):
    combat = "combat"
    none = "none"


def load_dataset(
    release: str | None, root: Path | None, db: str | None, bundles: list[Path] | None
):
    """The Dataset of a release, or of bundle directories when ``bundles`` is given."""
    from consortium.dataset import Dataset
    from sites.bundle import read_bundle

    if bundles:
        if release:
            raise typer.BadParameter("give either --release or --bundles, not both")
        return Dataset.from_bundles([read_bundle(path) for path in bundles])
    if not release or root is None:
        raise typer.BadParameter("give --release NAME with --root DIR, or --bundles DIR ...")
    from consortium.releases import open_release

    return open_release(root, release, db)


def _run(
    kind: str,
    release,
    root,
    db,
    bundles,
    contrast,
    harmonize,
    atlas,
    metric,
    permutations,
    seed,
    min_per_group,
    out,
    overwrite,
    quiet,
) -> None:
    from consortium.analysis.pipeline import run_analysis
    from consortium.dataset import DatasetError
    from consortium.errors import ConfedError
    from sites.bundle import BundleError

    try:
        dataset = load_dataset(release, root, db, bundles)
        path = run_analysis(
            dataset,
            kind,
            out,
            harmonize=harmonize.value,
            contrast=contrast.value,
            atlas=atlas,
            metric=metric,
            permutations=permutations,
            seed=seed,
            min_per_group=min_per_group,
            progress=not quiet,
            overwrite=overwrite,
        )
    except (
        BundleError,
        ConfedError,
        DatasetError,
        ValueError,
        KeyError,
        FileExistsError,
        LookupError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{kind} results written to {path}")


def _command(kind: str, summary: str):
    def command(
        out: Path = typer.Option(..., "--out", help="Results directory to create."),
        release: str = typer.Option(None, "--release", help="Release name."),
        root: Path = typer.Option(None, "--root", help="Coordinator root directory."),
        db: str = typer.Option(None, "--db", help="Database URL (default: the root's)."),
        bundles: list[Path] = typer.Option(
            None, "--bundles", help="Bundle directories instead of a release (repeatable)."
        ),
        contrast: Contrast = typer.Option(Contrast.all, "--contrast"),
        harmonize: Harmonize = typer.Option(Harmonize.combat, "--harmonize"),
        atlas: str = typer.Option(
            None,
            "--atlas",
            help="Atlas name, as the bundles carry it (default: the release's only atlas).",
        ),
        metric: str = typer.Option(None, "--metric", help="Voxel map (voxels only)."),
        permutations: int = typer.Option(0, "--permutations", min=0),
        seed: int = typer.Option(0, "--seed"),
        min_per_group: int = typer.Option(10, "--min-per-group", min=1),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        _run(
            kind,
            release,
            root,
            db,
            bundles,
            contrast,
            harmonize,
            atlas,
            metric,
            permutations,
            seed,
            min_per_group,
            out,
            overwrite,
            quiet,
        )

    command.__doc__ = summary
    return command


app.command("dmn")(
    _command(
        "dmn",
        "REST-meta-MDD mixed model on mean DMN FC (with and without ComBat), "
        "site meta-analysis and forest plot.",
    )
)
app.command("networks")(
    _command("networks", "The mixed model on every within- and between-network mean FC.")
)
app.command("edges")(
    _command("edges", "Mass mixed model over every edge: t/d matrices, FDR, optional permutations.")
)
app.command("voxels")(
    _command("voxels", "Mass mixed model over voxels: t, d and FDR-thresholded NIfTI maps.")
)

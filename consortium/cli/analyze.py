"""`confed analyze <kind>`: consortium analyses of a release, one command per registered kind.

The commands are built from the kind registry (:mod:`consortium.analysis.registry`)
when the group is listed or a command is looked up, so a kind registered by a
plug-in appears without touching this module. Options map one to one to the
fields of :class:`consortium.analysis.params.AnalysisParams`, which validates
them. The data come either from a coordinator release (``--release NAME --root
DIR [--db URL]``) or directly from bundle directories (``--bundles DIR ...``).

``--mode federated`` (default ``pooled``) reads no subject rows: with ``--root DIR
[--db URL]`` it creates tasks in the coordinator's database, which the running
coordinator server (``confed coord serve``) hands to the sites' agents
(``confed-site agent``) when they poll; the command waits for their aggregate
answers (``--timeout`` seconds per round; ``--missing wait|proceed``) and writes the
same ``results.json`` (:mod:`consortium.federated.analysis`). ``--site`` (repeatable)
chooses the sites asked (default: every registered site); ``--dx-case`` and
``--dx-control`` are the labels of the sites' ``dx`` column.

Permutation inference: ``--permutations N`` (Freedman-Lane, ``--seed``),
``--nbs-threshold T`` (edges), ``--tfce`` (voxels), ``--tail-approximation`` and
``--scheduler ADDRESS`` (a ``dask.distributed`` scheduler; the client is opened here
by :func:`consortium.analysis.cluster.connect` and passed to the pipeline).

Only typer and the standard library are imported at module level (``--help``
stays fast); the registries imported when the commands are built are stdlib-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

__all__ = ["app", "load_dataset"]


def load_dataset(
    release: str | None, root: Path | None, db: str | None, bundles: list[Path] | None
) -> Any:
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


class _RichProgress:
    """``progress(step, done, total)`` drawn as rich progress bars on stderr."""

    def __init__(self, kind: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            TextColumn(f"[bold]{kind}[/bold] {{task.description}}"),
            BarColumn(),
            TimeElapsedColumn(),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if step not in self._tasks:
            self._tasks[step] = self.bars.add_task(step, total=total)
        self.bars.update(self._tasks[step], completed=done, total=total)


def _run(
    kind: str, source: dict[str, Any], options: dict[str, Any], out: Path, flags: dict
) -> None:
    from consortium.analysis.cluster import connect
    from consortium.analysis.pipeline import make_params, run
    from consortium.dataset import DatasetError
    from consortium.errors import ConfedError
    from sites.bundle import BundleError

    errors = (BundleError, ConfedError, DatasetError, ValueError, KeyError, LookupError)
    try:
        params = make_params(kind, **{k: v for k, v in options.items() if v is not None})
        dataset = load_dataset(**source)
        with connect(params.scheduler) as client:
            options = {"overwrite": flags["overwrite"], "client": client}
            if flags["quiet"]:
                path = run(dataset, params, out, **options)
            else:
                display = _RichProgress(kind)
                with display.bars:
                    path = run(dataset, params, out, progress=display, **options)
    except (*errors, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{kind} results written to {path}")


def _run_federated(
    kind: str, source: dict[str, Any], options: dict[str, Any], out: Path, flags: dict
) -> None:
    from consortium.analysis.pipeline import make_params
    from consortium.errors import ConfedError
    from consortium.federated.orchestrator import FederatedIncomplete

    fed = flags["federated"]
    if source["root"] is None or source["release"] or source["bundles"]:
        message = "error: --mode federated needs --root DIR (and no --release/--bundles)"
        typer.echo(message, err=True)
        raise typer.Exit(1)
    try:
        params = make_params(kind, mode="federated",
                             **{k: v for k, v in options.items() if v is not None})  # fmt: skip
        from consortium.coordinator import Coordinator
        from consortium.federated.analysis import run_federated_analysis

        coord = Coordinator.open(source["root"], source["db"])
        try:
            sites = fed["sites"] or _registered_sites(coord)
            path = run_federated_analysis(
                coord, params, out, sites=sites, dx_labels=fed["dx_labels"],
                timeout=fed["timeout"], missing=fed["missing"], overwrite=flags["overwrite"],
            )  # fmt: skip
        finally:
            coord.close()
    except (ConfedError, FederatedIncomplete, ValueError, KeyError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{kind} results (federated, {len(sites)} sites asked) written to {path}")


def _registered_sites(coord: Any) -> list[str]:
    from sqlalchemy import select

    from consortium.db.models import Site

    with coord.db.session() as session:
        return sorted(session.execute(select(Site.id)).scalars())


def _choices(names: tuple[str, ...]) -> str:
    return ", ".join(names)


def _kind_command(kind: str, description: str) -> Any:
    """A typer app with the one command of ``kind``."""
    from consortium.analysis.contrasts import CONTRAST_NAMES
    from harmonization.registry import harmonizer_names

    def command(
        out: Path = typer.Option(..., "--out", help="Results directory to create."),
        release: str = typer.Option(None, "--release", help="Release name."),
        root: Path = typer.Option(None, "--root", help="Coordinator root directory."),
        db: str = typer.Option(None, "--db", help="Database URL (default: the root's)."),
        bundles: list[Path] = typer.Option(
            None, "--bundles", help="Bundle directories instead of a release (repeatable)."
        ),
        contrast: str = typer.Option("all", "--contrast", help=_choices(CONTRAST_NAMES)),
        harmonize: str = typer.Option(
            "combat", "--harmonize", help=_choices(harmonizer_names())
        ),
        ref_site: str = typer.Option(None, "--ref-site", help="Reference site (combat-ref)."),
        atlas: str = typer.Option(
            None, "--atlas", help="Atlas name, as the bundles carry it (default: the only one)."
        ),
        metric: str = typer.Option(None, "--metric", help="Voxel map (voxels only)."),
        permutations: int = typer.Option(
            0, "--permutations", min=0,
            help="Freedman-Lane permutations (FWE p; NBS, TFCE): whole-site sign flips "
            "with the site slope of Dx and >= 10 sites, else permutations within sites.",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the permutations."),
        nbs_threshold: float = typer.Option(
            None, "--nbs-threshold", help="Edges: NBS primary threshold on |t|."
        ),
        tfce: bool = typer.Option(False, "--tfce", help="Voxels: TFCE-corrected p maps."),
        tail_approximation: bool = typer.Option(
            False, "--tail-approximation",
            help="Generalized Pareto tail of the FWE p (>= 100 permutations).",
        ),
        scheduler: str = typer.Option(
            None, "--scheduler",
            help="dask.distributed scheduler ADDRESS for the permutations (default: local).",
        ),
        min_per_group: int = typer.Option(10, "--min-per-group", min=1),
        covariates: list[str] = typer.Option(
            None, "--covariate", help="Covariate (repeatable; default: the standard set)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        mode: str = typer.Option(
            "pooled", "--mode", help="pooled (subject rows of a release) or federated "
            "(the sites' aggregates, through the coordinator at --root and the sites' agents)",
        ),
        sites: list[str] = typer.Option(
            None, "--site", help="Federated: site asked (repeatable; default: all registered)."
        ),
        timeout: float = typer.Option(600.0, "--timeout", help="Federated: seconds per round."),
        missing: str = typer.Option(
            "wait", "--missing", help="Federated, silent site at the timeout: wait (stop, "
            "naming it) or proceed (without it, listed)",
        ),
        dx_case: str = typer.Option("MDD", "--dx-case", help="Federated: case label of dx."),
        dx_control: str = typer.Option(
            "HC", "--dx-control", help="Federated: control label of dx."
        ),
    ) -> None:
        source = {"release": release, "root": root, "db": db, "bundles": bundles}
        options = {
            "contrast": contrast, "harmonize": harmonize, "ref_site": ref_site, "atlas": atlas,
            "metric": metric, "permutations": permutations, "seed": seed,
            "min_per_group": min_per_group, "covariates": covariates or None,
            "nbs_threshold": nbs_threshold, "tfce": tfce or None,
            "tail_approximation": tail_approximation or None, "scheduler": scheduler,
        }  # fmt: skip
        flags = {"overwrite": overwrite, "quiet": quiet}
        if mode == "pooled":
            _run(kind, source, options, out, flags)
            return
        if mode != "federated" or missing not in ("wait", "proceed"):
            bad = f"--mode {mode!r}" if mode != "federated" else f"--missing {missing!r}"
            typer.echo(f"error: {bad}: choose pooled|federated and wait|proceed", err=True)
            raise typer.Exit(2)
        flags["federated"] = {
            "sites": sites or None, "timeout": timeout, "missing": missing,
            "dx_labels": {"case": dx_case, "control": dx_control},
        }  # fmt: skip
        _run_federated(kind, source, options, out, flags)

    command.__doc__ = description
    sub = typer.Typer(add_completion=False)
    sub.command(kind)(command)
    return sub


class _KindGroup(TyperGroup):
    """The ``analyze`` group: one command per kind registered at the time of the call."""

    def list_commands(self, ctx: Any) -> list[str]:
        from consortium.analysis.registry import kind_names

        return list(kind_names())

    def get_command(self, ctx: Any, name: str) -> Any:
        from consortium.analysis.registry import get_kind

        try:
            entry = get_kind(name)
        except KeyError:
            return None
        return typer.main.get_command(_kind_command(entry.name, entry.description))


app = typer.Typer(cls=_KindGroup, no_args_is_help=True, add_completion=False)


@app.callback()
def analyze() -> None:
    """Run consortium analyses on a data release (one command per registered kind)."""

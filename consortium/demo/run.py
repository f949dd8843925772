"""``confed demo``: :func:`run_demo` runs a whole consortium on one machine."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import CoordinatorServer, DemoError, _finish, _start, confed_command
from .site_setup import (
    RealDataOptions,
    _api,
    _init_site,
    _real_sites,
    _register,
    _simulate,
    _sites_run,
)
from .summary import _summarize

__all__ = ["MARKER", "RELEASE", "DemoResult", "operator_token", "run_demo"]

MARKER = ".confed-demo"
RELEASE = "demo-1"
# Permutation inference of the pooled analyses: a small number, to show the
# corrected results (edges: FWE p by max-|t| and NBS at |t| > 3; voxels: TFCE).
DEMO_PERMUTATIONS = 100
DEMO_NBS_THRESHOLD = 3.0


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path
    report: Path
    summary: dict[str, Any]


class _Stages:
    """Times stages and shows one progress bar per stage (rich)."""

    def __init__(self, show: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.timings: dict[str, float] = {}
        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show,
        )

    def __enter__(self) -> _Stages:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[Callable[[], None]]:
        task = self.progress.add_task(name, total=total)
        start = time.perf_counter()
        yield lambda: self.progress.advance(task)
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.progress.update(task, completed=total)


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise DemoError(f"{out} exists and is not empty (and is not an earlier demo's output)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("output of `confed demo`; safe to delete\n")


def run_demo(
    out: str | Path = "demo-output",
    n_sites: int | None = None,
    effect_size: float = -0.2,
    seed: int = 0,
    subjects_scale: float = 1.0,
    data: str | Path | None = None,
    real: RealDataOptions | None = None,
    min_per_group: int = 10,
    jobs: int | None = None,
    voxels: bool = True,
    progress: bool = True,
    federated: bool = False,
    permutations: int = DEMO_PERMUTATIONS,
) -> DemoResult:
    """Run a consortium end to end; see the module docstring.

    Parameters
    ----------
    out : path
        Output folder (sites, coordinator root, analyses, report, logs). An
        earlier demo output there is replaced; any other non-empty folder is
        refused.
    n_sites : int or None
        Simulated sites (largest REST-meta-MDD sites first); ``None``: all 17.
    effect_size : float
        Planted standardized difference of mean DMN FC (MDD minus controls).
    seed : int
        Seed of the simulation.
    subjects_scale : float
        Multiplies the published group sizes.
    data : path or None
        A folder of real sites (like ``abide-pcp-ho111``) instead of simulated ones.
    real : RealDataOptions or None
        Atlas, columns and diagnosis mapping of ``data`` (ABIDE defaults).
    min_per_group : int
        Sites with fewer cases or controls are left out of the analyses.
    jobs : int or None
        Site processes run at once (default: number of CPUs, at least 2).
    voxels : bool
        Run the voxel-wise analysis when the bundles hold maps.
    progress : bool
        Show progress bars on stderr.
    federated : bool
        The sites keep their bundles: no submission and no release; each site runs its
        federated agent as its own process and the DMN and edge-wise analyses run
        federated, without harmonization (:mod:`.federated`).
    permutations : int
        Freedman-Lane permutations of the pooled edge-wise (FWE p, NBS at |t| >
        ``DEMO_NBS_THRESHOLD``) and voxel-wise (TFCE) analyses; 0: none. Federated
        analyses run without permutations.
    """
    out = Path(out).resolve()
    _prepare_out(out)
    logs = out / "logs"
    jobs = jobs or max(2, os.cpu_count() or 2)
    summary: dict[str, Any] = {"mode": "real data" if data else "simulated"}
    if federated:
        summary["mode"] += ", federated"
    wall = time.perf_counter()
    root = out / "coordinator"
    with _Stages(progress) as stages:
        # The coordinator initializes in its own process while the sites' files are made.
        init = _start(
            confed_command(
                "coord", "init", "--root", str(root), "--min-per-group", str(min_per_group)
            ),
            logs / "coord-init.log",
        )
        sim = None
        if data is None:
            sites, sim = _simulate(out, n_sites, subjects_scale, effect_size, seed, jobs, stages)
        else:
            with stages.stage("describe real site folders"):
                data = Path(data).expanduser().resolve()  # relative to the caller's folder
                sites = _real_sites(data, out, real or RealDataOptions())
        with CoordinatorServer(root, logs / "coord-serve.log") as server:
            with stages.stage(
                "site keys, coordinator start, registration", total=len(sites)
            ) as advance:
                _finish(init, logs / "coord-init.log", "confed coord init")
                admin = operator_token(root)
                server.start()
                for site in sites:
                    _init_site(site, logs / f"{site.site_id}-init.log")
                server.wait_ready()
                for site in sites:
                    _register(site, server.url, admin)
                    advance()
            if federated:
                analyses = _federated(out, root, sites, server.url, logs, jobs, stages,
                                      (min_per_group, seed))  # fmt: skip
            else:
                summary["sites_without_bundle"] = _sites_run(
                    sites, server.url, logs, jobs, stages
                )
                with stages.stage("create release"):
                    release = _api(
                        "POST",
                        f"{server.url}/api/v1/releases",
                        admin,
                        "creating the release",
                        json={"name": RELEASE},
                    )
                summary["release"] = {
                    "name": release["name"], "hash": release.get("release_hash")
                }  # fmt: skip
        if not federated:
            analyses = _analyses(out, root, sim is not None, voxels, (min_per_group, seed),
                                 permutations, stages)  # fmt: skip
        with stages.stage("render report"):
            from consortium.report import render_report

            title = (
                "confed demo: simulated consortium"
                if sim is not None
                else f"confed demo: real data from {data}"
            )
            report = render_report(list(analyses.values()), out / "report.html", title=title)
    summary.update(
        _summarize(out, sites, analyses, sim, stages.timings, time.perf_counter() - wall, report)
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(out=out, report=report, summary=summary)


def _federated(
    out: Path, root: Path, sites: list, url: str, logs: Path, jobs: int, stages: _Stages,
    options: tuple[int, int],
) -> dict[str, Path]:  # fmt: skip
    """Sites compute (no submission), run their agents, and the analyses run federated."""
    from sites.bundle import read_bundle

    from .federated import agents, federated_analyses, sites_compute

    min_per_group, seed = options
    sites_compute(sites, logs, jobs, stages)
    # The consortium's agreed atlas and diagnosis labels (no subject data).
    first = read_bundle(sites[0].bundle)
    atlas, labels = first.atlases[0], dict(first.manifest["dx_labels"])
    with agents(sites, url, logs, min_cell=min(5, min_per_group)):
        return federated_analyses(out, root, sites, atlas, min_per_group, seed, labels, stages)


def _analyses(
    out: Path,
    root: Path,
    simulated: bool,
    voxels: bool,
    sizes: tuple[int, int],
    permutations: int,
    stages: _Stages,
) -> dict[str, Path]:
    from consortium.analysis.pipeline import run_analysis
    from consortium.releases import open_release

    min_per_group, seed = sizes
    dataset = open_release(root, RELEASE)
    atlas = dataset.atlases[0]
    kinds = ["dmn", "networks", "edges"] if simulated else ["edges"]
    if voxels and dataset.map_names:
        kinds.append("voxels")
    results: dict[str, Path] = {}
    with stages.stage("analyses (" + ", ".join(kinds) + ")", total=len(kinds)) as advance:
        for kind in kinds:
            results[kind] = run_analysis(
                dataset,
                kind,
                out / "analysis" / kind,
                harmonize="combat",
                atlas=atlas,
                min_per_group=min_per_group,
                seed=seed,
                progress=False,
                metric=dataset.map_names[0] if kind == "voxels" else None,
                **_inference(kind, permutations),
            )
            advance()
    return results


def _inference(kind: str, permutations: int) -> dict[str, Any]:
    """Permutation options of a demo analysis (none for dmn and networks)."""
    if not permutations or kind not in ("edges", "voxels"):
        return {}
    extra = {"nbs_threshold": DEMO_NBS_THRESHOLD} if kind == "edges" else {"tfce": True}
    return {"permutations": permutations, **extra}


def operator_token(root: Path) -> str:
    """A one-day admin token for the demo operator, issued with the coordinator's library.

    The same call ``confed coord token issue --role admin`` makes, audited as
    ``token.issue``; the token is returned, never read from printed output.
    """
    from consortium import audit
    from consortium.auth import issue_token
    from consortium.coordinator import Coordinator

    try:
        coord = Coordinator.open(root)
    except Exception as exc:  # a root that init did not finish: name it
        raise DemoError(f"cannot open the coordinator root {root}: {exc}") from exc
    try:
        with coord.db.session() as session:
            token, plaintext = issue_token(session, "admin", label="confed demo operator", days=1)
            audit.append(
                session, "demo:operator", "token.issue", f"token:{token.id}", {"role": "admin"}
            )
    finally:
        coord.close()
    return plaintext

"""``confed demo --mode federated``: the sites keep their bundles and answer through agents.

The sites compute their bundles as in the pooled demo but submit nothing. Each site
then runs its federated agent (``python -m sites.federated.cli --config agent.toml``)
as its own process, polling the coordinator server; the DMN model with the site
meta-analysis and the edge-wise model run federated
(:func:`consortium.federated.analysis.run_federated_analysis`), without harmonization.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .processes import DemoError, _run_all, _start, confed_command
from .site_setup import DemoSite

__all__ = ["FEDERATED_DEMO_KINDS", "agents", "federated_analyses", "sites_compute"]

FEDERATED_DEMO_KINDS = ("dmn", "edges")
ALLOW = '["mixed_stats", "mass_stats", "meta_summary"]'


def sites_compute(sites: list[DemoSite], logs: Path, jobs: int, stages: Any) -> None:
    """``confed site compute`` at every site, each in its own process; nothing is submitted."""
    with stages.stage("sites compute (no submission)", total=len(sites)) as advance:
        _run_all(
            [
                (s.site_id,
                 confed_command("site", "compute", "--config", str(s.config), "--out",
                                str(s.bundle), "--quiet"),
                 logs / f"{s.site_id}-compute.log")
                for s in sorted(sites, key=lambda s: -s.n_subjects)
            ],
            "confed site compute", jobs, advance,
        )  # fmt: skip


def _agent_config(site: DemoSite, url: str, min_cell: int) -> Path:
    keys = tomllib.loads(site.config.read_text())["keys"]
    private = (site.config.parent / keys["private_key"]).resolve()
    token = site.directory / "keys" / "coordinator.token"
    path = site.directory / "agent.toml"
    path.write_text(
        f'site_id = "{site.site_id}"\n[coordinator]\nurl = "{url}"\ntoken_file = "{token}"\n'
        f'[keys]\nprivate_key = "{private}"\n'
        f'[agent]\nbundle = "{site.bundle}"\nstate_dir = "{site.directory / "federated"}"\n'
        f"poll_seconds = 0.5\n[policy]\nallow = {ALLOW}\nmin_cell = {min_cell}\napprove = false\n"
    )
    return path


@contextmanager
def agents(sites: list[DemoSite], url: str, logs: Path, min_cell: int) -> Iterator[None]:
    """One federated agent process per site while the block runs; all stopped after."""
    procs: list[subprocess.Popen] = []
    try:
        for site in sites:
            config = _agent_config(site, url, min_cell)
            procs.append(_start([sys.executable, "-m", "sites.federated.cli", "--config",
                                 str(config)], logs / f"{site.site_id}-agent.log"))  # fmt: skip
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


def federated_analyses(
    out: Path, root: Path, sites: list[DemoSite], atlas: str, min_per_group: int, seed: int,
    dx_labels: dict[str, str], stages: Any,
) -> dict[str, Path]:  # fmt: skip
    """The federated DMN (with the site meta-analysis) and edge-wise analyses."""
    from consortium.analysis.errors import AnalysisError
    from consortium.analysis.pipeline import make_params
    from consortium.coordinator import Coordinator
    from consortium.federated.analysis import run_federated_analysis
    from consortium.federated.orchestrator import FederatedIncomplete

    results: dict[str, Path] = {}
    coord = Coordinator.open(root)
    label = "federated analyses (" + ", ".join(FEDERATED_DEMO_KINDS) + ")"
    try:
        with stages.stage(label, total=len(FEDERATED_DEMO_KINDS)) as advance:
            for kind in FEDERATED_DEMO_KINDS:
                params = make_params(kind, mode="federated", harmonize="none", atlas=atlas,
                                     min_per_group=min_per_group, seed=seed)  # fmt: skip
                results[kind] = run_federated_analysis(
                    coord, params, out / "analysis" / kind, sites=[s.site_id for s in sites],
                    dx_labels=dx_labels, timeout=1800, missing="proceed",
                )  # fmt: skip
                advance()
    except (AnalysisError, FederatedIncomplete) as exc:
        raise DemoError(f"federated analysis: {exc}") from exc
    finally:
        coord.close()
    return results

"""A real coordinator process and one site agent process per site (federated tests).

:func:`federated_world` registers the sites, writes their bundles and agent TOML files,
starts the coordinator server and the agents (``python -m sites.federated.cli``),
yields what the tests need and stops every process it started.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from consortium.coordinator import Coordinator
from consortium.registry import add_site
from tests.helpers.bundles import make_bundle
from tests.helpers.keys import make_keys
from tests.helpers.server import Server

ATLAS = "dosenbach160"


def start_agent(config: Path, log_path: Path) -> subprocess.Popen:
    """A federated site agent as its own process, output to ``log_path``."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(
            [sys.executable, "-m", "sites.federated.cli", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_agent(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


def _agent_toml(site: str, url: str, bundle, key, token_file, state, allow: str) -> str:
    return (
        f'site_id = "{site}"\n[coordinator]\nurl = "{url}"\ntoken_file = "{token_file}"\n'
        f'[keys]\nprivate_key = "{key}"\n'
        f'[agent]\nbundle = "{bundle}"\nstate_dir = "{state}"\npoll_seconds = 0.3\n'
        f"[policy]\nallow = {allow}\nmin_cell = 5\napprove = false\n"
    )


@contextmanager
def federated_world(tmp: Path, policies: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Sites (in ``policies``: site -> TOML allow-list) with agents, and the coordinator."""
    server = Server(tmp / "coord", None)
    coord = Coordinator.open(server.root)
    configs, bundles = {}, {}
    with coord.db.session() as s:
        for k, site in enumerate(policies):
            private, public = make_keys(tmp / "keys", site)
            token = add_site(s, site, site, public.read_text(), "test")[2]
            bundles[site] = make_bundle(tmp / "bundles", site, k, n_case=12 + 2 * k,
                                        n_control=13 + k, seed=7, atlas_name=ATLAS)  # fmt: skip
            (tmp / f"{site}.token").write_text(token)
            configs[site] = (private, tmp / f"{site}.token")
    server.start()
    agents = {}
    try:
        for site, allow in policies.items():
            private, token_file = configs[site]
            cfg = tmp / f"{site}-agent.toml"
            cfg.write_text(_agent_toml(site, server.url, bundles[site], private, token_file,
                                       tmp / f"{site}-state", allow))  # fmt: skip
            agents[site] = start_agent(cfg, tmp / f"{site}-agent.log")
        yield {"coord": coord, "server": server, "bundles": bundles, "tmp": tmp,
               "agents": agents}  # fmt: skip
    finally:
        for proc in agents.values():
            stop_agent(proc)
        server.kill(signal.SIGTERM)
        coord.close()

"""Run a federated computation: create the tasks, wait for the sites, combine.

:func:`run_federated` creates one task per site in the coordinator's database (the
site agents fetch them over the API), polls the database until every site answered
or the timeout passed, and returns the answers with every site that refused or did
not answer *named*. With ``missing="wait"`` a site that has not answered by the
timeout stops the run (:class:`FederatedIncomplete`); with ``missing="proceed"`` the
run goes on without it, and the outcome lists it. Nothing is dropped silently.

The drivers (:func:`federated_mixed`, :func:`federated_mass`, :func:`federated_meta`)
run one round and combine with :mod:`consortium.federated.combine`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from consortium.federated import combine
from consortium.federated.tasks import create_run, run_status

__all__ = [
    "FederatedIncomplete",
    "FederatedOutcome",
    "federated_mass",
    "federated_meta",
    "federated_mixed",
    "run_federated",
]

Missing = Literal["wait", "proceed"]


class FederatedIncomplete(RuntimeError):
    """Sites that did not answer in time (``missing="wait"``), or no usable answer."""

    def __init__(self, message: str, sites: Sequence[str]):
        super().__init__(message)
        self.sites = list(sites)


@dataclass
class FederatedOutcome:
    """Answers of one round: ``ok`` messages, refusals and silent sites, by name."""

    run_id: int
    kind: str
    messages: list[dict[str, Any]]
    refused: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def sites_used(self) -> list[str]:
        return [m["site"] for m in self.messages]

    def as_dict(self) -> dict[str, Any]:
        """The run's provenance for results.json: who answered, who refused and why."""
        return {
            "run_id": self.run_id, "kind": self.kind, "sites_used": self.sites_used,
            "refused": dict(self.refused), "missing": list(self.missing),
        }  # fmt: skip


def run_federated(
    coord: Any,
    kind: str,
    params: Mapping[str, Any],
    sites: Sequence[str],
    timeout: float = 600.0,
    missing: Missing = "wait",
    actor: str = "coordinator",
    poll_interval: float = 0.5,
    site_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> FederatedOutcome:
    """Ask ``sites`` one ``kind`` task and collect their answers.

    Parameters
    ----------
    coord : Coordinator
        Open coordinator (its database holds the tasks the agents fetch).
    kind, params : str, dict
        Task kind and parameters (see :mod:`sites.federated.compute`).
    sites : list of str
        Site ids asked.
    timeout : float
        Seconds to wait for every site.
    missing : {"wait", "proceed"}
        At the timeout, stop naming the silent sites (``"wait"``) or go on without
        them (``"proceed"``; they are listed in ``FederatedOutcome.missing``).
    site_params : dict, optional
        Site id -> parameters added to (overriding) ``params`` for that site's task.
    """
    if missing not in ("wait", "proceed"):
        raise ValueError(f"missing must be 'wait' or 'proceed', got {missing!r}")
    with coord.db.session() as session:
        run_id = create_run(session, kind, params, list(sites), actor, site_params).id
    deadline = time.monotonic() + timeout
    while True:
        with coord.db.session() as session:
            status = run_status(session, run_id)
        pending = [t["site"] for t in status["tasks"] if t["status"] == "pending"]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_interval)
    if pending and missing == "wait":
        raise FederatedIncomplete(
            f"federated {kind} run {run_id}: no answer within {timeout:g} s from site(s) "
            f"{', '.join(pending)}", pending,
        )  # fmt: skip
    done = [t for t in status["tasks"] if t["status"] == "done"]
    refused = {t["site"]: t["reason"] for t in status["tasks"] if t["status"] == "refused"}
    return FederatedOutcome(run_id, kind, [t["message"] for t in done], refused, pending)


def _require(outcome: FederatedOutcome) -> None:
    if not outcome.messages:
        named = {**outcome.refused, **{s: "no answer" for s in outcome.missing}}
        raise FederatedIncomplete(
            f"federated {outcome.kind} run {outcome.run_id}: no site sent statistics "
            f"({'; '.join(f'{s}: {r}' for s, r in named.items())})", list(named),
        )  # fmt: skip


def federated_mixed(
    coord: Any, design: Mapping[str, Any], source: Mapping[str, Any], sites: Sequence[str],
    reml: bool = False, feature: int = 0, **run: Any,
) -> tuple[Any, FederatedOutcome]:  # fmt: skip
    """The mixed model of one outcome from the sites' cross-products (DMN, networks)."""
    params = {"design": dict(design), "source": dict(source)}
    outcome = run_federated(coord, "mixed_stats", params, sites, **run)
    _require(outcome)
    return combine.combine_mixed(outcome.messages, design, reml, feature), outcome


def federated_mass(
    coord: Any, design: Mapping[str, Any], source: Mapping[str, Any], sites: Sequence[str],
    reml: bool = False, feature_names: Sequence[str] | None = None, **run: Any,
) -> tuple[Any, FederatedOutcome]:  # fmt: skip
    """Per-feature mixed models (edges, voxels) from the sites' cross-products."""
    params = {"design": dict(design), "source": dict(source)}
    outcome = run_federated(coord, "mass_stats", params, sites, **run)
    _require(outcome)
    return combine.combine_mass(outcome.messages, design, reml, feature_names), outcome


def federated_meta(
    coord: Any, design: Mapping[str, Any], source: Mapping[str, Any], sites: Sequence[str],
    min_per_group: int = 10, **run: Any,
) -> tuple[Any, Any, FederatedOutcome]:  # fmt: skip
    """Site table and random-effects pooled effect from the sites' OLS summaries."""
    params = {"design": dict(design), "source": dict(source), "min_per_group": min_per_group}
    outcome = run_federated(coord, "meta_summary", params, sites, **run)
    _require(outcome)
    every = outcome.messages + [
        {"site": s, "status": "refused", "reason": r} for s, r in outcome.refused.items()
    ]
    table, pooled = combine.combine_meta(every)
    return table, pooled, outcome

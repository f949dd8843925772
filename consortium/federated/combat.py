"""Distributed ComBat as federated rounds; the harmonized edges stay at the sites.

Three rounds (Chen et al. 2022, :mod:`harmonization.distributed`), one task per site
each, on the sites' connectivity with the analysis's design preserved (diagnosis and
covariates, coded as the pooled design codes them):

1. ``combat_stats``: each site's ``D'D`` and ``D'Y`` (a site below the minimum cell
   size refuses, as the pooled design excludes it);
2. ``combat_residuals``: per-edge residual sums of squares against the pooled
   coefficients;
3. ``combat_apply``: each site harmonizes its own edges with the pooled model and
   keeps them; it sends only its location/scale estimates.

A later task reads a site's harmonized edges by naming that site's ``combat_apply``
task (``source.harmonized``, :mod:`sites.federated.local`).
:func:`harmonized_round` runs ComBat and then one statistics round on its output; if a
site that took part in ComBat does not answer that round, ComBat is run again
without it, so the ComBat sites are always the model's sites (as in the pooled run).

Reference: Chen AA et al. (2022). Privacy-preserving harmonization via distributed
ComBat. NeuroImage 248:118822.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from consortium.federated import combine
from consortium.federated.orchestrator import FederatedIncomplete, FederatedOutcome

__all__ = ["federated_combat", "harmonized_round"]

Rounds = Callable[..., FederatedOutcome]


def _spec(sites: Sequence[str], columns: Sequence[str], ref_site: str | None) -> Any:
    from harmonization.covariates import CovariateEncoder
    from harmonization.distributed import DesignSpec

    return DesignSpec(tuple(sorted(sites)), CovariateEncoder(list(columns), {}), ref_site)


def _wire(model: Any) -> dict[str, Any]:
    return {
        "coef": model.coef.tolist(), "grand_mean": model.grand_mean.tolist(),
        "var_pooled": model.var_pooled.tolist(), "n_sites": int(model.n_sites),
        "ref_site": model.ref_site,
    }  # fmt: skip


def federated_combat(
    rounds: Rounds,
    design: Mapping[str, Any],
    atlas: str,
    n_edges: int,
    sites: Sequence[str],
    min_per_group: int,
    ref_site: str | None = None,
) -> dict[str, str]:
    """Run the three ComBat rounds over ``sites``; returns site -> ``combat_apply`` task id.

    A site refusing round 1 is left out and round 1 is asked again of the others (the
    agreed design lists the sites), until every asked site answers.
    """
    columns = list(design["fixed"])
    base = {
        "design": dict(design), "source": {"type": "connectivity", "atlas": atlas},
        "encoder": {"columns": columns, "levels": {}}, "min_per_group": min_per_group,
        "ref_site": ref_site, "dims": {"feature": n_edges},
    }  # fmt: skip
    sites = sorted(sites)
    while True:
        stats = rounds("combat_stats", {**base, "sites": sites}, sites)
        if sorted(stats.sites_used) == sites:
            break
        sites = sorted(stats.sites_used)
    base["sites"] = sites
    spec = _spec(sites, columns, ref_site)
    coef = combine.combine_combat_coefficients(spec, stats.messages)
    resid = rounds("combat_residuals", {**base, "coef": coef.coef.tolist()}, sites)
    _all_answered(resid, sites)
    counts = {m["site"]: m["n"] for m in stats.messages}
    model = combine.combine_combat_variance(spec, counts, coef, resid.messages)
    applied = rounds("combat_apply", {**base, "model": _wire(model)}, sites)
    _all_answered(applied, sites)
    return {m["site"]: m["task_id"] for m in applied.messages}


def _all_answered(outcome: FederatedOutcome, sites: Sequence[str]) -> None:
    lost = sorted(set(sites) - set(outcome.sites_used))
    if lost:
        named = {**outcome.refused, **{s: "no answer" for s in outcome.missing}}
        raise FederatedIncomplete(
            f"federated ComBat {outcome.kind} run {outcome.run_id}: site(s) that sent the "
            "first round did not answer (" + "; ".join(f"{s}: {named.get(s, 'no answer')}"
                                                      for s in lost) + ")", lost,
        )  # fmt: skip


def harmonized_round(
    rounds: Rounds,
    kind: str,
    tasks: Sequence[Mapping[str, Any]],
    sites: Sequence[str],
    atlas: str,
    n_edges: int,
    ref_site: str | None = None,
) -> list[FederatedOutcome]:
    """ComBat over ``sites``, then one ``kind`` round per task on the harmonized edges.

    The tasks share the ComBat design (that of the first task: diagnosis and
    covariates are preserved whatever the random part of the model).
    """
    sites = sorted(sites)
    first = tasks[0]
    while True:
        applied = federated_combat(rounds, first["design"], atlas, n_edges, sites,
                                   int(first.get("min_per_group", 0)), ref_site)  # fmt: skip
        outcomes = []
        for task in tasks:
            per_site = {
                s: {"source": {**task["source"], "harmonized": task_id}}
                for s, task_id in applied.items()
            }
            outcomes.append(rounds(kind, task, sorted(applied), site_params=per_site))
        used = set.intersection(*(set(o.sites_used) for o in outcomes))
        if used == set(applied):
            return outcomes
        if not used:
                    raise FederatedIncomplete(
                f"federated {kind}: no site answered every round on its harmonized data",
                sorted(applied),
            )
        sites = sorted(used)

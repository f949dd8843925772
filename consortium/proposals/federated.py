"""Remote analyses run federated: each site cuts, checks and summarises its own subjects.

With ``mode: federated`` a grant's analysis request is not computed on the pooled
release. The coordinator checks the request against the grant (columns, measure,
strata, ``min_cell_size`` on the whole analysed set, as the pooled path) and keeps
the analysed subject set for the differencing rule; each in-scope site's agent gets
one task carrying the request (:mod:`sites.federated.query`), applies its filters
and the ``min_cell_size`` rule to its own subjects *before* computing, and returns
its cross-products (``mixed_model``) or its OLS summary (``meta_analysis``). A site
that refuses or does not answer stops the query, named; a site whose analysed
counts differ from the grant's release stops it too. Results equal the pooled
remote result (:mod:`consortium.proposals.remote`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from consortium.analysis.results import RemoteMetaAnalysis, RemoteMixedModel, result_to_dict
from consortium.errors import ConfedError
from consortium.federated import combine
from consortium.federated.orchestrator import FederatedIncomplete, run_federated
from consortium.proposals.disclosure import DisclosureRefused
from consortium.proposals.remote import checked_subset, meta_fields, mixed_fields
from consortium.proposals.scope import ScopedData
from sites.disclosure import MIN_CELL_RULE
from sites.federated.query import query_columns

__all__ = ["run_federated_query"]


def _task(req: dict, frame: pd.DataFrame, categorical: list[str], dx_labels: dict, minimum: int):
    levels = {
        c: sorted(frame[c].astype(str).unique()) for c in categorical if c not in ("site", "dx")
    }
    query = {
        "dx": "dx", "case": dx_labels["case"], "control": dx_labels["control"],
        "filters": [dict(f) for f in req["filters"]], "covariates": list(req["covariates"]),
        "levels": levels, "min_cell": minimum,
    }  # fmt: skip
    fixed = query_columns(query)
    design = {"dx": "case", "fixed": fixed, "random_slopes": []}
    kind, atlas = req["measure"].split(":", 1)
    if kind != "networks":
        raise ConfedError("bad_measure", f"measure {req['measure']!r}: federated mode "
                          "analyses network measures only", 422)  # fmt: skip
    source = {"type": "networks", "atlas": atlas, "columns": [req["outcome"]]}
    params = {"design": design, "source": source, "query": query, "min_per_group": minimum}
    return params, fixed


def _collect(coord: Any, req: dict, params: dict, sites: list[str], timeout: float):
    kind = "mixed_stats" if req["analysis"] == "mixed_model" else "meta_summary"
    try:
        outcome = run_federated(coord, kind, params, sites, timeout=timeout, missing="wait")
    except FederatedIncomplete as exc:
        raise ConfedError("sites_unavailable", str(exc), 504) from None
    for site, reason in sorted(outcome.refused.items()):
        if MIN_CELL_RULE in reason:
            raise DisclosureRefused(MIN_CELL_RULE, f"site {site} refused: {reason}")
        raise ConfedError("site_refused", f"site {site} refused the task: {reason}", 422)
    return outcome


def _check_counts(messages: list[dict], frame: pd.DataFrame, dx_labels: dict) -> None:
    for m in messages:
        rows = frame[frame["site"] == m["site"]]
        want = {"case": int((rows["dx"] == dx_labels["case"]).sum()),
                "control": int((rows["dx"] == dx_labels["control"]).sum())}  # fmt: skip
        got = {k: int(v) for k, v in (m.get("groups") or {}).items()}
        if got != want:
            raise ConfedError(
                "federated_mismatch",
                f"site {m['site']} analysed {got} subjects, the grant's release selects "
                f"{want}: the site's data differ from the release, or the grant's strata "
                "merge or suppress cells there (run this query pooled)",
                409,
            )


def run_federated_query(
    coord: Any,
    req: dict,
    data: ScopedData,
    columns: list[str],
    minimum: int,
    strata: dict,
    timeout: float = 600.0,
) -> tuple[dict, pd.DataFrame]:
    """The remote analysis ``req`` computed by the sites; as :func:`remote.run_query`.

    Returns the aggregate result (with ``mode`` and the run's ``federated``
    provenance) and the analysed rows for the caller's history check.
    """
    if (req.get("harmonize") or "none") != "none":
        raise ConfedError("bad_request", "harmonize: federated remote analyses take "
                          "harmonize 'none' (use mode 'pooled')", 422)  # fmt: skip
    dx_labels = data.dx_labels
    frame, categorical, report, cells = checked_subset(
        req, data, dx_labels, columns, minimum, strata
    )
    params, fixed = _task(req, frame, categorical, dx_labels, minimum)
    sites = sorted(frame["site"].unique())
    outcome = _collect(coord, req, params, sites, timeout)
    _check_counts(outcome.messages, frame, dx_labels)
    mixed = req["analysis"] == "mixed_model"
    if mixed:
        if len(outcome.messages) < 2:
            raise ConfedError("too_few_sites", "a mixed model across sites needs two sites", 422)
        res = combine.combine_mixed(outcome.messages, params["design"], reml=True)
        fields = mixed_fields(res, req["outcome"], fixed)
    else:
        table, _ = combine.combine_meta(outcome.messages)
        fields = meta_fields(table, req["outcome"], fixed)
    result = (RemoteMixedModel if mixed else RemoteMetaAnalysis)(
        analysis=req["analysis"], measure=req["measure"], outcome=req["outcome"],
        harmonize="none", n_subjects=len(frame), cells=cells, strata=report, **fields,
    )  # fmt: skip
    out = {**result_to_dict(result), "mode": "federated", "federated": outcome.as_dict()}
    return out, frame[["subject", "site", "dx", "_row"]]

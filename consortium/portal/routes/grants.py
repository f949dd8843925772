"""What a grant holder does: exports (create, download) and remote aggregate analyses.

A refused remote analysis is shown with the disclosure rule that fired (the API
records the refusal, as for any API caller).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from consortium.api.deps import get_coordinator
from consortium.api.routers import proposal_grants as api
from consortium.api.schemas import IdPath
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.portal.csrf import csrf_protect
from consortium.portal.plots import interval_plot, result_intervals
from consortium.portal.render import api_dependency, done, page, parse
from consortium.proposals.remote import ANALYSES
from consortium.proposals.schemas import AnalysisRequest
from consortium.proposals.scope import GrantView
from sites.federated.query import OPS

router = APIRouter(dependencies=[Depends(csrf_protect)])
holder = api_dependency(api.post_export, "view")
researcher = api_dependency(api.post_export, "identity")


@router.post("/proposals/{code}/exports", summary="Build an export (grant holder)")
async def export(
    code: str,
    view: GrantView = Depends(holder),
    identity: Identity = Depends(researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    await api.post_export(code=code, view=view, identity=identity, coord=coord)
    return done(f"/proposals/{view.proposal_code}#exports", "created")


@router.get("/proposals/{code}/exports/{export_id}", summary="Download an export (grant holder)")
def download(
    code: str,
    export_id: IdPath,
    view: GrantView = Depends(api_dependency(api.get_export, "view")),
    identity: Identity = Depends(api_dependency(api.get_export, "identity")),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    return api.get_export(code=code, export_id=export_id, view=view, identity=identity,
                          coord=coord)


def _outcomes(coord: Coordinator, view: GrantView) -> dict[str, list[str]]:
    """Outcome columns of each granted network measure (names only)."""
    from consortium.proposals.scope import load_scoped

    data = load_scoped(coord.settings.root, coord.settings.db_url, view)
    return {m: [str(c) for c in t.columns if c not in ("subject", "site")]
            for m, t in sorted(data.tables.items())}


def _form(request: Request, view: GrantView, coord: Coordinator, status: int = 200,
          **extra) -> Response:
    from harmonization.registry import harmonizer_names

    return page(request, "remote.html", status, view=view, analyses=ANALYSES, ops=OPS,
                harmonizers=harmonizer_names(), outcomes=_outcomes(coord, view), **extra)


@router.get("/proposals/{code}/analyses", summary="Remote analysis form (grant holder)")
def analysis_form(
    request: Request,
    view: GrantView = Depends(holder),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    return _form(request, view, coord)


def _request_fields(form) -> dict:
    filters = []
    for i in range(3):
        column = str(form.get(f"filter_column_{i}", "")).strip()
        if not column:
            continue
        op, raw = str(form.get(f"filter_op_{i}", "eq")), str(form.get(f"filter_value_{i}", ""))
        value: object = raw
        if op in ("ge", "le"):
            try:
                value = float(raw)
            except ValueError as exc:
                raise ConfedError("invalid_request", f"filter {i + 1}: {raw!r} is not a number",
                                  422) from exc
        elif op == "in":
            value = [v.strip() for v in raw.split(",") if v.strip()]
        filters.append({"column": column, "op": op, "value": value})
    return {
        "analysis": str(form.get("analysis", "")),
        "measure": str(form.get("measure", "")),
        "outcome": str(form.get("outcome", "")),
        "covariates": [str(c) for c in form.getlist("covariates")],
        "filters": filters,
        "harmonize": str(form.get("harmonize", "none")),
    }


@router.post("/proposals/{code}/analyses", summary="Run a remote analysis (grant holder)")
async def analysis_run(
    code: str,
    request: Request,
    view: GrantView = Depends(holder),
    identity: Identity = Depends(researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = parse(AnalysisRequest, **_request_fields(await request.form()))
    try:
        out = await api.post_analysis(code=code, body=body, view=view, identity=identity,
                                      coord=coord)
    except ConfedError as err:
        rule = getattr(err, "rule", err.code)
        return await run_in_threadpool(_form, request, view, coord, err.status,
                                       refused=err.message, rule=rule, asked=body)
    plot = interval_plot(*result_intervals(out.result))
    return await run_in_threadpool(_form, request, view, coord, result=out.result,
                                   query_id=out.query_id, asked=body, plot=plot)

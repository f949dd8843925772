"""Analyses of a release (committee): a form of every ``AnalysisParams`` field, job
progress, and the report (the API's analysis jobs, :mod:`consortium.api.analyses`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from consortium.api import analyses as api
from consortium.api.deps import get_coordinator
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.portal.csrf import csrf_protect
from consortium.portal.paramform import form_fields, params_from_form
from consortium.portal.render import api_dependency, done, page, parse
from consortium.releases import list_releases

router = APIRouter(dependencies=[Depends(csrf_protect)])
committee = api_dependency(api.post_analysis)


@router.get("/analyses", summary="Analysis jobs and the form to run one (committee)")
def analyses_page(
    request: Request,
    release: str = Query("", max_length=128),
    identity: Identity = Depends(api_dependency(api.get_analyses)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    jobs = api.get_analyses(identity=identity, coord=coord)
    with coord.db.session() as session:
        releases = [r.name for r in list_releases(session)]
    return page(request, "analyses.html", jobs=jobs[::-1], fields=form_fields(),
                releases=releases, chosen=release)


@router.post("/analyses", summary="Queue an analysis (committee)")
async def analyses_run(
    request: Request,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    form = await request.form()
    body = parse(api.AnalysisCreate, release=str(form.get("release", "")),
                 **params_from_form(form))
    job = api.post_analysis(body=body, identity=identity, coord=coord)
    return done(f"/analyses/{job.id}", "queued")


@router.get("/analyses/{job_id}", summary="Progress and results of a job (committee)")
def analysis_page(
    job_id: str,
    request: Request,
    identity: Identity = Depends(api_dependency(api.get_analysis)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    job = api.get_analysis(job_id=job_id, identity=identity, coord=coord)
    return page(request, "analysis.html", job=job)


@router.get("/analyses/{job_id}/report", summary="The job's HTML report (committee)")
def analysis_report(
    job_id: str,
    identity: Identity = Depends(api_dependency(api.get_analysis_report)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    return api.get_analysis_report(job_id=job_id, identity=identity, coord=coord)

"""Sites (submissions, reasons, counts, QC by reason code) and releases (create, view).

Every page calls the API's own endpoint function with the identity admitted by the
API endpoint's own dependency (:func:`consortium.portal.render.api_dependency`).
"""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from consortium.api.deps import get_coordinator
from consortium.api.routers import releases as api_releases
from consortium.api.routers import sites as api_sites
from consortium.api.schemas import ReleaseCreate
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import Submission
from consortium.errors import ConfedError
from consortium.portal.csrf import csrf_protect
from consortium.portal.render import api_dependency, done, page, parse
from consortium.releases import current_submissions, open_submission

router = APIRouter(dependencies=[Depends(csrf_protect)])
committee = api_dependency(api_releases.post_release)


def qc_summary(coord: Coordinator, submission_id: int) -> dict[str, int]:
    """Excluded subjects per QC reason code of one stored submission."""
    with coord.db.session() as session:
        sub = session.get(Submission, submission_id)
        try:
            bundle = open_submission(coord, session, sub)
        except ConfedError as err:
            return {f"unreadable: {err.message}": 0}
        return dict(Counter(bundle.qc_reasons["code"].astype(str)))


@router.get("/sites", summary="Sites and their current submissions (committee)")
def sites_page(
    request: Request,
    identity: Identity = Depends(api_dependency(api_sites.get_sites)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    sites = api_sites.get_sites(identity=identity, coord=coord)
    with coord.db.session() as session:
        current = {s.site_id: s for s in current_submissions(session)}
        rows = [(s, current.get(s.id)) for s in sites]
        return page(request, "sites.html", rows=rows)


@router.get("/sites/{site_id}", summary="One site's submissions and uploads")
def site_page(
    site_id: str,
    request: Request,
    identity: Identity = Depends(api_dependency(api_sites.site_status)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    status = api_sites.site_status(site_id=site_id, limit=100, identity=identity, coord=coord)
    qc = qc_summary(coord, status.current.id) if status.current else {}
    return page(request, "site.html", status=status, qc=qc)


@router.get("/releases", summary="Releases (committee)")
def releases_page(
    request: Request,
    identity: Identity = Depends(api_dependency(api_releases.get_releases)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    releases = api_releases.get_releases(identity=identity, coord=coord)
    with coord.db.session() as session:
        preview = current_submissions(session)
        return page(request, "releases.html", releases=releases, preview=preview)


@router.post("/releases", summary="Freeze a release (committee)")
def releases_create(
    name: str = Form(..., max_length=200),
    sites: list[str] = Form(default_factory=list),
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = parse(ReleaseCreate, name=name.strip(), sites=sites or None)
    out = api_releases.post_release(body=body, identity=identity, coord=coord)
    return done(f"/releases/{out.name}", "created")


@router.get("/releases/{name}", summary="One release: contents and hash (committee)")
def release_page(
    name: str,
    request: Request,
    identity: Identity = Depends(api_dependency(api_releases.get_one_release)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    release = api_releases.get_one_release(name=name, identity=identity, coord=coord)
    with coord.db.session() as session:
        subs = {m.submission_id: session.get(Submission, m.submission_id) for m in release.members}
        return page(request, "release.html", release=release, subs=subs)

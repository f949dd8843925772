"""Analysis jobs: run ``confed analyze`` kinds on a release from the API (admin, steering).

A job runs :func:`consortium.analysis.pipeline.run` in a background
thread, one job at a time (the analyses are CPU-bound and the coordinator is
usually a small machine). Results go to ``<root>/analyses/<job id>/results``
and the job's state to ``<root>/analyses/<job id>/job.json``, so finished jobs
survive a restart of the server; a job that was running when the server stopped
is reported as failed.

Permutations run on the coordinator's ``scheduler`` setting (a ``dask.distributed``
address, or dask's local scheduler); a request's ``scheduler`` must be empty or
that same address (a client connecting to an arbitrary scheduler would trust it).
"""

from __future__ import annotations

import json
import os
import threading
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from consortium import audit
from consortium.analysis.params import AnalysisParams
from consortium.analysis.results import from_json, to_dict
from consortium.api.deps import get_coordinator, require_roles
from consortium.api.schemas import ERROR_RESPONSES, ReleaseName
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError

router = APIRouter(prefix="/analyses", tags=["analyses"], responses=ERROR_RESPONSES)
committee = require_roles("admin", "steering")
_RUN_LOCK = threading.Lock()  # one analysis at a time per server process
_STATE_LOCK = threading.Lock()
_STARTED: set[str] = set()  # jobs started by this server process


class AnalysisCreate(AnalysisParams):
    """An analysis request: :class:`~consortium.analysis.params.AnalysisParams` and a release."""

    release: ReleaseName = Field(description="name of an existing release")


class AnalysisOut(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    request: AnalysisCreate
    submitted_by: str
    submitted_at: str
    finished_at: str | None = None
    error: str | None = None
    results: dict[str, Any] | None = Field(
        None, description="the run's results.json (schema confed.analysis/2) once done"
    )


def _jobs_dir(coord: Coordinator) -> Path:
    return Path(coord.settings.root) / "analyses"


def _job_file(coord: Coordinator, job_id: str) -> Path:
    try:
        uuid.UUID(hex=job_id)
    except ValueError as exc:
        raise ConfedError("not_found", f"no analysis job {job_id!r}", 404) from exc
    return _jobs_dir(coord) / job_id / "job.json"


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfedError("not_found", f"no analysis job {path.parent.name!r}", 404)
    return json.loads(path.read_text())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _update(path: Path, **changes: Any) -> None:
    with _STATE_LOCK:
        state = _read_state(path)
        state.update(changes)
        _write_state(path, state)


def _run_job(
    root: Path, db_url: str | None, job_dir: Path, request: AnalysisCreate, scheduler: str | None
) -> None:
    from consortium.analysis.cluster import connect
    from consortium.analysis.pipeline import run
    from consortium.releases import open_release

    state_path = job_dir / "job.json"
    with _RUN_LOCK:
        _update(state_path, status="running")
        try:
            dataset = open_release(root, request.release, db_url)
            params = AnalysisParams(**request.model_dump(exclude={"release"}))
            with connect(scheduler) as client:
                run(dataset, params, job_dir / "results", client=client)
        except Exception as exc:  # the job records any failure for the caller to read
            _update(
                state_path,
                status="failed",
                finished_at=_now(),
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=5),
            )
            return
        _update(state_path, status="done", finished_at=_now())


def _out(coord: Coordinator, state: dict[str, Any]) -> AnalysisOut:
    if state["status"] in ("queued", "running") and state["id"] not in _STARTED:
        state = {
            **state,
            "status": "failed",
            "error": "the server stopped before this job finished; submit it again",
        }
    results = None
    if state["status"] == "done":
        text = (_jobs_dir(coord) / state["id"] / "results" / "results.json").read_text()
        try:
            results = to_dict(from_json(text))
        except ValueError:  # a job finished before schema confed.analysis/2: as written
            results = json.loads(text)
    return AnalysisOut(**{k: v for k, v in state.items() if k != "traceback"}, results=results)


@router.post(
    "",
    response_model=AnalysisOut,
    status_code=202,
    summary="Queue an analysis of a release (admin, steering)",
)
def post_analysis(
    body: AnalysisCreate,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> AnalysisOut:
    from consortium.releases import get_release

    scheduler = coord.settings.scheduler
    if body.scheduler is not None and body.scheduler != scheduler:
        raise ConfedError(
            "invalid_request",
            f"scheduler: the coordinator runs permutations on its configured scheduler "
            f"({scheduler or 'local'}); a request cannot name another ({body.scheduler!r})",
            422,
        )
    with coord.db.session() as session:
        get_release(session, body.release)  # 404 before anything is queued
        job_id = uuid.uuid4().hex
        audit.append(
            session,
            identity.actor,
            "analysis.submit",
            f"release:{body.release}",
            {"job": job_id, **body.model_dump()},
        )
    job_dir = _jobs_dir(coord) / job_id
    job_dir.mkdir(parents=True, mode=0o700)
    os.chmod(job_dir.parent, 0o700)
    state = {
        "id": job_id,
        "status": "queued",
        "request": body.model_dump(),
        "submitted_by": identity.actor,
        "submitted_at": _now(),
        "finished_at": None,
        "error": None,
    }
    _write_state(job_dir / "job.json", state)
    thread = threading.Thread(
        target=_run_job,
        name=f"analysis-{job_id[:8]}",
        daemon=True,
        args=(Path(coord.settings.root), coord.settings.db_url, job_dir, body, scheduler),
    )
    _STARTED.add(job_id)
    thread.start()
    return _out(coord, state)


@router.get("", response_model=list[AnalysisOut], summary="List analysis jobs")
def get_analyses(
    identity: Identity = Depends(committee), coord: Coordinator = Depends(get_coordinator)
) -> list[AnalysisOut]:
    folder = _jobs_dir(coord)
    states = [_read_state(p) for p in sorted(folder.glob("*/job.json"))] if folder.is_dir() else []
    out = [_out(coord, s) for s in sorted(states, key=lambda s: s["submitted_at"])]
    with coord.db.session() as session:
        audit.append(session, identity.actor, "analysis.list", "analyses", {"n": len(out)})
    return out


@router.get("/{job_id}", response_model=AnalysisOut, summary="Status and results of a job")
def get_analysis(
    job_id: str,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> AnalysisOut:
    out = _out(coord, _read_state(_job_file(coord, job_id)))
    with coord.db.session() as session:
        audit.append(session, identity.actor, "analysis.read", f"analysis:{job_id}", {})
    return out


@router.get(
    "/{job_id}/report",
    response_class=HTMLResponse,
    summary="The job's results as a self-contained HTML report",
)
def get_analysis_report(
    job_id: str,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> HTMLResponse:
    from consortium.report import render_report

    state = _read_state(_job_file(coord, job_id))
    if state["status"] != "done":
        raise ConfedError("conflict", f"analysis job {job_id} is {state['status']}", 409)
    job_dir = _jobs_dir(coord) / job_id
    html = render_report(
        [job_dir / "results"],
        job_dir / "report.html",
        title=f"Analysis of release {state['request']['release']}",
    )
    with coord.db.session() as session:
        audit.append(session, identity.actor, "analysis.report", f"analysis:{job_id}", {})
    return HTMLResponse(html.read_text())

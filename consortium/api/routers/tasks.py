"""Federated tasks: sites fetch their pending tasks and post signed aggregate messages.

Site tokens list their own pending tasks and answer them; admin and steering create
runs and follow them. The answers are validated against the message contract
(:mod:`sites.federated.messages`) and the site's registered Ed25519 key before they
are stored; task creation, every delivery, refusal and rejected message is in the
audit chain (polling for tasks is not, so an agent's polling does not flood it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field

from consortium.api.deps import get_coordinator, require_roles
from consortium.api.schemas import ERROR_RESPONSES
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.federated import tasks as service

router = APIRouter(prefix="/federated", tags=["federated"], responses=ERROR_RESPONSES)


class RunCreate(BaseModel):
    """A federated run: one task of ``kind`` for each listed site."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="task kind, e.g. mixed_stats, mass_stats, meta_summary")
    params: dict[str, Any] = Field(default_factory=dict, description="task parameters")
    sites: list[str] = Field(min_length=1, description="site ids asked")


class MessageIn(BaseModel):
    """A site's message: the header is checked here, the rest by the message contract."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    schema_: str = Field(alias="schema")
    kind: str
    task_id: str
    site: str
    status: str


@router.get("/tasks", summary="This site's pending federated tasks (site)")
def list_pending(
    identity: Identity = Depends(require_roles("site")),
    coord: Coordinator = Depends(get_coordinator),
) -> list[dict[str, Any]]:
    with coord.db.session() as session:
        return [service.task_view(t) for t in service.pending_tasks(session, identity.site_id)]


@router.post("/tasks/{task_id}/result", summary="Answer a federated task (site)")
def post_result(
    task_id: str,
    message: MessageIn = Body(..., description="the signed message"),
    identity: Identity = Depends(require_roles("site")),
    coord: Coordinator = Depends(get_coordinator),
) -> dict[str, Any]:
    with coord.db.session() as session:
        task, created, error = service.deliver(
            session, task_id, identity.site_id, message.model_dump(by_alias=True), identity.actor
        )
        out = {"task": service.task_view(task), "created": created}
    if error:
        raise ConfedError("invalid_message", error, 422)
    return out


@router.post("/runs", status_code=201, summary="Start a federated run (admin, steering)")
def create_run(
    body: RunCreate,
    identity: Identity = Depends(require_roles("admin", "steering")),
    coord: Coordinator = Depends(get_coordinator),
) -> dict[str, Any]:
    with coord.db.session() as session:
        run = service.create_run(session, body.kind, body.params, body.sites, identity.actor)
        session.flush()
        return service.run_status(session, run.id)


@router.get("/runs/{run_id}", summary="A federated run and each site's answer (admin, steering)")
def get_run(
    run_id: int,
    identity: Identity = Depends(require_roles("admin", "steering")),
    coord: Coordinator = Depends(get_coordinator),
) -> dict[str, Any]:
    with coord.db.session() as session:
        return service.run_status(session, run_id)

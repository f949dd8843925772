"""Federated tasks: sites fetch their pending tasks and post signed aggregate messages.

Site tokens list their own pending tasks and answer them; admin and steering create
runs and follow them. The answers are validated against the message contract
(:mod:`sites.federated.messages`) and the site's registered Ed25519 key before they
are stored; task creation, every delivery, refusal and rejected message is in the
audit chain (polling for tasks is not, so an agent's polling does not flood it).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from consortium.api.deps import get_coordinator, require_roles
from consortium.api.schemas import ERROR_RESPONSES, IdPath
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


TaskId = Annotated[
    str, PathParam(pattern=r"^[0-9a-f-]{1,36}$", description="task id (as listed by GET /tasks)")
]


class TaskOut(BaseModel):
    """A task as its site and the committee see it."""

    model_config = ConfigDict(populate_by_name=True)
    id: str
    run_id: int
    site: str
    kind: str
    schema_: str = Field(alias="schema", serialization_alias="schema")
    params: dict[str, Any]
    status: str
    reason: str | None = None
    created_at: str
    answered_at: str | None = None
    message: dict[str, Any] | None = Field(None, description="the stored message (runs only)")


class DeliveryOut(BaseModel):
    """The task after a delivery; ``created`` is false for a retried identical message."""

    task: TaskOut
    created: bool


class RunOut(BaseModel):
    """A federated run with each site's task."""

    id: int
    kind: str
    params: dict[str, Any]
    created_at: str
    created_by: str
    counts: dict[str, int]
    tasks: list[TaskOut]


class MessageIn(BaseModel):
    """A site's message: the header is checked here, the rest by the message contract."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    schema_: str = Field(alias="schema")
    kind: str
    task_id: str
    site: str
    status: str


@router.get(
    "/tasks",
    response_model=list[TaskOut],
    response_model_by_alias=True,
    summary="This site's pending federated tasks (site)",
)
def list_pending(
    identity: Identity = Depends(require_roles("site")),
    coord: Coordinator = Depends(get_coordinator),
) -> list[dict[str, Any]]:
    with coord.db.session() as session:
        return [service.task_view(t) for t in service.pending_tasks(session, identity.site_id)]


@router.post(
    "/tasks/{task_id}/result",
    response_model=DeliveryOut,
    response_model_by_alias=True,
    summary="Answer a federated task (site)",
)
def post_result(
    task_id: TaskId,
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


@router.post(
    "/runs",
    status_code=201,
    response_model=RunOut,
    response_model_by_alias=True,
    summary="Start a federated run (admin, steering)",
)
def create_run(
    body: RunCreate,
    identity: Identity = Depends(require_roles("admin", "steering")),
    coord: Coordinator = Depends(get_coordinator),
) -> dict[str, Any]:
    with coord.db.session() as session:
        run = service.create_run(session, body.kind, body.params, body.sites, identity.actor)
        session.flush()
        return service.run_status(session, run.id)


@router.get(
    "/runs/{run_id}",
    response_model=RunOut,
    response_model_by_alias=True,
    summary="A federated run and each site's answer (admin, steering)",
)
def get_run(
    run_id: IdPath,
    identity: Identity = Depends(require_roles("admin", "steering")),
    coord: Coordinator = Depends(get_coordinator),
) -> dict[str, Any]:
    with coord.db.session() as session:
        return service.run_status(session, run_id)

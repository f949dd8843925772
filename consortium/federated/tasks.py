"""Federated runs and tasks in the coordinator's database, with their audit entries.

The API router and the orchestrator both go through these functions: creating a run
(one task per site, audited as ``federated.task.create``), listing a site's pending
tasks, accepting a site's signed message (``federated.task.deliver``), a refusal
(``federated.task.refuse``) or rejecting a message that breaks the contract
(``federated.task.reject``). Delivery is idempotent by task id: the same message
again is a duplicate, a different one for an answered task a conflict.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.db.base import utcnow
from consortium.db.models import FederatedRun, FederatedTask, Site
from consortium.db.models.federated import TASK_STATES
from consortium.errors import ConfedError
from sites.federated.messages import (
    KINDS,
    SCHEMA,
    MessageError,
    canonical_bytes,
    validate_message,
    verify_signature,
)
from sites.keys import KeyFileError, load_public_key

__all__ = ["create_run", "deliver", "pending_tasks", "run_status", "task_view"]


def create_run(
    session: Session,
    kind: str,
    params: Mapping[str, Any],
    sites: Sequence[str],
    actor: str,
    site_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> FederatedRun:
    """A run asking each of ``sites`` one ``kind`` task (``site_params`` adds per-site params)."""
    if kind not in KINDS:
        known = sorted(KINDS)
        raise ConfedError("invalid_kind", f"unknown task kind {kind!r} (known: {known})", 422)
    if not sites:
        raise ConfedError("invalid_sites", "a federated run needs at least one site", 422)
    if len(set(sites)) != len(sites):
        raise ConfedError("invalid_sites", f"sites listed twice in {list(sites)}", 422)
    for site_id in sites:
        if session.get(Site, site_id) is None:
            raise ConfedError("not_found", f"site {site_id} not found", 404)
    run = FederatedRun(kind=kind, params=dict(params), created_by=actor)
    session.add(run)
    session.flush()
    for site_id in sorted(sites):
        task = FederatedTask(
            id=str(uuid.uuid4()), run_id=run.id, site_id=site_id, kind=kind,
            params={**params, **(site_params or {}).get(site_id, {})},
            status="pending", reason="", deliveries=0,
        )  # fmt: skip
        session.add(task)
        session.flush()
        audit.append(
            session, actor, "federated.task.create", f"federated_task:{task.id}",
            {"run": run.id, "site": site_id, "kind": kind},
        )  # fmt: skip
    return run


def task_view(task: FederatedTask, with_message: bool = False) -> dict[str, Any]:
    """The task as the API shows it (to its site: without the stored message)."""
    out = {
        "id": task.id, "run_id": task.run_id, "site": task.site_id, "kind": task.kind,
        "schema": SCHEMA, "params": task.params, "status": task.status, "reason": task.reason,
        "created_at": task.created_at.isoformat(),
        "answered_at": task.answered_at.isoformat() if task.answered_at else None,
    }  # fmt: skip
    if with_message:
        out["message"] = task.message
    return out


def pending_tasks(session: Session, site_id: str) -> list[FederatedTask]:
    """The site's tasks still waiting for an answer, oldest first."""
    query = (
        select(FederatedTask)
        .where(FederatedTask.site_id == site_id, FederatedTask.status == "pending")
        .order_by(FederatedTask.created_at, FederatedTask.id)
    )
    return list(session.execute(query).scalars())


def _digest(message: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(message)).hexdigest()


def _check(task: FederatedTask, site: Site, message: Mapping[str, Any]) -> None:
    if not isinstance(message, Mapping):
        raise MessageError("message: not a JSON object")
    for field, want in (("task_id", task.id), ("site", site.id), ("kind", task.kind)):
        if message.get(field) != want:
            raise MessageError(f"{field}: expected {want!r}, got {message.get(field)!r}")
    try:
        key = load_public_key(site.public_key_pem.encode(), f"site {site.id}")
    except KeyFileError as exc:
        raise MessageError(str(exc)) from exc
    verify_signature(message, key)
    validate_message(message, task.params.get("dims"), task.params.get("min_cell"))


def deliver(
    session: Session, task_id: str, site_id: str, message: Mapping[str, Any], actor: str
) -> tuple[FederatedTask, bool, str | None]:
    """Accept a site's answer to a task.

    Returns the task, whether the answer was new, and the contract error of a
    rejected message (audited; the caller answers 422 once the audit entry is
    committed). Raises ``ConfedError`` 404 for a task of another site (as for one
    that does not exist) and 409 for a different message for a task already answered.
    """
    task = session.get(FederatedTask, task_id)
    if task is None or task.site_id != site_id:
        raise ConfedError("not_found", f"task {task_id} not found", 404)
    if task.status != "pending":
        if task.message is not None and _digest(task.message) == _digest(message):
            return task, False, None
        raise ConfedError(
            "conflict", f"task {task_id} was already answered with a different message", 409
        )
    site = session.get(Site, site_id)
    try:
        _check(task, site, message)
    except MessageError as exc:
        task.deliveries += 1
        audit.append(
            session, actor, "federated.task.reject", f"federated_task:{task.id}",
            {"run": task.run_id, "site": site_id, "kind": task.kind, "error": str(exc)},
        )  # fmt: skip
        return task, False, f"site {site_id}: {exc}"
    task.status = "done" if message["status"] == "ok" else "refused"
    task.reason = message.get("reason", "")
    task.message = dict(message)
    task.answered_at = utcnow()
    task.deliveries += 1
    action = "federated.task.deliver" if task.status == "done" else "federated.task.refuse"
    audit.append(
        session, actor, action, f"federated_task:{task.id}",
        {"run": task.run_id, "site": site_id, "kind": task.kind, "reason": task.reason,
         "message_sha256": _digest(message)},
    )  # fmt: skip
    return task, True, None


def run_status(session: Session, run_id: int) -> dict[str, Any]:
    """The run and each site's task: pending, done or refused (with the reason)."""
    run = session.get(FederatedRun, run_id)
    if run is None:
        raise ConfedError("not_found", f"federated run {run_id} not found", 404)
    tasks = [task_view(t, with_message=True) for t in run.tasks]
    counts = {state: sum(t["status"] == state for t in tasks) for state in TASK_STATES}
    return {
        "id": run.id, "kind": run.kind, "params": run.params,
        "created_at": run.created_at.isoformat(), "created_by": run.created_by,
        "counts": counts, "tasks": tasks,
    }  # fmt: skip

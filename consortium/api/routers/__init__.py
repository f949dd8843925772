"""Router registry: every router here is mounted under ``/api/v1`` by ``create_app``.

Extension point: a new resource writes ``consortium/api/routers/<resource>.py`` with
``router = APIRouter(prefix="/<resource>", tags=["<resource>"])`` and appends it below.
"""

from fastapi import APIRouter

from consortium.api import analyses
from consortium.api.routers import (
    audit,
    health,
    members,
    proposal_grants,
    proposals,
    register,
    releases,
    sites,
    submissions,
    tasks,
    tokens,
)

ROUTERS: list[APIRouter] = [
    health.router,
    tokens.router,
    sites.router,
    submissions.router,
    releases.router,
    audit.router,
    analyses.router,
    members.router,
    proposals.router,
    proposal_grants.router,
    register.router,
    tasks.router,
]

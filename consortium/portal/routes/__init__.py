"""Portal routers, one module per page group; mounted at ``/`` by :func:`mount`."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI


def routers() -> list[APIRouter]:
    from consortium.portal.routes import (
        admin,
        analyses,
        audit,
        auth,
        dashboard,
        grants,
        proposals,
        sites,
    )

    return [
        auth.router,
        dashboard.router,
        sites.router,
        proposals.router,
        grants.router,
        analyses.router,
        audit.router,
        admin.router,
    ]


def mount(app: FastAPI) -> None:
    """Add every portal route to ``app`` (kept out of the OpenAPI document)."""
    for router in routers():
        app.include_router(router, include_in_schema=False)

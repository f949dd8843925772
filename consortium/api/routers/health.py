"""Liveness and readiness (no authentication)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Depends
from sqlalchemy import text

from consortium.api.app import VERSION
from consortium.api.deps import get_coordinator
from consortium.api.schemas import Health
from consortium.coordinator import Coordinator

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", response_model=Health, summary="Service and database are up; free disk space")
def health(coord: Coordinator = Depends(get_coordinator)) -> Health:
    with coord.db.session() as session:
        session.execute(text("SELECT 1"))
    free = shutil.disk_usage(coord.settings.root).free
    return Health(
        status="ok",
        version=VERSION,
        database=coord.db.engine.dialect.name,
        disk="low" if free < coord.settings.disk_low_bytes else "ok",
        disk_free_bytes=free,
    )

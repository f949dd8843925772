"""Run the coordinator API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from consortium.api import create_app
from consortium.coordinator import Coordinator
from consortium.settings import Settings

log = logging.getLogger("confed.coordinator")


def serve(root: str, host: str = "127.0.0.1", port: int = 8700, db_url: str | None = None) -> None:
    """Migrate the database, clear leftovers of interrupted ingests, and serve.

    One process serves all requests (uploads are processed in a thread pool); run
    TLS in a reverse proxy in front of it (see ``docs/operator/guide.md``).
    """
    settings = Settings.load(root, db_url)
    coord = Coordinator(settings)
    removed = coord.store.clean_tmp()
    if removed:
        log.warning("removed %d leftover temporary file(s) of interrupted writes", removed)
    app = create_app(settings, coord)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)

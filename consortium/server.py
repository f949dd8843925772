"""Run the coordinator API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from consortium.api import create_app
from consortium.coordinator import Coordinator
from consortium.settings import Settings

log = logging.getLogger("confed.coordinator")


def _check_checkpoints(coord: Coordinator) -> None:
    """Log loudly when the database no longer holds the newest signed checkpoint."""
    from consortium.receipts import ADVICE, check_latest

    with coord.db.session() as session:
        problem = check_latest(session, coord.settings.checkpoint_path, coord.notary.public_pem)
    if problem:
        log.error("audit log contradicts the signed checkpoints: %s. %s", problem, ADVICE)


def serve(root: str, host: str = "127.0.0.1", port: int = 8700, db_url: str | None = None) -> None:
    """Migrate the database, clear leftovers of interrupted ingests, and serve.

    One process serves all requests (uploads are processed in a thread pool); run
    TLS in a reverse proxy in front of it (see ``docs/operator/guide.md``).
    """
    settings = Settings.load(root, db_url)
    coord = Coordinator(settings)
    _check_checkpoints(coord)
    removed = coord.store.clean_tmp()
    if removed:
        log.warning("removed %d leftover temporary file(s) of interrupted writes", removed)
    app = create_app(settings, coord)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)

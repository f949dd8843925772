"""The web portal: server-rendered pages over the coordinator's own rules (issue #14).

Served by the coordinator's FastAPI app at ``/`` next to the API at ``/api/v1``.
Only :mod:`consortium.portal.models` is imported eagerly (by the table registry);
the routers live in :mod:`consortium.portal.routes`.
"""

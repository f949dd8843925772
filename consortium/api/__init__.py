"""HTTP API of the coordinator (FastAPI).

``create_app(settings)`` builds the application; routers are listed in
``consortium.api.routers.ROUTERS`` and mounted under ``/api/v1``.
"""

from consortium.api.app import API_PREFIX, create_app

__all__ = ["API_PREFIX", "create_app"]

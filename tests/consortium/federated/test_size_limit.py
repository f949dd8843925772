"""The federated result route has its own body cap; every other route keeps max_json_bytes."""

from __future__ import annotations

from types import SimpleNamespace

from consortium.api.app import API_PREFIX, PUBLIC_PATHS, SIZED_ROUTES, STREAMED_ROUTES
from consortium.api.guard import Guard
from consortium.settings import Settings


def test_result_route_cap_is_its_own(tmp_path):
    settings = Settings(root=tmp_path)
    coord = SimpleNamespace(settings=settings)
    guard = Guard(None, PUBLIC_PATHS, STREAMED_ROUTES, SIZED_ROUTES)
    result = {"method": "POST", "path": f"{API_PREFIX}/federated/tasks/abc-123/result"}
    assert guard._cap(coord, result) == settings.max_federated_message_bytes
    assert settings.max_federated_message_bytes > 2_000_000 > settings.max_json_bytes
    for scope in (
        {"method": "POST", "path": f"{API_PREFIX}/federated/runs"},
        {"method": "GET", "path": f"{API_PREFIX}/federated/tasks/abc/result"},
        {"method": "POST", "path": f"{API_PREFIX}/federated/tasks/a/b/result"},
    ):
        assert guard._cap(coord, scope) == settings.max_json_bytes, scope

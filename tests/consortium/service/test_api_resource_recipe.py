"""Recipe "add an API resource", tried with a toy resource.

The recipe's checklist:

1. ``consortium/api/routers/<resource>.py`` holds
   ``router = APIRouter(prefix="/<resource>", tags=[...], responses=ERROR_RESPONSES)``;
   every route takes its caller through a role dependency
   (``Annotated[Identity, Depends(require_roles(...))]``) and declares a pydantic
   ``response_model``.
2. The router is appended to :data:`consortium.api.routers.ROUTERS`.
3. Each new route gets its allowed roles in ``MATRIX`` of
   ``tests/consortium/test_authorization_matrix.py`` (and ``MISSING`` / ``BODIES``
   where they apply).

Step 3 is enforced: the matrix's route walk (``_routes``) finds the toy routes,
and the comparison of ``test_matrix_covers_every_route`` names them until they
have entries. The toy routes' role checks are then tried in-process.
"""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient
from pydantic import BaseModel

from consortium.api import API_PREFIX, create_app, routers
from consortium.api.deps import require_roles
from consortium.api.schemas import ERROR_RESPONSES, IdPath
from consortium.auth import Identity, issue_token
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from tests.consortium.test_authorization_matrix import COMMITTEE, MATRIX, P, _routes
from tests.helpers.server import init_coordinator

TOYS = {1: "teddy", 2: "kite"}


class ToyOut(BaseModel):
    id: int
    name: str


router = APIRouter(prefix="/toys", tags=["toys"], responses=ERROR_RESPONSES)
Committee = Annotated[Identity, Depends(require_roles("admin", "steering"))]


@router.get("", response_model=list[ToyOut], summary="List toys (committee)")
def list_toys(identity: Committee) -> list[ToyOut]:
    return [ToyOut(id=i, name=name) for i, name in TOYS.items()]


@router.get("/{toy_id}", response_model=ToyOut, summary="One toy (committee)")
def get_toy(toy_id: IdPath, identity: Committee) -> ToyOut:
    if toy_id not in TOYS:
        raise ConfedError("not_found", f"toy {toy_id} not found", 404)
    return ToyOut(id=toy_id, name=TOYS[toy_id])


#: Step 3 of the recipe: the toy routes' entries for MATRIX.
TOY_MATRIX = {("GET", f"{P}/toys"): COMMITTEE, ("GET", f"{P}/toys/{{toy_id}}"): COMMITTEE}


@pytest.fixture
def toy_app(tmp_path, monkeypatch):
    """The coordinator app with the toy router appended to ROUTERS (step 2)."""
    root = tmp_path / "coord"
    admin = init_coordinator(root)
    coord = Coordinator.open(root)
    monkeypatch.setattr(routers, "ROUTERS", [*routers.ROUTERS, router])
    with coord.db.session() as session:
        tokens = {
            "admin": admin,
            "steering": issue_token(session, "steering", label="recipe")[1],
            "researcher": issue_token(session, "researcher", label="recipe")[1],
        }
    yield create_app(coord.settings, coord), tokens
    coord.close()


def test_route_without_matrix_entry_is_caught(toy_app):
    app, _ = toy_app
    from tests.consortium.portal.matrix import PORTAL_MATRIX

    routes = _routes(app.routes) - set(PORTAL_MATRIX)  # the portal's rows: its own file
    # what test_matrix_covers_every_route compares: the toy routes have no entry yet
    assert sorted(routes - set(MATRIX)) == sorted(TOY_MATRIX)
    assert set(MATRIX) - routes == set()
    # with the recipe's step 3 done, the walk and the matrix agree
    assert routes == set(MATRIX) | set(TOY_MATRIX)


def test_toy_routes_enforce_their_roles(toy_app):
    app, tokens = toy_app
    allowed = TOY_MATRIX[("GET", f"{P}/toys")]  # the matrix's role names: admin, steering
    with TestClient(app) as client:
        for role, token in [*tokens.items(), ("anonymous", None)]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            listing = client.get(f"{API_PREFIX}/toys", headers=headers)
            one = client.get(f"{API_PREFIX}/toys/2", headers=headers)
            missing = client.get(f"{API_PREFIX}/toys/99", headers=headers)
            if role in allowed:
                assert listing.status_code == 200, listing.text
                assert listing.json() == [{"id": 1, "name": "teddy"}, {"id": 2, "name": "kite"}]
                assert one.json() == {"id": 2, "name": "kite"}
                assert missing.status_code == 404
            else:
                refused = 401 if token is None else 403
                assert {r.status_code for r in (listing, one, missing)} == {refused}, role
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        bad_id = client.get(f"{API_PREFIX}/toys/0", headers=admin)
        assert bad_id.status_code == 422  # IdPath: ids start at 1
    spec = app.openapi()
    assert spec["paths"][f"{API_PREFIX}/toys"]["get"]["responses"]["403"]  # ERROR_RESPONSES

"""Tokens, roles and the JSON error shape, against a real server process."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from consortium.db.session import default_sqlite_url


def _engine(server):
    return sa.create_engine(server.db_url or default_sqlite_url(server.root))


def _error(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return body["error"]["message"]


def test_tokens_and_roles(server, site_keys):
    token = server.add_site("S01", site_keys["S01"][1])
    server.add_site("S02", site_keys["S02"][1])
    assert token.startswith("cfd_") and len(token) - 4 >= 43  # 32 random bytes, base64url

    with server.client(token) as c:
        me = c.get("/tokens/me").json()
    assert me["role"] == "site" and me["site_id"] == "S01"

    # Unknown, missing and malformed tokens: 401 with the stable error shape.
    with server.client("cfd_" + "A" * 43) as c:
        _error(c.get("/tokens/me"), 401, "unauthorized")
    import httpx

    _error(httpx.get(f"{server.url}/api/v1/sites"), 401, "unauthorized")

    # Role checks: a site may not list sites, create releases, or read another site.
    with server.client(token) as c:
        _error(c.get("/sites"), 403, "forbidden")
        _error(c.post("/releases", json={"name": "r1"}), 403, "forbidden")
        assert "S02" in _error(c.get("/sites/S02/status"), 403, "forbidden")
        assert c.get("/sites/S01/status").status_code == 200
    # Admin and steering may not upload (only sites submit data).
    with server.client() as c:
        _error(c.post("/submissions", content=b"x"), 403, "forbidden")
        steering = c.post("/tokens", json={"role": "steering", "label": "chair"}).json()
    with server.client(steering["token"]) as c:
        assert c.get("/sites").status_code == 200
        _error(c.post("/tokens", json={"role": "admin"}), 403, "forbidden")

    # Only hashes are stored; the plaintext appears nowhere in the database.
    with _engine(server).connect() as conn:
        rows = conn.execute(sa.text("SELECT token_hash FROM tokens")).scalars().all()
        dump = " ".join(str(v) for r in conn.execute(sa.text("SELECT * FROM tokens")) for v in r)
    assert hashlib.sha256(token.encode()).hexdigest() in rows
    assert token not in dump and server.admin_token not in dump

    # Revocation takes effect on the next request.
    with server.client() as c:
        r = c.delete(f"/tokens/{me['token_id']}")
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
    with server.client(token) as c:
        assert "revoked" in _error(c.get("/tokens/me"), 401, "unauthorized")

    # Expiry: push the steering token's expiry into the past.
    past = datetime.now(UTC) - timedelta(seconds=1)
    with _engine(server).begin() as conn:
        conn.execute(
            sa.text("UPDATE tokens SET expires_at = :t WHERE id = :i"),
            {"t": past, "i": steering["info"]["id"]},
        )
    with server.client(steering["token"]) as c:
        assert "expired" in _error(c.get("/sites"), 401, "unauthorized")

    # Bad requests and unknown resources keep the same error shape.
    with server.client() as c:
        _error(
            c.post("/sites", json={"id": "../x", "name": "x", "public_key_pem": "x"}),
            422,
            "invalid_request",
        )
        assert "not valid PEM" in _error(
            c.post("/sites", json={"id": "S03", "name": "x", "public_key_pem": "junk"}),
            400,
            "bad_public_key",
        )
        _error(
            c.post(
                "/sites",
                json={"id": "S02", "name": "x", "public_key_pem": site_keys["S02"][1].read_text()},
            ),
            409,
            "conflict",
        )
        _error(c.get("/releases/nope"), 404, "not_found")
        _error(c.get("/submissions/999"), 404, "not_found")

    _openapi_served_and_reference_up_to_date(server)


def _openapi_served_and_reference_up_to_date(server):
    from consortium.api.app import openapi_spec
    from consortium.openapi_docs import render
    from tests.conftest import REPO

    with server.client() as c:
        served = c.get("/openapi.json").json()
    assert served == openapi_spec()
    assert all(p.startswith("/api/v1/") for p in served["paths"])
    committed = (REPO / "docs" / "operator" / "api.md").read_text()
    assert committed == render(), "docs/operator/api.md is stale: run `confed coord openapi`"

"""Audit chain tampering, migrations matching the models, store write-once behaviour."""

from __future__ import annotations

import sqlalchemy as sa

from consortium.db.session import default_sqlite_url


def _engine(server):
    return sa.create_engine(server.db_url or default_sqlite_url(server.root))


def test_audit_detects_modified_deleted_reordered(server, site_keys):
    server.add_site("S01", site_keys["S01"][1])
    with server.client() as c:
        for _ in range(3):
            assert c.get("/sites").status_code == 200
    assert "audit log intact" in server.cli("audit", "verify").stdout
    server.kill()  # the log must not grow while we tamper with it
    engine = _engine(server)

    def verify():
        res = server.cli("audit", "verify", check=False)
        return res.returncode, res.stdout

    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT seq, action FROM audit_log ORDER BY seq")).all()
    assert len(rows) >= 5

    # Modified entry.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET action = 'x' WHERE seq = 3"))
    code, out = verify()
    assert code == 1 and "entry 3: content does not match its hash (modified)" in out
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET action = :a WHERE seq = 3"), {"a": rows[2][1]})
    assert verify()[0] == 0

    # Reordered entries: swap the content of 3 and 4, keeping their sequence numbers.
    from consortium.db.models import AuditEntry

    table = AuditEntry.__table__
    content = [c for c in table.c if c.name != "seq"]

    def swap():
        with engine.begin() as conn:
            r3, r4 = (
                conn.execute(sa.select(*content).where(table.c.seq == s)).one()._asdict()
                for s in (3, 4)
            )
            conn.execute(table.update().where(table.c.seq == 3).values(**r4))
            conn.execute(table.update().where(table.c.seq == 4).values(**r3))

    swap()
    code, out = verify()
    assert code == 1 and "link broken" in out
    swap()
    assert verify()[0] == 0

    # Deleted entry in the middle, and deleted entries at the end.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 2"))
    code, out = verify()
    assert code == 1 and "entry 3: expected sequence number 2" in out
    last = rows[-1][0]
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq >= 2"))
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = :s"), {"s": last})
    code, out = verify()
    assert code == 1 and "truncated" in out
    engine.dispose()


def test_fsck_detects_corrupted_and_missing_objects(server, site_keys, small_tars):
    import os

    token = server.add_site("S07", site_keys["S07"][1])
    assert server.upload(token, small_tars["S07"]).status_code == 201
    objects = sorted(p for p in (server.root / "objects").rglob("*") if p.is_file())
    assert all((p.stat().st_mode & 0o222) == 0 for p in objects), "objects are read-only"
    victim, gone = objects[0], objects[1]
    os.chmod(victim, 0o644)
    victim.write_bytes(victim.read_bytes() + b"!")
    gone.unlink()
    res = server.cli("fsck", check=False)
    assert res.returncode == 1
    assert (
        f"object {victim.name}: size" in res.stdout and f"object {gone.name}: missing" in res.stdout
    )


def test_migrations_match_models(tmp_path, db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import consortium.db.models  # noqa: F401
    from consortium import migrations
    from consortium.db.base import Base

    url = db_url or f"sqlite:///{tmp_path / 'm.sqlite3'}"
    migrations.upgrade(url)
    migrations.upgrade(url)  # idempotent
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        head = conn.execute(sa.text("SELECT seq, entry_hash FROM audit_head")).one()
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert tuple(head) == (0, "0" * 64)

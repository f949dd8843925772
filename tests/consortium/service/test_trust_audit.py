"""The audit chain anchored outside the database: signed checkpoints and receipts.

Someone who can write the database can rewrite the whole audit log and recompute
every hash and the chain head: the chain alone then says "intact". These tests
do exactly that against a real ``confed coord serve`` (SQLite and PostgreSQL)
after real site uploads, and check that ``confed coord audit verify`` (against
the checkpoint file) and ``confed site verify-receipts`` (against the receipts
the sites kept) both catch it and name the entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from consortium.audit import entry_hash, verify_chain
from consortium.db.models import AuditEntry, AuditHead
from consortium.db.session import Database, default_sqlite_url
from sites.client import read_connection, submit
from sites.receipts import RECEIPTS_FILE, Receipt, verify_receipt
from tests.helpers.server import Server, confed, serving

SITES = ("S01", "S02", "S03")
ALLOWED = {"ok", "missing", "altered", "bad-signature"}


def _site_config(folder: Path, site: str, url: str, token: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "coordinator.token").write_text(token)
    config = folder / "site.toml"
    config.write_text(
        f'site_id = "{site}"\n\n[coordinator]\nurl = "{url}"\ntoken_file = "coordinator.token"\n'
    )
    return config


class Consortium:
    """A coordinator with three sites that submitted through the real site client."""

    def __init__(self, server: Server, tmp_path: Path, site_keys, small_tars):
        self.server = server
        self.configs: dict[str, Path] = {}
        for site in SITES:
            token = self.server.add_site(site, site_keys[site][1])
            self.configs[site] = _site_config(tmp_path / site, site, self.server.url, token)
        with self.server.client() as c:  # more audited actions before the uploads
            for _ in range(4):
                assert c.get("/sites").status_code == 200
        for site in SITES:
            conn = read_connection(self.configs[site])
            answer, _ = submit(small_tars[site], conn, retries=0)
            assert answer["created"] and "receipt_problem" not in answer, answer
        conn = read_connection(self.configs["S01"])
        answer, _ = submit(small_tars["S01"], conn, retries=0)  # a duplicate: its own receipt
        assert not answer["created"] and answer["receipt"], answer
        with self.server.client() as c:
            assert c.get("/submissions").status_code == 200
        conn = read_connection(self.configs["S03"])
        submit(small_tars["S03"], conn, retries=0)  # the last entries are site uploads

    @property
    def checkpoints(self) -> Path:
        return self.server.root / "audit-checkpoints.jsonl"

    def checkpointed(self) -> list[int]:
        return [json.loads(line)["seq"] for line in self.checkpoints.read_text().splitlines()]

    def receipts(self, site: str) -> list[Receipt]:
        path = self.configs[site].parent / RECEIPTS_FILE
        return [Receipt(**json.loads(line)["receipt"]) for line in path.read_text().splitlines()]

    def verify_receipts(self, site: str):
        config = self.configs[site]
        return confed(
            "site",
            "verify-receipts",
            "--config",
            str(config),
            "--url",
            self.server.url,
            "--token-file",
            str(config.parent / "coordinator.token"),
            check=False,
        )

    def verify(self):
        return self.server.cli("audit", "verify", check=False)

    def database(self) -> Database:
        return Database(self.server.db_url or default_sqlite_url(self.server.root))


@pytest.fixture
def consortium(tmp_path, db_url, site_keys, small_tars):
    with serving(tmp_path / "coord", db_url) as server:
        yield Consortium(server, tmp_path, site_keys, small_tars)


def _rows(db: Database) -> list[dict]:
    with db.session() as s:
        entries = s.execute(sa.select(AuditEntry).order_by(AuditEntry.seq)).scalars()
        return [{c.name: getattr(e, c.name) for c in AuditEntry.__table__.columns} for e in entries]


def _rechain(db: Database, rows: list[dict]) -> None:
    """Write ``rows`` back as a consistent chain (renumbered, hashes and head recomputed)."""
    prev = "0" * 64
    for seq, row in enumerate(rows, 1):
        row.update(seq=seq, prev_hash=prev)
        row["entry_hash"] = prev = entry_hash(
            seq, row["ts"], row["actor"], row["action"], row["target"], row["details"], prev
        )
    with db.session() as s:
        s.execute(sa.delete(AuditEntry))
        s.flush()
        s.add_all(AuditEntry(**row) for row in rows)
        s.execute(
            sa.update(AuditHead).where(AuditHead.id == 1).values(seq=len(rows), entry_hash=prev)
        )


def _chain_ok(db: Database) -> bool:
    with db.session() as s:
        return verify_chain(s).ok


def _first_checkpointed(world: Consortium, seq: int) -> int:
    return min(s for s in world.checkpointed() if s >= seq)


def test_untampered_log_verifies_with_checkpoints_and_receipts(consortium):
    out = consortium.verify()
    assert out.returncode == 0 and "audit log intact" in out.stdout, out.stdout
    assert "signed checkpoint" in out.stdout
    with consortium.server.client() as c:
        api = c.get("/audit/verify").json()
        key = c.get("/audit/key").json()
    assert api["ok"] and api["n_checkpoints"] > 10, api
    for site in SITES:
        receipts = consortium.receipts(site)
        assert receipts and all(
            verify_receipt(r, key["public_key_pem"].encode()) is None for r in receipts
        )
        res = consortium.verify_receipts(site)
        assert res.returncode == 0, res.stdout
        assert "0 not ok" in res.stdout and "ok: receipt line 1" in res.stdout
    mode = (consortium.configs["S01"].parent / RECEIPTS_FILE).stat().st_mode & 0o777
    assert mode == 0o600
    key_file = consortium.server.root / "keys" / "coordinator_ed25519.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # every receipt-producing entry has a checkpoint, written after its commit
    receipted = {r.seq for site in SITES for r in consortium.receipts(site)}
    assert receipted <= set(consortium.checkpointed())


def test_rejected_upload_carries_a_receipt(consortium):
    token = (consortium.configs["S02"].parent / "coordinator.token").read_text()
    with consortium.server.client(token) as c:
        r = c.post(
            "/submissions", content=b"not a tar", headers={"Content-Type": "application/x-tar"}
        )
        key = c.get("/audit/key").json()["public_key_pem"].encode()
        receipt = Receipt(**r.json()["receipt"])
        assert r.status_code == 400 and r.json()["error"]["code"]
        assert verify_receipt(receipt, key) is None
        current = c.get(f"/audit/entries/{receipt.seq}/hash").json()
    assert current["entry_hash"] == receipt.entry_hash
    assert receipt.seq in consortium.checkpointed()


def _rewrite_entry_10(rows: list[dict]) -> tuple[list[dict], int]:
    rows[9]["details"] = {**rows[9]["details"], "forged": True}
    return rows, 10


def _delete_entry(rows: list[dict], receipted: int) -> tuple[list[dict], int]:
    del rows[receipted - 1]
    return rows, receipted


def _truncate(rows: list[dict]) -> tuple[list[dict], int]:
    return rows[:-5], len(rows) - 4


@pytest.mark.parametrize("attack", ["rewrite", "delete", "truncate"])
def test_rechained_tampering_is_caught(consortium, attack):
    first_receipt = min(r.seq for r in consortium.receipts("S01"))
    consortium.server.kill()  # the log must not grow while we tamper with it
    db = consortium.database()
    rows = _rows(db)
    assert len(rows) > max(10, first_receipt)
    if attack == "rewrite":
        rows, changed = _rewrite_entry_10(rows)
    elif attack == "delete":
        rows, changed = _delete_entry(rows, first_receipt)
    else:
        rows, changed = _truncate(rows)
    _rechain(db, rows)
    assert _chain_ok(db), "the attack must be realistic: the chain alone says intact"
    db.dispose()

    out = consortium.verify()
    assert out.returncode == 1, out.stdout
    named = _first_checkpointed(consortium, changed)
    assert f"first mismatch: entry {named}:" in out.stdout, (named, out.stdout)
    if attack == "truncate":
        assert "truncated" in out.stdout
    assert "Stop the service" in out.stdout

    consortium.server.start()
    assert "contradicts the signed checkpoints" in consortium.server.log.read_text()
    with consortium.server.client() as c:
        api = c.get("/audit/verify").json()
    assert not api["ok"] and any(f"entry {named}:" in p for p in api["problems"]), api
    bad_seen = False
    for site in SITES:
        res = consortium.verify_receipts(site)
        statuses = {
            line.split(":")[0] for line in res.stdout.splitlines() if ": receipt line" in line
        }
        assert statuses <= ALLOWED, res.stdout
        bad = {"altered", "missing"} & statuses
        expect_bad = any(r.seq >= changed for r in consortium.receipts(site))
        assert bool(bad) == expect_bad, (site, changed, res.stdout)
        assert res.returncode == (1 if expect_bad else 0), res.stdout
        bad_seen |= bool(bad)
    assert bad_seen


def test_checkpoint_line_with_bad_signature(consortium):
    consortium.server.kill()
    lines = consortium.checkpoints.read_text().splitlines()
    record = json.loads(lines[2])
    record["entry_hash"] = ("f" if record["entry_hash"][0] != "f" else "e") + record["entry_hash"][
        1:
    ]
    lines[2] = json.dumps(record)
    consortium.checkpoints.write_text("\n".join(lines) + "\n")
    out = consortium.verify()
    assert out.returncode == 1
    assert "checkpoint line 3" in out.stdout and "signature does not verify" in out.stdout


def test_researchers_get_receipts_for_exports_downloads_and_results(tmp_path):
    """Export, download and a released remote-analysis result each carry a valid receipt."""
    from tests.consortium.test_authorization_matrix import BODIES, P, World

    world = World(tmp_path)
    try:
        code = world.active_proposal("r_grant")
        key = world.call("r_grant", "GET", f"{P}/audit/key").json()["public_key_pem"].encode()
        export = world.call("r_grant", "POST", f"{P}/proposals/{code}/exports")
        assert export.status_code == 201, export.text
        download = world.call(
            "r_grant", "GET", f"{P}/proposals/{code}/exports/{export.json()['id']}"
        )
        assert download.status_code == 200, download.text
        query = BODIES[("POST", f"{P}/proposals/{{code}}/analyses")]
        result = world.call("r_grant", "POST", f"{P}/proposals/{code}/analyses", query)
        assert result.status_code == 200, result.text
        receipts = [
            Receipt(**export.json()["receipt"]),
            Receipt(**json.loads(download.headers["X-Confed-Receipt"])),
            Receipt(**result.json()["receipt"]),
        ]
        assert len({r.seq for r in receipts}) == 3
        for receipt in receipts:
            assert verify_receipt(receipt, key) is None
            current = world.call("r_grant", "GET", f"{P}/audit/entries/{receipt.seq}/hash")
            assert current.json()["entry_hash"] == receipt.entry_hash
        with world.coord.db.session() as s:
            actions = {s.get(AuditEntry, r.seq).action for r in receipts}
        assert actions == {"proposal.export", "proposal.download", "proposal.analysis"}
    finally:
        world.close()

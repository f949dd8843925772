"""Bad input and faults: every refusal is a clear error, and nothing is lost or half-stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import sqlalchemy as sa

from consortium.db.session import default_sqlite_url
from tests.helpers.archives import member
from tests.helpers.server import Server, free_port


def _code(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


def test_refused_uploads(tmp_path, db_url, site_keys, small_tars, spoil):
    srv = Server(tmp_path / "coord", db_url, max_upload_mb=1).start()
    try:
        t1 = srv.add_site("S01", site_keys["S01"][1])
        t2 = srv.add_site("S02", site_keys["S02"][1])
        good = small_tars["S01"]

        # Another site's bundle, or a bundle signed with another site's key: 403.
        msg = _code(srv.upload(t2, good), 403, "site_mismatch")
        assert "S01" in msg and "S02" in msg
        signed_by_s01 = spoil("S02", signer="S01")
        _code(srv.upload(t2, signed_by_s01), 403, "signature_invalid")

        # Corrupted file inside the archive (same length, one byte changed): checksum.
        data = bytearray(good.read_bytes())
        with tarfile.open(good) as tf:
            m = next(m for m in tf.getmembers() if m.name.endswith("subjects.parquet"))
        data[m.offset_data + 100] ^= 0xFF
        bad = tmp_path / "corrupt.tar"
        bad.write_bytes(bytes(data))
        assert "subjects.parquet" in _code(srv.upload(t1, bad), 422, "bad_bundle")
        # Truncated upload.
        cut = tmp_path / "truncated.tar"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2 + 7])
        assert "truncated" in _code(srv.upload(t1, cut), 400, "bad_archive")
        # Not a tar at all.
        junk = tmp_path / "junk.tar"
        junk.write_bytes(os.urandom(5000))
        _code(srv.upload(t1, junk), 400, "bad_archive")

        # Hostile members, each refused before anything is written.
        hostile = {
            "dotdot": member("S01/../../escape.txt"),
            "absolute": member("/tmp/confed-absolute.txt"),
            "symlink": member("S01/link", tarfile.SYMTYPE, link="/etc/passwd"),
            "hardlink": member("S01/hard", tarfile.LNKTYPE, link="S01/manifest.json"),
            "chardev": member("S01/dev", tarfile.CHRTYPE),
            "fifo": member("S01/fifo", tarfile.FIFOTYPE),
        }
        for what, extra in hostile.items():
            msg = _code(srv.upload(t1, spoil("S01", extra=[extra])), 400, "unsafe_archive")
            assert extra[0].name in msg, what
        assert not os.path.exists("/tmp/confed-absolute.txt")

        # Wrong format version (validly signed).
        msg = _code(
            srv.upload(t1, spoil(resign={"format_version": "9.9"})),
            422,
            "unsupported_format_version",
        )
        assert "9.9" in msg

        # NaN and infinite values.
        def nan_edge(a):
            a["edges"][3, 5] = np.nan

        def inf_age(s):
            s.loc[2, "age"] = np.inf

        def bad_sex(s):
            s.loc[1, "sex"] = "X"

        def dup_key(s):
            s.loc[1, "subject_key"] = s.loc[0, "subject_key"]

        assert "connectivity_toy.parquet" in _code(
            srv.upload(t1, spoil(edit=nan_edge)), 422, "bad_values"
        )
        # write_bundle itself refuses these (the site's side of the contract), so
        # forge them after writing.
        for n, (change, needle) in enumerate(
            [(inf_age, "'age'"), (bad_sex, "'sex'"), (dup_key, "'subject_key' repeats")]
        ):
            msg = _code(
                srv.upload(t1, _forged_subjects(tmp_path / f"forged{n}", site_keys, change)),
                422,
                "contract_violation",
            )
            assert "subjects.parquet" in msg and needle in msg, msg

        # Too large: refused while streaming (no Content-Length) and up front (with one).
        big = os.urandom(3 * 1024 * 1024)

        def chunks():
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        with srv.client(t1) as c:
            # Streamed, the body is refused by the first check that fires: the size limit,
            # or the archive reader on these random bytes (which check wins is a race
            # between the receiving loop and the unpacking thread); both stop the upload.
            streamed = c.post("/submissions", content=chunks())
            assert (streamed.status_code, streamed.json()["error"]["code"]) in {
                (413, "too_large"), (400, "bad_archive")
            }, streamed.text
            _code(c.post("/submissions", content=big), 413, "too_large")

        # Nothing of the above was stored.
        with srv.client() as c:
            assert c.get("/submissions").json() == []

        # Good upload, then the same again: same submission, no duplicate.
        r1 = srv.upload(t1, good)
        assert r1.status_code == 201 and r1.json()["created"] is True
        r2 = srv.upload(t1, good)
        assert r2.status_code == 200 and r2.json()["created"] is False
        assert r2.json()["submission"]["id"] == r1.json()["submission"]["id"]
        with srv.client() as c:
            assert len(c.get("/submissions").json()) == 1

        # The site sees every attempt with its reason.
        with srv.client(t1) as c:
            status = c.get("/sites/S01/status", params={"limit": 100}).json()
        outcomes = [u["outcome"] for u in status["uploads"]]
        assert outcomes[:2] == ["duplicate", "accepted"]
        codes = {u["error_code"] for u in status["uploads"] if u["outcome"] == "rejected"}
        assert {
            "bad_bundle",
            "bad_archive",
            "unsafe_archive",
            "bad_values",
            "contract_violation",
            "too_large",
            "unsupported_format_version",
        } <= codes
        assert status["current"]["id"] == r1.json()["submission"]["id"]

        # Offline import: the same checks as an upload.
        nan_tar = spoil("S01", edit=nan_edge)
        res = srv.cli("import", str(nan_tar), check=False)
        assert res.returncode == 1 and "connectivity_toy.parquet: non-finite" in res.stdout
        srv.add_site("S03", site_keys["S03"][1])
        assert "imported: submission" in srv.cli("import", str(small_tars["S03"])).stdout
        assert "already present" in srv.cli("import", str(small_tars["S03"])).stdout

        # After a key rotation the bundle signed with the new key is accepted.
        srv.cli("site", "set-key", "S02", "--public-key", str(site_keys["S01"][1]))
        assert srv.upload(t2, signed_by_s01).status_code == 201

        fsck = srv.cli("fsck")
        assert "store clean" in fsck.stdout
        assert not list((srv.root / "tmp").iterdir()), "temporaries left behind"
        assert "audit log intact" in srv.cli("audit", "verify").stdout
    finally:
        srv.kill(signal.SIGTERM)


def _forged_subjects(folder, site_keys, change):
    """A correctly signed S01 bundle whose subjects.parquet was changed after writing."""
    import pandas as pd

    from tests.helpers.archives import forge_table, tar_dir
    from tests.helpers.bundles import synthetic_bundle

    b = synthetic_bundle(folder / "S01", "S01", site_keys["S01"][0], seed=7)
    subjects = pd.read_parquet(b / "subjects.parquet")
    change(subjects)
    forge_table(b, site_keys["S01"][0], "subjects.parquet", subjects)
    return tar_dir(b, folder.with_suffix(".tar"))


def test_twenty_concurrent_sites(server, site_keys, small_tars):
    tokens = {s: server.add_site(s, site_keys[s][1]) for s in sorted(small_tars)}
    barrier = threading.Barrier(len(tokens))

    def go(site):
        barrier.wait()
        return site, server.upload(tokens[site], small_tars[site])

    with ThreadPoolExecutor(len(tokens)) as pool:
        results = dict(pool.map(go, sorted(tokens)))
    for site, r in results.items():
        assert r.status_code == 201, f"{site}: {r.text}"
        assert r.json()["submission"]["site_id"] == site
    with server.client() as c:
        subs = c.get("/submissions").json()
        audit = c.get("/audit/verify").json()
    assert sorted(s["site_id"] for s in subs) == sorted(tokens)
    assert len({s["id"] for s in subs}) == 20 and all(s["superseded_by_id"] is None for s in subs)
    assert audit["ok"], audit["problems"]
    fsck = server.cli("fsck")
    n_files = len({f["sha256"] for s in _details(server, subs) for f in s["files"]})
    assert f"store clean: {n_files} objects verified" in fsck.stdout


def _details(server, subs):
    with server.client() as c:
        return [c.get(f"/submissions/{s['id']}").json() for s in subs]


def test_killed_mid_ingest_then_retry(tmp_path, db_url, site_keys, small_tars):
    from consortium.ingest import PAUSE_ENV, PAUSE_MARKER

    srv = Server(tmp_path / "coord", db_url)
    srv.start(env={PAUSE_ENV: "120"})
    token = srv.add_site("S03", site_keys["S03"][1])
    tar = small_tars["S03"]

    def doomed():
        try:
            srv.upload(token, tar)
        except httpx.TransportError:
            pass

    worker = threading.Thread(target=doomed)
    worker.start()
    marker = srv.root / "tmp" / PAUSE_MARKER
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "ingest never reached the pause point"
        time.sleep(0.05)
    staged = [p for p in (srv.root / "tmp").rglob("*.parquet")]
    assert staged, "the test hook should pause with staged temporary objects"
    srv.kill(signal.SIGKILL)
    worker.join(30)

    # Killed with temporaries on disk: nothing is visible and fsck finds no error.
    assert [p for p in (srv.root / "objects").rglob("*") if p.is_file()] == []
    engine = sa.create_engine(db_url or default_sqlite_url(srv.root))
    with engine.connect() as conn:
        for table in ("submissions", "submission_files", "objects"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
    engine.dispose()
    fsck = srv.cli("fsck")
    assert fsck.returncode == 0 and "temporary" in fsck.stdout

    # The site retries while the coordinator is still down; it comes back on the same port.
    port = free_port()
    (tmp_path / "token").write_text(token)
    site_toml = tmp_path / "site.toml"
    site_toml.write_text(
        f'site_id = "S03"\n[coordinator]\nurl = "http://127.0.0.1:{port}"\ntoken_file = "token"\n'
    )
    submit = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consortium.cli.main",
            "site",
            "submit",
            str(tar),
            "--config",
            str(site_toml),
            "--retries",
            "12",
            "--backoff",
            "0.25",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = submit.stdout.readline()
    assert "attempt 1 failed" in first and "retrying" in first, first
    srv.start(port=port)
    try:
        output, _ = submit.communicate(timeout=120)
        output = first + output
        assert submit.returncode == 0, output
        assert "accepted: submission" in output and "attempts" in output
        assert not marker.exists(), "restart clears leftovers of the killed ingest"
        with srv.client() as c:
            subs = c.get("/submissions").json()
        assert [s["site_id"] for s in subs] == ["S03"]
        assert srv.cli("fsck").returncode == 0
        assert srv.cli("audit", "verify").returncode == 0
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "consortium.cli.main",
                "site",
                "status",
                "--config",
                str(site_toml),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0 and f"current submission {subs[0]['id']}" in status.stdout
    finally:
        srv.kill(signal.SIGTERM)

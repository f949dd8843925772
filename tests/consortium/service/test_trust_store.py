"""Attacks on the store's trust (issue #11 items 2, 3, 9) replayed against a real server.

Every refusal must be a clear 4xx (507 for a full disk), and leave everything as
it was: the accepted submission is still current, releases keep their hashes,
``fsck`` is clean and the audit log verifies.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from sites.bundle import MANIFEST, SIGNATURE
from sites.keys import load_private_key
from tests.helpers.archives import resign, tar_dir
from tests.helpers.bundles import synthetic_bundle
from tests.helpers.server import Server, confed


def _code(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


def _snapshot(srv: Server) -> dict:
    with srv.client() as c:
        current = c.get("/submissions", params={"current": True}).json()
        releases = c.get("/releases").json()
    return {
        "current": sorted((s["site_id"], s["id"], s["bundle_hash"]) for s in current),
        "releases": sorted((r["name"], r["release_hash"]) for r in releases),
    }


def _assert_unchanged(srv: Server, before: dict) -> None:
    assert _snapshot(srv) == before
    fsck = srv.cli("fsck", check=False)
    assert fsck.returncode == 0 and "store clean" in fsck.stdout, fsck.stdout
    assert not [p for p in (srv.root / "tmp").iterdir()], "temporaries left behind"
    audit = srv.cli("audit", "verify", check=False)
    assert audit.returncode == 0 and "audit log intact" in audit.stdout, audit.stdout


def _accepted_with_release(srv: Server, token: str, tar: Path) -> dict:
    r = srv.upload(token, tar)
    assert r.status_code == 201, r.text
    with srv.client() as c:
        rel = c.post("/releases", json={"name": "r1"})
    assert rel.status_code == 201, rel.text
    return _snapshot(srv)


def _bundle(tmp_path: Path, key: Path, name: str, **kwargs) -> Path:
    return synthetic_bundle(tmp_path / name / "S01", "S01", key, seed=len(name), **kwargs)


def _signed_manifest_tar(bundle: Path, key: Path, data: bytes, out: Path) -> Path:
    (bundle / MANIFEST).write_bytes(data)
    (bundle / SIGNATURE).write_bytes(load_private_key(key).sign(data))
    return tar_dir(bundle, out)


def _many_members(out: Path, n: int, compress: bool = False) -> Path:
    with tarfile.open(out, "w:gz" if compress else "w") as archive:
        for i in range(n):
            archive.addfile(tarfile.TarInfo(f"S01/f{i}"), io.BytesIO(b""))
    return out


def _gzip_bomb(bundle: Path, out: Path, zeros: int) -> Path:
    """The bundle plus ``zeros`` bytes of zeros, as a .tar.gz (about 1000:1)."""
    raw = out.with_suffix(".raw")
    with tarfile.open(raw, "w") as archive:
        for f in sorted(bundle.rglob("*")):
            if f.is_file():
                archive.add(f, arcname=f"S01/{f.relative_to(bundle)}")
        info = tarfile.TarInfo("S01/qc.csv")
        info.size = zeros
        with open("/dev/zero", "rb") as fh:
            archive.addfile(info, fh)
    with open(raw, "rb") as src, gzip.open(out, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    raw.unlink()
    return out


@pytest.mark.slow
def test_hostile_manifests_and_archives(tmp_path, db_url, site_keys, small_tars):
    key = site_keys["S01"][0]
    srv = Server(tmp_path / "coord", db_url).start()
    try:
        token = srv.add_site("S01", site_keys["S01"][1])
        good_dir = _bundle(tmp_path, key, "good")
        before = _accepted_with_release(srv, token, tar_dir(good_dir, tmp_path / "good.tar"))

        # Item 2: a map name that walks out of the store, correctly signed.
        b = _bundle(tmp_path, key, "trav", map_voxels=30)
        manifest = json.loads((b / MANIFEST).read_text())
        evil = "../" * 12 + "tmp/x"
        resign(b, key, maps={evil: manifest["maps"]["alff"]})
        msg = _code(srv.upload(token, tar_dir(b, tmp_path / "trav.tar")), 422, "bad_bundle")
        assert "maps name" in msg and "not a valid name" in msg
        # ... and a files key with a path.
        b = _bundle(tmp_path, key, "travfile")
        files = json.loads((b / MANIFEST).read_text())["files"]
        files["../../x.parquet"] = files["qc.parquet"]
        resign(b, key, files=files)
        msg = _code(srv.upload(token, tar_dir(b, tmp_path / "tf.tar")), 422, "bad_bundle")
        assert "not a valid bundle path" in msg

        # Item 9: a map with no files, a number format version, deep nesting, huge manifest.
        b = _bundle(tmp_path, key, "nofiles")
        resign(b, key, maps={"alff": {"n_voxels": 30}})
        msg = _code(srv.upload(token, tar_dir(b, tmp_path / "nofiles.tar")), 422, "bad_bundle")
        assert "maps entry 'alff' has no file maps/alff.npy" in msg
        b = _bundle(tmp_path, key, "number")
        resign(b, key, format_version=2.0)
        msg = _code(srv.upload(token, tar_dir(b, tmp_path / "number.tar")), 422, "bad_bundle")
        assert "format_version must be a string, got the number 2.0" in msg
        nested = b"[" * 200_000 + b"]" * 200_000
        b = _bundle(tmp_path, key, "nested")
        tar = _signed_manifest_tar(b, key, nested, tmp_path / "nested.tar")
        assert "nested too deeply" in _code(srv.upload(token, tar), 422, "bad_bundle")
        b = _bundle(tmp_path, key, "huge")
        tar = _signed_manifest_tar(b, key, b" " * (2 * 1024**2) + b"{}", tmp_path / "huge.tar")
        assert "more than the limit" in _code(srv.upload(token, tar), 422, "bad_bundle")

        # Item 3: a gzip bomb is refused before anything is inflated.
        bomb = _gzip_bomb(good_dir, tmp_path / "bomb.tar.gz", 300 * 1024**2)
        assert bomb.stat().st_size < 2 * 1024**2
        msg = _code(srv.upload(token, bomb), 415, "compressed_archive")
        assert "gzip" in msg and "uncompressed tar" in msg
        # An uncompressed member larger than the manifest declares: refused from its header.
        b = _bundle(tmp_path, key, "grown")
        with open(b / "qc.parquet", "ab") as fh:
            fh.write(b"\0" * 5 * 1024**2)
        msg = _code(srv.upload(token, tar_dir(b, tmp_path / "grown.tar")), 422, "bad_bundle")
        assert "qc.parquet: size check failed" in msg

        # 100,000 empty members: refused at member 1001, fast, while the server serves others.
        many = _many_members(tmp_path / "many.tar", 100_000)
        latencies = []
        done = threading.Event()

        def probe():
            while not done.is_set():
                t0 = time.monotonic()
                assert httpx.get(f"{srv.url}/api/v1/health", timeout=5).status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        t0 = time.monotonic()
        try:
            r = srv.upload(token, many)
        finally:
            elapsed = time.monotonic() - t0
            done.set()
            prober.join()
        assert "more than 1000 members" in _code(r, 413, "too_many_files")
        assert elapsed < 5, f"100,000-member tar took {elapsed:.1f} s"
        assert latencies and max(latencies) < 2, latencies
        many_gz = _many_members(tmp_path / "many.tar.gz", 100_000, compress=True)
        _code(srv.upload(token, many_gz), 415, "compressed_archive")

        # Re-upload of the accepted manifest with other file contents: verified, refused.
        changed = shutil.copytree(good_dir, tmp_path / "changed" / "S01")
        data = bytearray((changed / "subjects.parquet").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (changed / "subjects.parquet").write_bytes(bytes(data))
        r = srv.upload(token, tar_dir(changed, tmp_path / "changed.tar"))
        assert "subjects.parquet: SHA-256 checksum mismatch" in _code(r, 422, "bad_bundle")
        # The true re-upload is still a duplicate.
        r = srv.upload(token, tar_dir(good_dir, tmp_path / "again.tar"))
        assert r.status_code == 200 and r.json()["created"] is False

        with srv.client(token) as c:
            uploads = c.get("/sites/S01/status", params={"limit": 100}).json()["uploads"]
        codes = {u["error_code"] for u in uploads if u["outcome"] == "rejected"}
        assert {"bad_bundle", "compressed_archive", "too_many_files"} <= codes
        _assert_unchanged(srv, before)
    finally:
        srv.kill(signal.SIGTERM)


def _malformed_tars(tmp_path: Path, good: Path, key: Path) -> dict[str, Path]:
    out = {}
    out["truncated"] = tmp_path / "truncated.tar"
    out["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2 + 7])
    out["not a tar"] = tmp_path / "junk.tar"
    out["not a tar"].write_bytes(os.urandom(5000))
    out["directory only"] = tmp_path / "dir.tar"
    with tarfile.open(out["directory only"], "w") as archive:
        info = tarfile.TarInfo("S01")
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    b = _bundle(tmp_path, key, "clinested")
    nested = b"[" * 200_000 + b"]" * 200_000
    out["nested manifest"] = _signed_manifest_tar(b, key, nested, tmp_path / "cli-nested.tar")
    out["gzip"] = tmp_path / "good.tar.gz"
    out["gzip"].write_bytes(gzip.compress(good.read_bytes()))
    out["empty"] = tmp_path / "empty.tar"
    out["empty"].write_bytes(b"")
    return out


def test_cli_malformed_tars(tmp_path, site_keys, small_tars):
    """`confed site validate` and `confed coord import`: a message and exit 1, no traceback."""
    srv = Server(tmp_path / "coord", None)  # the import needs no server process
    confed(
        "coord", "site", "add", "S01", "--name", "Site S01",
        "--public-key", str(site_keys["S01"][1]), "--root", str(srv.root),
    )  # fmt: skip
    for what, tar in _malformed_tars(tmp_path, small_tars["S01"], site_keys["S01"][0]).items():
        for args in (("site", "validate", str(tar)), ("coord", "import", str(tar))):
            if args[0] == "coord":
                args = (*args, "--root", str(srv.root))
            res = confed(*args, check=False)  # an uncaught exception would raise here
            assert res.returncode == 1, (what, args, res.stdout)
            assert "error" in res.stdout.lower() and "Traceback" not in res.stdout, res.stdout
    assert "imported: submission" in srv.cli("import", str(small_tars["S01"])).stdout
    assert srv.cli("fsck").returncode == 0


def test_modified_object_detected_at_read_and_by_fsck(tmp_path, db_url, site_keys):
    from consortium.errors import ConfedError
    from consortium.releases import open_release

    key = site_keys["S01"][0]
    srv = Server(tmp_path / "coord", db_url).start()
    try:
        token = srv.add_site("S01", site_keys["S01"][1])
        b = _bundle(tmp_path, key, "mapped", map_voxels=40)
        _accepted_with_release(srv, token, tar_dir(b, tmp_path / "mapped.tar"))
        dataset = open_release(srv.root, "r1", db_url)
        _, values = dataset.maps("alff")
        original = values.compute()
        assert srv.cli("fsck").returncode == 0
        sha = json.loads((b / MANIFEST).read_text())["files"]["maps/alff.npy"]["sha256"]
        obj = srv.root / "objects" / sha[:2] / sha
        os.chmod(obj, 0o600)
        data = bytearray(obj.read_bytes())
        data[-4:] = b"\x00\x00\xc0\x7f"  # the last value becomes NaN; same size
        obj.write_bytes(bytes(data))

        with pytest.raises(ConfedError) as err:
            open_release(srv.root, "r1", db_url)
        assert err.value.code == "store_corrupted" and "maps/alff.npy" in err.value.message
        fsck = srv.cli("fsck", check=False)
        assert fsck.returncode == 1
        assert "release r1" in fsck.stdout and "maps/alff.npy" in fsck.stdout, fsck.stdout

        # Restore the object; then replace a view file by a copy: reported too.
        data[-4:] = original[-1, -1:].tobytes()
        obj.write_bytes(bytes(data))
        assert srv.cli("fsck").returncode == 0
        view = next((srv.root / "bundles").iterdir())
        copy = view / "qc.parquet"
        content = copy.read_bytes()
        copy.unlink()
        copy.write_bytes(content)
        fsck = srv.cli("fsck", check=False)
        assert fsck.returncode == 1 and "differs from its object" in fsck.stdout, fsck.stdout
        with pytest.raises(ConfedError, match="differs from its object"):
            open_release(srv.root, "r1", db_url)
    finally:
        srv.kill(signal.SIGTERM)


def _mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {r.stderr}")


def _fill(fs: Path, leave: int) -> Path:
    """Fill the file system but ``leave`` free bytes."""
    filler = fs / "filler"
    free = shutil.disk_usage(fs).free
    with open(filler, "wb") as fh:
        fh.truncate(0)
        fh.write(b"\1" * max(0, free - leave))
    return filler


def test_disk_full(tmp_path, db_url, site_keys, small_tars):
    fs = tmp_path / "fs"
    _mount_tmpfs(fs, 48)
    try:
        srv = Server(fs / "coord", db_url)
        settings = json.loads((srv.root / "coordinator.json").read_text())
        settings["disk_low_bytes"] = 20 * 1024**2
        (srv.root / "coordinator.json").write_text(json.dumps(settings))
        srv.start()
        try:
            _disk_full_cases(srv, tmp_path, site_keys, small_tars)
        finally:
            srv.kill(signal.SIGTERM)
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def _disk_full_cases(srv: Server, tmp_path: Path, site_keys, small_tars) -> None:
    token = srv.add_site("S01", site_keys["S01"][1])
    before = _accepted_with_release(srv, token, small_tars["S01"])
    with srv.client() as c:
        health = c.get("/health").json()
    assert health["disk"] == "ok" and health["disk_free_bytes"] > 20 * 1024**2
    b = _bundle(tmp_path, site_keys["S01"][0], "big", map_voxels=120_000)
    tar = tar_dir(b, tmp_path / "big.tar")
    size = tar.stat().st_size
    assert size > 6 * 1024**2
    # The upload is unpacked while it streams in (no copy of the archive is kept),
    # so the disk fills while receiving and unpacking, whether half or a tenth of
    # the upload's size is left.
    for leave in (size // 2, size // 10):
        when = "receiving and unpacking"
        filler = _fill(srv.root.parent, leave)
        with srv.client() as c:
            health = c.get("/health").json()
        assert health["disk"] == "low" and health["disk_free_bytes"] < 20 * 1024**2
        msg = _code(srv.upload(token, tar), 507, "insufficient_storage")
        assert "disk is full" in msg and when in msg, msg
        assert not list((srv.root / "tmp").iterdir()), "temporaries left behind"
        filler.unlink()
    with srv.client(token) as c:
        uploads = c.get("/sites/S01/status", params={"limit": 100}).json()["uploads"]
    refused = [u for u in uploads if u["error_code"] == "insufficient_storage"]
    assert len(refused) == 2, uploads
    _assert_unchanged(srv, before)
    r = srv.upload(token, tar)
    assert r.status_code == 201, r.text


def test_refusal_kept_pending_when_it_cannot_be_recorded(tmp_path, monkeypatch, site_keys):
    from sqlalchemy.exc import OperationalError

    from consortium import ingest
    from consortium.coordinator import Coordinator
    from consortium.db.models import Upload
    from consortium.errors import ConfedError

    srv = Server(tmp_path / "coord", None)
    confed(
        "coord", "site", "add", "S01", "--name", "Site S01",
        "--public-key", str(site_keys["S01"][1]), "--root", str(srv.root),
    )  # fmt: skip
    coord = Coordinator.open(srv.root)
    try:
        real = ingest.record_upload

        def full(*args, **kwargs):
            raise OperationalError("INSERT", {}, Exception("database or disk is full"))

        monkeypatch.setattr(ingest, "record_upload", full)
        err = ConfedError("insufficient_storage", "disk is full", 507)
        ingest.record_refusal(coord, "S01", "site:S01", 10, err)
        assert (srv.root / ingest.PENDING_FILE).is_file()
        monkeypatch.setattr(ingest, "record_upload", real)
        assert ingest.flush_pending(coord) == 1
        assert not (srv.root / ingest.PENDING_FILE).exists()
        with coord.db.session() as session:
            rows = session.execute(select(Upload)).scalars().all()
            assert [(u.outcome, u.error_code) for u in rows] == [
                ("rejected", "insufficient_storage")
            ]
    finally:
        coord.close()
    assert "audit log intact" in srv.cli("audit", "verify").stdout

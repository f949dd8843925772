"""Fixtures: a real coordinator (``confed coord serve``) on loopback, over SQLite or PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.consortium.service.bundles import make_keys, synthetic_bundle, tar_dir

ADMIN_TOKEN = re.compile(r"admin token \(shown once, store it safely\): (\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    returncode: int
    stdout: str


def confed(*args: str, check: bool = True) -> Result:
    """Run the ``confed`` command line in this process (the server runs in its own)."""
    from typer.testing import CliRunner

    from consortium.cli.main import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if check and result.exit_code != 0:
        raise AssertionError(f"confed {' '.join(args)} failed:\n{result.output}")
    return Result(result.exit_code, result.output)


class Server:
    """One coordinator root and its server process."""

    def __init__(self, root: Path, db_url: str | None, max_upload_mb: int = 64):
        self.root = root
        self.db_url = db_url
        self.db_args = ["--db", db_url] if db_url else []
        out = confed(
            "coord",
            "init",
            "--root",
            str(root),
            "--max-upload-mb",
            str(max_upload_mb),
            *self.db_args,
        ).stdout
        self.admin_token = ADMIN_TOKEN.search(out).group(1)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = root.parent / f"{root.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict | None = None, port: int | None = None) -> Server:
        self.port = port or free_port()
        cmd = [
            sys.executable,
            "-m",
            "consortium.cli.main",
            "coord",
            "serve",
            "--root",
            str(self.root),
            "--port",
            str(self.port),
            *self.db_args,
        ]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/api/v1/health", timeout=1)
                if r.status_code == 200:
                    backend = "postgresql" if self.db_url else "sqlite"
                    assert r.json()["database"] == backend, r.text
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in 60 s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.proc = None

    def client(self, token: str | None = None, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout)

    def add_site(self, site_id: str, public_key: Path) -> str:
        with self.client() as c:
            r = c.post(
                "/sites",
                json={
                    "id": site_id,
                    "name": f"Site {site_id}",
                    "public_key_pem": public_key.read_text(),
                },
            )
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def upload(self, token: str, tar: Path) -> httpx.Response:
        with self.client(token) as c, open(tar, "rb") as fh:
            return c.post("/submissions", content=fh, headers={"Content-Type": "application/x-tar"})

    def cli(self, *args: str, check: bool = True) -> Result:
        return confed("coord", *args, "--root", str(self.root), *self.db_args, check=check)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request) -> str | None:
    """None (the SQLite file under the root) or a fresh PostgreSQL schema."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return None


@pytest.fixture
def server(tmp_path, db_url):
    srv = Server(tmp_path / "coord", db_url).start()
    yield srv
    srv.kill(signal.SIGTERM)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def site_keys(keys_dir):
    """Key pairs of sites S01..S20, made once per session."""
    return {f"S{i:02d}": make_keys(keys_dir, f"S{i:02d}") for i in range(1, 21)}


@pytest.fixture(scope="session")
def small_tars(tmp_path_factory, site_keys) -> dict[str, Path]:
    """One small signed bundle archive per site S01..S20, built once per session."""
    folder = tmp_path_factory.mktemp("bundles")
    out = {}
    for i, (site, (private, _)) in enumerate(sorted(site_keys.items())):
        b = synthetic_bundle(folder / site, site, private, seed=i)
        out[site] = tar_dir(b, folder / f"{site}.tar")
    return out


@pytest.fixture
def spoil(tmp_path, site_keys):
    """Build a spoiled copy of a bundle: ``spoil(site, edit=..., resign=..., extra=...)``."""
    from tests.consortium.service.bundles import resign as do_resign

    counter = iter(range(10_000))

    def _make(site="S01", edit=None, resign=None, extra=(), signer=None):
        n = next(counter)
        b = synthetic_bundle(
            tmp_path / f"spoiled{n}" / site,
            site,
            site_keys[signer or site][0],
            seed=100 + n,
            edit=edit,
        )
        if resign:
            do_resign(b, site_keys[signer or site][0], **resign)
        return tar_dir(b, tmp_path / f"spoiled{n}.tar", list(extra))

    return _make


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

"""A real coordinator on loopback: ``confed coord init`` and ``confed coord serve``.

:class:`Server` owns one coordinator root (SQLite under the root, or a PostgreSQL URL)
and, once started, one ``confed coord serve`` process on ``127.0.0.1`` and a free port.
:func:`serving` starts it, waits for ``/api/v1/health`` (which must name the expected
database backend), and on exit stops it and prints the tail of its log (pytest shows
it when the test failed). :func:`confed` runs the command line in the test's process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ADMIN_TOKEN = re.compile(r"admin token \(shown once, store it safely\): (\S+)")
READY_TIMEOUT_S = 60
LOG_TAIL_CHARS = 3000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    """Exit code and printed output of one :func:`confed` call."""

    returncode: int
    stdout: str


def confed(*args: str, check: bool = True) -> Result:
    """Run the ``confed`` command line in this process (the server runs in its own).

    Raises the command's exception if it was not a clean exit, and ``AssertionError``
    on a non-zero exit code when ``check`` is true.
    """
    from typer.testing import CliRunner

    from consortium.cli.main import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if check and result.exit_code != 0:
        raise AssertionError(f"confed {' '.join(args)} failed:\n{result.output}")
    return Result(result.exit_code, result.output)


def init_coordinator(root: Path, db_url: str | None = None, max_upload_mb: int = 64) -> str:
    """Run ``confed coord init`` on ``root``; return the admin token it printed once."""
    db_args = ["--db", db_url] if db_url else []
    out = confed(
        "coord", "init", "--root", str(root), "--max-upload-mb", str(max_upload_mb), *db_args
    ).stdout
    return ADMIN_TOKEN.search(out).group(1)


class Server:
    """One coordinator root (initialised on construction) and its server process.

    Parameters
    ----------
    root : Path
        The coordinator root; its log goes to ``<root>-server.log`` next to it.
    db_url : str or None
        A PostgreSQL URL, or None for the SQLite file under the root.
    max_upload_mb : int
        ``--max-upload-mb`` given to ``confed coord init``.
    """

    def __init__(self, root: Path, db_url: str | None, max_upload_mb: int = 64):
        self.root = root
        self.db_url = db_url
        self.db_args = ["--db", db_url] if db_url else []
        self.admin_token = init_coordinator(root, db_url, max_upload_mb)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = root.parent / f"{root.name}-server.log"

    @property
    def url(self) -> str:
        """Base URL of the running server (without ``/api/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict | None = None, port: int | None = None) -> Server:
        """Start ``confed coord serve`` and wait until ``/api/v1/health`` answers."""
        self.port = port or free_port()
        cmd = [sys.executable, "-m", "consortium.cli.main", "coord", "serve",
               "--root", str(self.root), "--port", str(self.port), *self.db_args]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/api/v1/health", timeout=1)
                if r.status_code == 200:
                    backend = "postgresql" if self.db_url else "sqlite"
                    assert r.json()["database"] == backend, r.text
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the server process and wait for it (SIGKILL after 15 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.proc = None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of the server log ('' if there is none)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def client(self, token: str | None = None, timeout: float = 120) -> httpx.Client:
        """An HTTP client on ``/api/v1`` with ``token`` (default: the admin token)."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout)

    def add_site(self, site_id: str, public_key: Path) -> str:
        """Register ``site_id`` with ``public_key`` (PEM file); return the site's token."""
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
        """POST the bundle archive ``tar`` to ``/submissions`` as ``token``."""
        with self.client(token) as c, open(tar, "rb") as fh:
            return c.post("/submissions", content=fh, headers={"Content-Type": "application/x-tar"})

    def cli(self, *args: str, check: bool = True) -> Result:
        """Run ``confed coord <args> --root <root> [--db <url>]`` in this process."""
        return confed("coord", *args, "--root", str(self.root), *self.db_args, check=check)


@contextmanager
def serving(root: Path, db_url: str | None, max_upload_mb: int = 64,
            env: dict | None = None) -> Iterator[Server]:
    """Initialise ``root``, start its server; on exit stop it and print its log tail."""
    srv = Server(root, db_url, max_upload_mb=max_upload_mb).start(env=env)
    try:
        yield srv
    finally:
        srv.kill(signal.SIGTERM)
        print(f"--- coordinator log {srv.log} (tail) ---\n{srv.log_tail()}")


def backend_url(backend: str, postgres_url: Callable[[], str]) -> str | None:
    """The database URL of ``backend`` ("sqlite" -> None, "postgres" -> ``postgres_url()``)."""
    if backend == "postgres":
        return postgres_url()
    if backend != "sqlite":
        raise ValueError(f"unknown database backend {backend!r} (sqlite or postgres)")
    return None

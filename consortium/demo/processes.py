"""Child processes of the demo: ``confed`` commands and the coordinator server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx

__all__ = ["CoordinatorServer", "DemoError", "confed_command", "free_port"]


class DemoError(RuntimeError):
    """A stage of the demo failed; the message names the stage, site and log file."""


def confed_command(*args: str) -> list[str]:
    """The ``confed`` command line, run with this interpreter."""
    return [sys.executable, "-m", "consortium.cli.main", *args]


def _run(args: list[str], log: Path, what: str, timeout: float = 600) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"$ {' '.join(args)}\n(timed out after {timeout} s)\n")
        raise DemoError(f"{what}: timed out after {timeout:.0f} s (log: {log})") from exc
    log.write_text(f"$ {' '.join(args)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise DemoError(f"{what} failed (exit {proc.returncode}): {' / '.join(tail)} (log: {log})")
    return proc.stdout


def _run_all(
    jobs: Sequence[tuple[str, list[str], Path]],
    what: str,
    workers: int,
    advance: Callable[[], None],
) -> dict[str, str]:
    """Run ``(key, args, log)`` commands concurrently; fail on the first error."""
    outputs: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(_run, args, log, f"{what} of site {key}"): key for key, args, log in jobs
        }
        for future in as_completed(futures):
            outputs[futures[future]] = future.result()
            advance()
    return outputs


def _start(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _finish(proc: subprocess.Popen, log: Path, what: str, timeout: float = 300) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise DemoError(f"{what}: timed out after {timeout:.0f} s") from exc
    log.write_text(f"$ {' '.join(proc.args)}\n{output}")
    if proc.returncode != 0:
        tail = " / ".join(output.strip().splitlines()[-3:])
        raise DemoError(f"{what} failed (exit {proc.returncode}): {tail} (log: {log})")
    return output


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CoordinatorServer:
    """``confed coord serve`` in its own process on a free loopback port.

    :meth:`start` launches the process without waiting for it, :meth:`wait_ready`
    blocks until ``/api/v1/health`` answers and :meth:`stop` ends it (SIGINT, then
    SIGKILL after 15 s). As a context manager, the object stops the server on exit.
    """

    def __init__(self, root: Path, log: Path, timeout: float = 90) -> None:
        self.root, self.log, self.timeout = root, log, timeout
        self.url = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> CoordinatorServer:
        return self

    def start(self) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as handle:
            self.proc = subprocess.Popen(
                confed_command("coord", "serve", "--root", str(self.root), "--port", str(port)),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self.url

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(
                    f"coordinator exited with code {self.proc.returncode} (log: {self.log})"
                )
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoError(
            f"coordinator did not answer on {self.url} within {self.timeout:.0f} s "
            f"(log: {self.log})"
        )

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

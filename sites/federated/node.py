"""The site agent of federated mode: poll the coordinator, compute locally, answer signed.

The agent only makes outbound HTTP(S) requests: it asks the coordinator for this
site's pending tasks (``GET /api/v1/federated/tasks``), checks each against the
site's policy, computes the statistics on the site's own bundle and posts one
Ed25519-signed message per task (``POST /api/v1/federated/tasks/{id}/result``).
The hospital opens no inbound port.

Everything is kept in the agent's state folder (created with mode 0700):

- ``log.jsonl`` (mode 0600, append-only): every task received, refused, queued,
  computed and every message sent, with its SHA-256;
- ``answers/<task id>.json``: the signed answer; a task seen again (the coordinator
  did not get the answer) is answered with the same stored message, so retries are
  safe (idempotent by task id);
- ``queue/<task id>.json``: tasks waiting for ``confed-site agent approve`` when the
  policy sets ``approve = true``;
- ``outputs/<task id>.npy``: data a task produces at the site (harmonized or
  standardized maps), which never leave it.

The agent's TOML file::

    site_id = "S01"
    [coordinator]
    url = "https://coordinator.example.org"
    token_file = "keys/coordinator.token"
    [keys]
    private_key = "keys/site_ed25519.pem"
    [agent]
    bundle = "out/S01.tar"          # the site's bundle (directory or .tar)
    state_dir = "federated"          # log, answers, queue, outputs
    poll_seconds = 5
    [policy]
    allow = ["mixed_stats", "mass_stats", "meta_summary"]
    min_cell = 10
    approve = false
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sites.federated.messages import canonical_bytes, refusal, sign_message
from sites.federated.policy import Policy, policy_from_toml

__all__ = ["Agent", "AgentConfig", "AgentError", "load_agent_config"]

API = "/api/v1/federated"


class AgentError(ValueError):
    """An agent configuration or state that cannot be used (names the file and field)."""


@dataclass(frozen=True)
class AgentConfig:
    """Where the coordinator is, the site's key and data, its policy and state folder."""

    site_id: str
    url: str
    token: str
    private_key: Path
    bundle: Path
    state_dir: Path
    poll_seconds: float
    policy: Policy


def _path(base: Path, value: Any, field: str, config: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise AgentError(f"{config}: {field} is missing")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_agent_config(config: str | Path) -> AgentConfig:
    """Read and check the agent's TOML file (relative paths: from its folder)."""
    config = Path(config)
    try:
        data = tomllib.loads(config.read_text())
    except FileNotFoundError as exc:
        raise AgentError(f"{config}: config file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise AgentError(f"{config}: invalid TOML ({exc})") from exc
    base = config.resolve().parent
    site_id = data.get("site_id")
    if not isinstance(site_id, str) or not site_id:
        raise AgentError(f"{config}: site_id is missing")
    coordinator = data.get("coordinator") or {}
    url = os.environ.get("CONFED_COORDINATOR_URL") or coordinator.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise AgentError(f"{config}: [coordinator] url must start with http:// or https://")
    token = os.environ.get("CONFED_SITE_TOKEN")
    if not token:
        token_path = _path(base, coordinator.get("token_file"), "[coordinator] token_file", config)
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            raise AgentError(f"{token_path}: cannot read the site token ({exc})") from exc
    agent = data.get("agent") or {}
    poll = agent.get("poll_seconds", 5)
    if not isinstance(poll, (int, float)) or poll <= 0:
        raise AgentError(f"{config}: [agent] poll_seconds must be a positive number")
    return AgentConfig(
        site_id=site_id,
        url=url.rstrip("/"),
        token=token,
        private_key=_path(base, (data.get("keys") or {}).get("private_key"),
                          "[keys] private_key", config),
        bundle=_path(base, agent.get("bundle"), "[agent] bundle", config),
        state_dir=_path(base, agent.get("state_dir", "federated"), "[agent] state_dir", config),
        poll_seconds=float(poll),
        policy=policy_from_toml(data.get("policy"), f"{config}: [policy]"),
    )  # fmt: skip


class Agent:
    """One site's federated agent (see the module docstring)."""

    def __init__(self, config: AgentConfig, http: Any = None):
        import httpx

        from sites.keys import load_private_key

        self.config = config
        self.key = load_private_key(config.private_key)
        self.http = http or httpx.Client(
            base_url=config.url, headers={"Authorization": f"Bearer {config.token}"}, timeout=120
        )
        for sub in ("", "answers", "queue", "outputs"):
            (config.state_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._bundle = None

    # -- local log and state
    @property
    def log_path(self) -> Path:
        return self.config.state_dir / "log.jsonl"

    def log(self, event: str, **details: Any) -> None:
        """Append one line to the local log (created with mode 0600)."""
        line = json.dumps({"ts": time.time(), "event": event, **details}, sort_keys=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(line + "\n")

    def _answer_path(self, task_id: str) -> Path:
        if not task_id or "/" in task_id or task_id.startswith("."):
            raise AgentError(f"task id {task_id!r} is not a valid id")
        return self.config.state_dir / "answers" / f"{task_id}.json"

    def approve(self, task_id: str) -> None:
        """Mark a queued task approved; the next poll computes it."""
        queued = self.config.state_dir / "queue" / f"{task_id}.json"
        if not queued.exists():
            raise AgentError(f"task {task_id} is not waiting for approval in {queued.parent}")
        (self.config.state_dir / "queue" / f"{task_id}.approved").touch(mode=0o600)
        self.log("task.approved", task=task_id)

    # -- data
    def local_data(self, source: Mapping[str, Any]) -> tuple[Any, Any]:
        """The subject table and outcome array a task's ``source`` names, from the bundle."""
        from sites.bundle import read_bundle
        from sites.federated.local import resolve

        if self._bundle is None:
            self._bundle = read_bundle(self.config.bundle)
        return resolve(self._bundle, source, self._harmonized(source.get("harmonized")))

    def _harmonized(self, task_id: Any) -> Any:
        """The data this site's task ``task_id`` produced (``outputs/``), or None."""
        import numpy as np

        if task_id is None:
            return None
        path = self.config.state_dir / "outputs" / f"{self._answer_path(str(task_id)).stem}.npy"
        if not path.exists():
            raise AgentError(f"source.harmonized: task {task_id} produced no data at this site")
        return np.load(path)

    # -- one task
    def answer(self, task: Mapping[str, Any]) -> dict[str, Any] | None:
        """The signed answer to ``task`` (stored), or None while it waits for approval."""
        stored = self._answer_path(task["id"])
        if stored.exists():
            self.log("task.repeat", task=task["id"])
            return json.loads(stored.read_text())
        self.log("task.received", task=task["id"], kind=task.get("kind"))
        site = self.config.site_id
        reason = self.config.policy.check(task)
        if reason is None and self.config.policy.approve and not self._approved(task):
            return None
        if reason is not None:
            message = refusal(task, site, reason)
        else:
            message = self._compute(task)
        signed = sign_message(message, self.key)
        stored.write_text(json.dumps(signed))
        os.chmod(stored, 0o600)
        return signed

    def _approved(self, task: Mapping[str, Any]) -> bool:
        queue = self.config.state_dir / "queue"
        if (queue / f"{task['id']}.approved").exists():
            return True
        path = queue / f"{task['id']}.json"
        if not path.exists():
            path.write_text(json.dumps(task))
            self.log("task.queued", task=task["id"], kind=task.get("kind"))
        return False

    def _compute(self, task: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        from sites.bundle import BundleError
        from sites.federated.compute import COMPUTE
        from sites.federated.messages import MessageError

        site = self.config.site_id
        try:
            table, Y = self.local_data(task["params"].get("source") or {})
            out = COMPUTE[task["kind"]](task, site, table, Y, self.config.policy.min_cell)
        except MessageError as exc:  # the task itself: names the coordinator sent
            self.log("task.failed", task=task["id"], error=str(exc))
            return refusal(task, site, f"site {site} could not compute: {exc}")
        except (BundleError, KeyError, ValueError) as exc:
            # local data: its message may name a path or file, which must not leave the
            # site; the full text stays in the site's own log
            self.log("task.failed", task=task["id"], error=str(exc))
            return refusal(task, site, f"site {site} could not compute on its local data "
                           f"({type(exc).__name__}; see the site's agent log)")
        if isinstance(out, tuple):
            out, produced = out
            np.save(self.config.state_dir / "outputs" / f"{task['id']}.npy", produced)
        return out

    # -- the coordinator
    def poll_once(self, on_error: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Fetch pending tasks, answer each; returns the coordinator's replies."""
        import httpx

        try:
            response = self.http.get(f"{API}/tasks")
        except httpx.TransportError as exc:
            self._problem(f"coordinator unreachable: {exc}", on_error)
            return []
        if response.status_code != 200:
            self._problem(f"listing tasks: {response.status_code} {response.text[:300]}", on_error)
            return []
        replies = []
        for task in response.json():
            message = self.answer(task)
            if message is None:
                continue
            digest = hashlib.sha256(canonical_bytes(message)).hexdigest()
            self.log("message.sent", task=task["id"], kind=message["kind"],
                     status=message["status"], reason=message["reason"], sha256=digest,
                     arrays={k: v["shape"] for k, v in message["arrays"].items()})  # fmt: skip
            try:
                reply = self.http.post(f"{API}/tasks/{task['id']}/result", json=message)
            except httpx.TransportError as exc:
                self._problem(f"posting task {task['id']}: {exc}", on_error)
                continue
            self.log("message.reply", task=task["id"], status_code=reply.status_code,
                     body=reply.text[:500])  # fmt: skip
            replies.append({"task": task["id"], "status_code": reply.status_code})
        return replies

    def _problem(self, text: str, on_error: Callable[[str], None] | None) -> None:
        self.log("agent.problem", error=text)
        if on_error is not None:
            on_error(text)

    def run(self, once: bool = False, on_error: Callable[[str], None] | None = None) -> None:
        """Poll until stopped (or once)."""
        self.log("agent.start", site=self.config.site_id, url=self.config.url)
        while True:
            self.poll_once(on_error)
            if once:
                return
            time.sleep(self.config.poll_seconds)

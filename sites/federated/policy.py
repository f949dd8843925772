"""The site's own rules for federated tasks: what may run, on how many, with whose approval.

Read from the ``[policy]`` table of the agent's TOML file::

    [policy]
    allow = ["mixed_stats", "meta_summary"]   # task kinds this site computes
    min_cell = 10                             # subjects per group (case, control) at least
    approve = false                           # true: every task waits for
                                              # `confed-site agent approve TASK_ID`

A task outside ``allow`` is refused, and so is a group smaller than ``min_cell`` (the
refusal names the rule; no statistic is sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sites.federated.messages import KINDS

__all__ = ["Policy", "PolicyError", "policy_from_toml"]

DEFAULT_MIN_CELL = 10


class PolicyError(ValueError):
    """A ``[policy]`` table that cannot be used (names the field)."""


@dataclass(frozen=True)
class Policy:
    """Allow-list of task kinds, minimum cell size and optional per-task approval."""

    allow: frozenset[str]
    min_cell: int = DEFAULT_MIN_CELL
    approve: bool = False

    def check(self, task: Mapping[str, Any]) -> str | None:
        """None if ``task`` may run; otherwise the reason of the refusal."""
        kind = task.get("kind")
        if kind not in KINDS:
            return f"task kind {kind!r} is unknown to this agent"
        if kind not in self.allow:
            return f"task kind {kind!r} is not in this site's allow-list {sorted(self.allow)}"
        return None


def policy_from_toml(table: Mapping[str, Any] | None, source: str = "[policy]") -> Policy:
    """The :class:`Policy` of a ``[policy]`` TOML table (missing: allow nothing)."""
    table = dict(table or {})
    unknown = set(table) - {"allow", "min_cell", "approve"}
    if unknown:
        raise PolicyError(f"{source}: unknown keys {sorted(unknown)}")
    allow = table.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(k, str) for k in allow):
        raise PolicyError(f"{source}.allow: must be a list of task kinds")
    bad = sorted(set(allow) - set(KINDS))
    if bad:
        raise PolicyError(f"{source}.allow: unknown task kinds {bad} (known: {sorted(KINDS)})")
    min_cell = table.get("min_cell", DEFAULT_MIN_CELL)
    if not isinstance(min_cell, int) or isinstance(min_cell, bool) or min_cell < 1:
        raise PolicyError(f"{source}.min_cell: must be a positive integer (got {min_cell!r})")
    approve = table.get("approve", False)
    if not isinstance(approve, bool):
        raise PolicyError(f"{source}.approve: must be true or false (got {approve!r})")
    return Policy(frozenset(allow), min_cell, approve)

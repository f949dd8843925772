"""Reading and writing the coordinator's JSON settings files.

One rule for ``coordinator.json``, ``proposals.json`` and ``portal.json``: a file
holds one JSON object whose keys are fields of its settings dataclass; anything
else is refused with a ``bad_settings`` error naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from consortium.errors import ConfedError


def read_settings_file(path: Path, known: Collection[str]) -> dict[str, Any]:
    """Read the settings stored in ``path``.

    Parameters
    ----------
    path : Path
        An existing JSON file.
    known : collection of str
        Keys the file may hold.

    Returns
    -------
    dict
        The stored key/value pairs.

    Raises
    ------
    ConfedError
        ``bad_settings`` when the file is not valid JSON, not an object, or holds
        keys outside ``known``.
    """
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfedError("bad_settings", f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(stored, dict):
        raise ConfedError("bad_settings", f"{path} must hold a JSON object")
    unknown = set(stored) - set(known)
    if unknown:
        raise ConfedError("bad_settings", f"{path}: unknown keys {sorted(unknown)}")
    return stored


def write_settings_file(path: Path, data: dict[str, Any], mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` as indented JSON, replacing the file atomically.

    Parameters
    ----------
    path : Path
        Destination file.
    data : dict
        JSON-serialisable settings.
    mode : int or None
        Permission bits of the new file (e.g. ``0o600``); None keeps the default.

    Returns
    -------
    Path
        ``path``.
    """
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


class OptionalSettingsFile:
    """Load/save of a settings dataclass kept in an optional ``<root>/<FILE>``.

    A subclass is a dataclass whose every field has a default and sets ``FILE``;
    a missing file means the defaults.
    """

    FILE: ClassVar[str]

    @classmethod
    def load(cls, root: Path | str) -> Self:
        """Read ``root/FILE``; defaults when it does not exist."""
        path = Path(root) / cls.FILE
        if not path.is_file():
            return cls()
        return cls(**read_settings_file(path, {f.name for f in fields(cls)}))

    def save(self, root: Path | str) -> Path:
        """Write ``root/FILE``."""
        return write_settings_file(Path(root) / self.FILE, asdict(self))

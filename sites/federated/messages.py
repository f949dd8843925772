"""The site-coordinator contract of federated mode: tasks, messages and their validation.

A *task* (coordinator -> site) names a computation (``kind``) and its parameters. A
*message* (site -> coordinator) answers one task with aggregates only::

    {"schema": "confed.federated/1", "kind": "mixed_stats", "task_id": "...",
     "site": "S01", "status": "ok" | "refused", "reason": "",
     "n": 120, "groups": {"case": 61, "control": 59},
     "dims": {"feature": 1, "fixed": 6, "random": 2},
     "arrays": {"XtX": {"shape": [6, 6], "dtype": "<f8", "b64": "..."}, ...},
     "scalars": {...}, "signature": "<base64 Ed25519 over the canonical JSON>"}

Every array of every kind is declared in :data:`KINDS` with *named* axes
(``feature``, ``fixed``, ``random``, ``param``); no kind has a subject axis.
:func:`validate_message` checks a message against that declaration (and against the
dimensions the task set), so a message carrying subject-level rows cannot pass: the
coordinator runs it on every message it receives, and the leakage test on every
message of a run. Arrays travel as base64 little-endian float64 bytes (exact,
about 11 bytes a value).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "SCHEMA",
    "MessageError",
    "KindSpec",
    "arrays_of",
    "canonical_bytes",
    "make_message",
    "refusal",
    "sign_message",
    "validate_message",
    "verify_signature",
]

SCHEMA = "confed.federated/1"
#: Largest size of a non-feature axis (design columns, batch parameters).
MAX_SMALL_AXIS = 256
_FIXED_DIMS = ("fixed", "random", "param")
#: Arrays travel as little-endian float64 bytes, base64-encoded: exact and compact.
DTYPE = "<f8"


class MessageError(ValueError):
    """A task or message that breaks the federated contract (names the field)."""


@dataclass(frozen=True)
class KindSpec:
    """Arrays (name -> axis names) and scalars a message of one kind may hold."""

    arrays: Mapping[str, tuple[str, ...]]
    scalars: tuple[str, ...] = ()
    needs_groups: bool = True


_MIXED = {
    "ZtZ": ("random", "random"),
    "ZtX": ("random", "fixed"),
    "XtX": ("fixed", "fixed"),
    "ZtY": ("feature", "random"),
    "XtY": ("feature", "fixed"),
    "YtY": ("feature",),
}

#: Every task kind and what its answer may hold. No axis is a subject axis.
KINDS: dict[str, KindSpec] = {
    "mixed_stats": KindSpec(_MIXED),
    "mass_stats": KindSpec(_MIXED),
    "meta_summary": KindSpec(
        {}, ("t", "df", "yi", "vi", "n_case", "n_control", "included")
    ),
    "combat_stats": KindSpec({"xtx": ("param", "param"), "xty": ("param", "feature")}),
    "combat_residuals": KindSpec({"ssr": ("feature",)}),
    "combat_apply": KindSpec({"gamma_star": ("feature",), "delta_star": ("feature",)}),
    "standardize_sums": KindSpec(
        {"sum_maps": ("feature",), "sum_mean_maps": ("feature",)},
        ("sum_means", "sum_means_sq"),
        needs_groups=False,
    ),
    "standardize_apply": KindSpec({}, ("n_written",), needs_groups=False),
}


def arrays_of(message: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The message's arrays as float64 ndarrays of their declared shapes."""
    return {name: _decode(entry) for name, entry in (message.get("arrays") or {}).items()}


def _decode(entry: Mapping[str, Any]) -> np.ndarray:
    shape = tuple(int(d) for d in entry["shape"])
    raw = base64.b64decode(entry["b64"], validate=True)
    return np.frombuffer(raw, dtype=DTYPE).astype(np.float64).reshape(shape)


def _encode(value: np.ndarray) -> dict[str, Any]:
    value = np.ascontiguousarray(value, dtype=DTYPE)
    return {"shape": list(value.shape), "dtype": DTYPE, "b64": base64.b64encode(value).decode()}


def make_message(
    task: Mapping[str, Any],
    site: str,
    n: int,
    groups: Mapping[str, int] | None,
    dims: Mapping[str, int],
    arrays: Mapping[str, np.ndarray] | None = None,
    scalars: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """An unsigned ``ok`` message answering ``task``."""
    return {
        "schema": SCHEMA,
        "kind": task["kind"],
        "task_id": task["id"],
        "site": site,
        "status": "ok",
        "reason": "",
        "n": int(n),
        "groups": {k: int(v) for k, v in (groups or {}).items()},
        "dims": {k: int(v) for k, v in dims.items()},
        "arrays": {k: _encode(v) for k, v in (arrays or {}).items()},
        "scalars": {k: float(v) for k, v in (scalars or {}).items()},
    }


def refusal(task: Mapping[str, Any], site: str, reason: str) -> dict[str, Any]:
    """An unsigned ``refused`` message: no statistics, the reason in words."""
    return {
        "schema": SCHEMA,
        "kind": task.get("kind", ""),
        "task_id": task.get("id", ""),
        "site": site,
        "status": "refused",
        "reason": reason,
        "n": 0,
        "groups": {},
        "dims": {},
        "arrays": {},
        "scalars": {},
    }


def canonical_bytes(message: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: sorted-key compact JSON without ``signature``."""
    body = {k: v for k, v in message.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign_message(message: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """``message`` with an Ed25519 ``signature`` (base64) of :func:`canonical_bytes`."""
    signature = private_key.sign(canonical_bytes(message))
    return {**message, "signature": base64.b64encode(signature).decode()}


def verify_signature(message: Mapping[str, Any], public_key: Any) -> None:
    """Raise :class:`MessageError` unless the signature verifies with ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    raw = message.get("signature")
    if not isinstance(raw, str):
        raise MessageError(f"message of site {message.get('site')!r}: no signature")
    try:
        public_key.verify(base64.b64decode(raw), canonical_bytes(message))
    except (InvalidSignature, ValueError) as exc:
        raise MessageError(
            f"message of site {message.get('site')!r}: signature does not verify"
        ) from exc


def _check_header(message: Mapping[str, Any]) -> KindSpec:
    if not isinstance(message, Mapping):
        raise MessageError("message: not a JSON object")
    if message.get("schema") != SCHEMA:
        raise MessageError(f"schema: expected {SCHEMA!r}, got {message.get('schema')!r}")
    kind = message.get("kind")
    if kind not in KINDS:
        raise MessageError(f"kind: unknown task kind {kind!r} (known: {sorted(KINDS)})")
    for field in ("task_id", "site"):
        if not isinstance(message.get(field), str) or not message.get(field):
            raise MessageError(f"{field}: missing")
    if message.get("status") not in ("ok", "refused"):
        raise MessageError(f"status: expected 'ok' or 'refused', got {message.get('status')!r}")
    return KINDS[kind]


def _check_dims(
    dims: Mapping[str, Any], expected: Mapping[str, int] | None, where: str
) -> dict[str, int]:
    out = {}
    for name, size in dims.items():
        if not isinstance(size, int) or size < 0:
            raise MessageError(f"{where}dims.{name}: not a non-negative integer ({size!r})")
        if name in _FIXED_DIMS and size > MAX_SMALL_AXIS:
            raise MessageError(f"{where}dims.{name}: {size} exceeds {MAX_SMALL_AXIS}")
        out[name] = size
    for name, size in (expected or {}).items():
        if out.get(name) != size:
            raise MessageError(
                f"{where}dims.{name}: the task set {size}, the message says {out.get(name)}"
            )
    return out


def _check_array(
    name: str, entry: Any, axes: tuple[str, ...], dims: dict[str, int], n: int,
    expected: Mapping[str, int] | None, where: str,
) -> None:  # fmt: skip
    if not isinstance(entry, Mapping) or set(entry) != {"shape", "dtype", "b64"}:
        raise MessageError(f"{where}arrays.{name}: must be {{'shape', 'dtype', 'b64'}}")
    if entry["dtype"] != DTYPE:
        raise MessageError(f"{where}arrays.{name}: dtype must be {DTYPE!r}")
    shape = list(entry["shape"])
    declared = [dims.get(axis) for axis in axes]
    if shape != declared:
        raise MessageError(
            f"{where}arrays.{name}: shape {shape} is not the declared {list(axes)} = {declared}"
        )
    for axis, size in zip(axes, shape, strict=True):
        confirmed = expected is not None and axis in expected
        if n > 1 and size == n and not confirmed:
            raise MessageError(
                f"{where}arrays.{name}: axis {axis!r} has the subject count {n} "
                "(a subject dimension is never allowed)"
            )
    try:
        raw = base64.b64decode(entry["b64"], validate=True)
    except (ValueError, TypeError) as exc:
        raise MessageError(f"{where}arrays.{name}: not base64 ({exc})") from None
    if len(raw) != 8 * math.prod(shape):
        raise MessageError(f"{where}arrays.{name}: {math.prod(shape)} values expected")
    if not np.isfinite(np.frombuffer(raw, dtype=DTYPE)).all():
        raise MessageError(f"{where}arrays.{name}: non-finite values")


def validate_message(
    message: Mapping[str, Any],
    expected_dims: Mapping[str, int] | None = None,
    min_cell: int | None = None,
) -> None:
    """Check a message against the contract; raise :class:`MessageError` naming the field.

    Parameters
    ----------
    message : dict
        A site's answer (signed or not).
    expected_dims : dict, optional
        Axis sizes the task fixed (e.g. ``{"feature": 12720}``); an axis of the subject
        count is accepted only when the task set that axis to that size.
    min_cell : int, optional
        Minimum subjects per group (case/control) for an ``ok`` message of a kind
        that releases group statistics.

    Notes
    -----
    Only declared arrays and scalars are allowed, every array has exactly its
    declared named axes, none of which is a subject axis, and no axis other than a
    feature axis confirmed by the task may equal the subject count ``n``.
    """
    spec = _check_header(message)
    where = f"message of site {message['site']!r}, task {message['task_id']}: "
    extra = set(message) - {
        "schema", "kind", "task_id", "site", "status", "reason", "n", "groups", "dims",
        "arrays", "scalars", "signature",
    }  # fmt: skip
    if extra:
        raise MessageError(f"{where}unknown fields {sorted(extra)}")
    if message["status"] == "refused":
        if message.get("arrays") or message.get("scalars"):
            raise MessageError(f"{where}a refusal carries no statistics")
        return
    n = message.get("n")
    if not isinstance(n, int) or n < 1:
        raise MessageError(f"{where}n: not a positive integer ({n!r})")
    dims = _check_dims(message.get("dims") or {}, expected_dims, where)
    arrays = message.get("arrays") or {}
    if set(arrays) != set(spec.arrays):
        raise MessageError(
            f"{where}arrays: expected exactly {sorted(spec.arrays)}, got {sorted(arrays)}"
        )
    for name, axes in spec.arrays.items():
        _check_array(name, arrays[name], axes, dims, n, expected_dims, where)
    scalars = message.get("scalars") or {}
    if set(scalars) - set(spec.scalars):
        raise MessageError(f"{where}scalars: undeclared {sorted(set(scalars) - set(spec.scalars))}")
    for name, value in scalars.items():
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            raise MessageError(f"{where}scalars.{name}: not a number ({value!r})")
    groups = message.get("groups") or {}
    if spec.needs_groups and min_cell is not None:
        for group in ("case", "control"):
            if int(groups.get(group, 0)) < min_cell:
                raise MessageError(
                    f"{where}groups.{group}: {groups.get(group, 0)} subjects, fewer than the "
                    f"minimum cell size {min_cell}"
                )

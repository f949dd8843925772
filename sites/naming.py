"""Naming rule of the site–coordinator contract, without heavy imports.

Kept apart from :mod:`sites.contract` (which needs numpy and pandas for its table
checks) so that command-line help and registries can validate names cheaply.
:mod:`sites.contract` re-exports everything here.
"""

from __future__ import annotations

import re

__all__ = ["NAME_PATTERN", "NAME_RE", "ContractError", "check_name"]

#: One name from outside (atlas, metric, release, label): starts with a letter or
#: digit, then letters, digits, ``_``, ``.`` or ``-``; no ``/``, so never a path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)


class ContractError(ValueError):
    """A value that breaks the contract; the message names the field and the rule."""


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a valid contract name, else raise :class:`ContractError`.

    Parameters
    ----------
    value : object
        The name to check (must be a ``str``).
    what : str
        What the name is, for the message (for example ``"manifest.json: map name"``).
    """
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        raise ContractError(
            f"{what} {str(value)[:80]!r} is not a valid name (1-64 letters, digits, "
            "'_', '.', '-', starting with a letter or digit, no '..')"
        )
    return value

"""Errors of the coordinator with a stable machine-readable code and an HTTP status.

The API turns every :class:`ConfedError` into ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations


class ConfedError(Exception):
    """A refused request or a failed check.

    Parameters
    ----------
    code : str
        Stable snake_case identifier clients can branch on.
    message : str
        Human-readable explanation naming the file, field, subject or site at fault.
    status : int
        HTTP status the API answers with.
    """

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def not_found(what: str) -> ConfedError:
    return ConfedError("not_found", f"{what} not found", 404)


def forbidden(message: str) -> ConfedError:
    return ConfedError("forbidden", message, 403)

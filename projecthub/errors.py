"""Errors that cross a process boundary and reach API callers.

CoCalc's dispatcher distinguishes a thrown *string* (sent unchanged) from a thrown
``Error`` object (sent as ``"Error: <message>"``).  Our code raises ``RemoteError``
with the exact text the caller must see, so no layer has to guess a prefix.
"""

from __future__ import annotations


class RemoteError(Exception):
    """An error whose ``message`` is sent to the API caller verbatim.

    ``extra`` holds additional JSON fields that travel with the error (for example
    the partial ``stdout``/``stderr`` of a timed-out exec, or a ``job_id``).
    """

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, **self.extra}


def error_text(exc: BaseException) -> str:
    """Render an unexpected exception the way CoCalc renders a thrown Error."""
    if isinstance(exc, RemoteError):
        return exc.message
    name = type(exc).__name__
    if name in ("Exception", "RuntimeError", "ValueError", "OSError"):
        name = "Error"
    return f"{name}: {exc}"

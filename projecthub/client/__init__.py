"""A Python client for projecthub's native API (``/api/v3``); see docs/client.md.

    from projecthub.client import Client
    with Client("http://127.0.0.1:8765", "sk-...") as client:
        project = client.projects.create("demo")
        print(client.exec(project, "echo hi").stdout)

Needs only ``httpx`` (``pip install projecthub[client]``): nothing of the server is imported.
"""

from __future__ import annotations

from typing import Any

from ._sync import Client, Files, Job, Keys, LimitsAPI, Projects, Session
from ._types import (ApiKey, BadRequest, CellError, CellResult, CommandFailed, Conflict, ConnectionFailed,
                     ExecResult, FileEntry, FileInfo, JobSummary, Limits, Listing, NotFound, Output,
                     OutputChunk, PayloadTooLarge, PermissionDenied, PreconditionFailed, Project,
                     ProjectHubError, RateLimited, ServerError, SessionInfo, TimeoutExpired, Unauthorized)

__all__ = [
    "Client", "AsyncClient", "Job", "AsyncJob", "Session", "AsyncSession", "Projects", "Files", "Keys",
    "LimitsAPI",
    "ApiKey", "CellResult", "ExecResult", "FileEntry", "FileInfo", "JobSummary", "Limits", "Listing",
    "Output", "OutputChunk", "Project", "SessionInfo",
    "ProjectHubError", "BadRequest", "Unauthorized", "PermissionDenied", "NotFound", "Conflict",
    "PreconditionFailed", "PayloadTooLarge", "RateLimited", "ServerError", "ConnectionFailed",
    "TimeoutExpired", "CommandFailed", "CellError",
]


def __getattr__(name: str) -> Any:
    if name in ("AsyncClient", "AsyncJob", "AsyncSession"):
        from . import _async
        return getattr(_async, name)
    raise AttributeError(name)

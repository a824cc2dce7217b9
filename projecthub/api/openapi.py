"""OpenAPI 3.1 description of the native API (served at /api/v3/openapi.json)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..store.bounds import DESCRIPTION_MAX, TITLE_MAX


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Bad input"),
    "401": _json(_ref("Error"), "Missing or invalid API key"),
    "403": _json(_ref("Error"), "Not allowed for this key"),
    "404": _json(_ref("Error"), "No such project, job or session"),
    "413": _json(_ref("Error"), "Body too large"),
    "429": _json(_ref("Error"), "An account limit (max_running_projects) is reached"),
    "504": _json(_ref("Error"), "The call's time budget ran out"),
}

# one Server-Sent Event as clients see it; ``data`` is a JSON document
_SSE_EVENT = {"type": "object", "properties": {
    "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}}}

_PROJECT_ID = {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(summary: str, responses: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, body_required: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params or [],
                          "responses": {**responses, **_ERRORS}, "security": [{"bearer": []}, {"basic": []}]}
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    return op


EXEC_REQUEST = {
    "type": "object",
    "required": ["command"],
    "properties": {
        "command": {"type": "string", "minLength": 1, "description": "Program, or a bash script when it has whitespace and no args"},
        "args": {"type": "array", "items": {"type": "string"}},
        "bash": {"type": "boolean"},
        "path": {"type": "string", "description": "Working directory, relative to HOME"},
        "cwd": {"type": "string", "description": "Working directory; overrides path"},
        "env": {"type": "object", "additionalProperties": {"type": "string"},
                "propertyNames": {"pattern": "^[^=\\x00]+$"}},
        "timeout": {"type": "number", "minimum": 0, "maximum": 1e9,
                    "description": "Seconds; 0 = no limit; default 60"},
        "max_output": {"type": "integer", "minimum": 0, "maximum": 1e9, "description": "Characters kept per stream"},
        "yield_after": {"type": "number", "minimum": 0, "maximum": 1e9,
                        "description": "Return a job record if still running after this many seconds"},
        "async": {"type": "boolean", "description": "Start as a durable job and return its record at once"},
    },
}

EXEC_RESULT = {
    "type": "object",
    "properties": {
        "exit_code": {"type": ["integer", "null"]},
        "signal": {"type": ["string", "null"]},
        "timed_out": {"type": "boolean"},
        "killed_by": {"enum": ["timeout", "signal", "oom", "output", None]},
        "stdout": {"type": "string"}, "stderr": {"type": "string"},
        "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"},
        "stdout_bytes": {"type": "integer"}, "stderr_bytes": {"type": "integer"},
        "wall_s": {"type": "number"},
        "cpu_user_s": {"type": "number", "description": "CPU seconds in user mode of every process of "
                       "this exec (its own cgroup; the root's rusage where that is more precise)"},
        "cpu_sys_s": {"type": "number", "description": "CPU seconds in the kernel, counted the same way"},
        "max_rss_bytes": {"type": "integer", "description": "Peak memory charged to this exec's own cgroup "
                          "(anonymous memory, page cache it brought in, kernel memory), counted from "
                          "when it started; in steps of 256 KiB per CPU, so a command as small as "
                          "`true` may read 0. Without cgroups: the root process's peak (with the children "
                          "it waited for) when above the project daemon's own, which every child "
                          "inherits; else 0 (unknown)"},
        "oom_killed": {"type": "boolean", "description": "The OOM killer killed a process of this exec"},
        "job_id": {"type": "string", "description": "Present when the exec became (or was started as) a job"},
        "status": {"enum": ["running", "completed", "error", "killed"]},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "projecthub native API", "version": __version__,
             "description": "Projects, exec with rich results, durable jobs with SSE streams, "
                            "persistent Jupyter kernel sessions. Authenticate with "
                            "`Authorization: Bearer <api key>` (or Basic with the key as user name)."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "basic": {"type": "http", "scheme": "basic"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "ExecRequest": EXEC_REQUEST,
            "ExecResult": EXEC_RESULT,
            "Limits": {"type": "object", "additionalProperties": False, "properties": {
                "memory_bytes": {"oneOf": [{"type": "integer", "minimum": 32 * 2**20}, {"type": "null"},
                                           {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?[KMGT]i?B?$"}],
                                 "description": "bytes, or a size like 512M / 2GiB; null = unlimited (admins)"},
                "pids": {"type": ["integer", "null"], "minimum": 8},
                "cpu_cores": {"type": ["number", "null"], "minimum": 0.01, "maximum": 4096},
                "cpu_shares": {"type": ["integer", "null"], "minimum": 2, "maximum": 262144},
                "tmp_bytes": {"oneOf": [{"type": "integer", "minimum": 2**20}, {"type": "null"},
                                        {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?[KMGT]i?B?$"}]},
                "network": {"type": "boolean",
                            "description": "true = outbound access through the project's own network "
                                           "namespace and NAT, never to the host or other projects "
                                           "(admins only; applies at the project's next start)"},
                "disk_bytes": {"oneOf": [{"type": "integer", "minimum": 16 * 2**20, "maximum": 16 * 2**40 - 2**30},
                                         {"type": "null"},
                                         {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?[KMGT]i?B?$"}],
                               "description": "home + job state, a per-project ext4 image; null = "
                                              "not enforced (admins)"},
                "idle_timeout_s": {"oneOf": [{"type": "number", "minimum": 0, "maximum": 366 * 86400},
                                             {"type": "null"},
                                             {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?[smhd]?$"}],
                                   "description": "the project is stopped after this long without API "
                                                  "activity (running jobs and open sessions count); "
                                                  "0 or null = never; a longer value or 0 is for admins; "
                                                  "e.g. 1800 or '30m' (0 < x < 1 refused)"}}},
            "SessionRequest": {"type": "object", "properties": {
                "name": {"type": "string"}, "kernel": {"type": "string", "default": "python3"},
                "cwd": {"type": "string"}, "env": {"type": "object", "additionalProperties": {"type": "string"},
                                                   "propertyNames": {"pattern": "^[^=\\x00]+$"}}}},
            "CellRequest": {"type": "object", "required": ["code"], "properties": {
                "code": {"type": "string"}, "timeout_s": {"type": "number", "minimum": 0, "maximum": 1e9},
                "max_output": {"type": "integer", "minimum": 0, "maximum": 1e9}}},
        },
    },
    "paths": {
        "/api/v3/projects": {
            "get": _op("List your projects", {"200": _json({"type": "array", "items": {"type": "object"}})}),
            "post": _op("Create a project", {"201": _json({"type": "object", "properties": {
                "project_id": {"type": "string"}}})}, body_required=False, body={"type": "object", "properties": {
                    "title": {"type": "string", "maxLength": TITLE_MAX},
                    "description": {"type": "string", "maxLength": DESCRIPTION_MAX},
                    "start": {"type": "boolean"}, "limits": {"oneOf": [_ref("Limits"), {"type": "null"}]}}}),
        },
        "/api/v3/projects/{project_id}": {
            "get": _op("Project details, state and status", {"200": _json({"type": "object"})}, params=[_PROJECT_ID]),
            "delete": _op("Delete a project (stops it first)", {"204": {"description": "Deleted"}},
                          params=[_PROJECT_ID]),
        },
        "/api/v3/projects/{project_id}/start": {
            "post": _op("Start a project", {"200": _json({"type": "object"})}, params=[_PROJECT_ID])},
        "/api/v3/projects/{project_id}/stop": {
            "post": _op("Stop a project; leaves no process behind", {"200": _json({"type": "object"})},
                        params=[_PROJECT_ID])},
        "/api/v3/projects/{project_id}/limits": {
            "get": _op("Effective limits", {"200": _json(_ref("Limits"))}, params=[_PROJECT_ID]),
            "put": _op("Override limits (account keys only)", {"200": _json(_ref("Limits"))},
                       params=[_PROJECT_ID], body=_ref("Limits")),
        },
        "/api/v3/projects/{project_id}/exec": {
            "post": _op("Run a command; rich result, or a job record with yield_after/async",
                        {"200": _json(_ref("ExecResult"))},
                        params=[_PROJECT_ID, {"name": "Idempotency-Key", "in": "header", "required": False,
                                              "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
                        body=_ref("ExecRequest"))},
        "/api/v3/projects/{project_id}/jobs": {
            "get": _op("List jobs", {"200": _json({"type": "array", "items": {"type": "object"}})},
                       params=[_PROJECT_ID])},
        "/api/v3/projects/{project_id}/jobs/{job_id}": {
            "get": _op("A job's record (wait=seconds blocks until it ends or the wait is over)",
                       {"200": _json(_ref("ExecResult"))},
                       params=[_PROJECT_ID, _JOB_ID,
                               {"name": "wait", "in": "query", "schema": {"type": "number"}},
                               {"name": "stats", "in": "query", "schema": {"type": "boolean"}}]),
            "delete": _op("Kill a job's whole process tree", {"200": _json({"type": "object"})},
                          params=[_PROJECT_ID, _JOB_ID]),
        },
        "/api/v3/projects/{project_id}/jobs/{job_id}/output": {
            "get": _op("A byte range of a job's full output (kept on disk beyond the JSON cap)",
                       {"200": _json({"type": "object", "properties": {
                           "data": {"type": "string", "description": "UTF-8 text of bytes [offset, end)"},
                           "offset": {"type": "integer"},
                           "end": {"type": "integer", "description": "where to continue reading"},
                           "total": {"type": "integer"}}})},
                       params=[_PROJECT_ID, _JOB_ID,
                               {"name": "stream", "in": "query", "schema": {"enum": ["stdout", "stderr"]}},
                               {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                               {"name": "length", "in": "query", "schema": {"type": "integer", "minimum": 0}}])},
        "/api/v3/projects/{project_id}/jobs/{job_id}/events": {
            "get": _op("Server-Sent Events: stdout, stderr, stats, then one done or error. Resume with "
                       "Last-Event-ID ('<stdout offset>:<stderr offset>') or ?offset=&stderr_offset=",
                       {"200": {"description": "text/event-stream",
                                "content": {"text/event-stream": {"schema": _SSE_EVENT}}}},
                       params=[_PROJECT_ID, _JOB_ID,
                               {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                               {"name": "stderr_offset", "in": "query",
                                "schema": {"type": "integer", "minimum": 0}}])},
        "/api/v3/projects/{project_id}/sessions": {
            "get": _op("List kernel sessions", {"200": _json({"type": "array", "items": {"type": "object"}})},
                       params=[_PROJECT_ID]),
            "post": _op("Create a persistent kernel session", {"201": _json({"type": "object"})},
                        params=[_PROJECT_ID], body=_ref("SessionRequest"), body_required=False),
        },
        "/api/v3/projects/{project_id}/sessions/{session_id}": {
            "get": _op("A session", {"200": _json({"type": "object"})}, params=[_PROJECT_ID, _SESSION_ID]),
            "delete": _op("Delete a session (kills its kernel)", {"204": {"description": "Deleted"}},
                          params=[_PROJECT_ID, _SESSION_ID]),
        },
        "/api/v3/projects/{project_id}/sessions/{session_id}/execute": {
            "post": _op("Execute a cell; state is kept between calls", {"200": _json({"type": "object"})},
                        params=[_PROJECT_ID, _SESSION_ID], body=_ref("CellRequest"))},
        "/api/v3/projects/{project_id}/sessions/{session_id}/stream": {
            "post": _op("Execute a cell and stream its outputs as Server-Sent Events",
                        {"200": {"description": "text/event-stream",
                                 "content": {"text/event-stream": {"schema": _SSE_EVENT}}}},
                        params=[_PROJECT_ID, _SESSION_ID], body=_ref("CellRequest"))},
        "/api/v3/projects/{project_id}/sessions/{session_id}/interrupt": {
            "post": _op("Interrupt the running cell", {"200": _json({"type": "object"})},
                        params=[_PROJECT_ID, _SESSION_ID])},
        "/api/v3/projects/{project_id}/sessions/{session_id}/restart": {
            "post": _op("Restart the kernel (state is lost)", {"200": _json({"type": "object"})},
                        params=[_PROJECT_ID, _SESSION_ID])},
    },
}

"""Bad input is the client's fault on every surface: a lone surrogate ("\\ud800") anywhere
in a JSON body, a surrogate encoded in UTF-8, JSON nested 100 k deep (before and after
authentication), NaN, huge numbers, undecodable form fields: HTTP 400 with a message
(CoCalc's ``{"error": ...}`` shape on conat, v1's ``{"event": "error"}``), never a 5xx,
never a traceback in the server log, and the server keeps answering."""

from __future__ import annotations

from typing import Any, Callable

import httpx
import pytest

from tests.security.conftest import Proj, require_sandbox
from tests.server import Server

SURROGATE = '"\\ud800"'      # the JSON text of a lone high surrogate
DEEP = "[" * 100_000 + "]" * 100_000


def _bodies(pid: str) -> dict[str, list[tuple[str, str]]]:
    """Per surface: (path, raw JSON body) pairs that carry the attack into every field kind."""
    p = f"/api/v3/projects/{pid}"
    return {
        "v3": [
            ("/api/v3/projects", '{"title": %s}' % SURROGATE),
            ("/api/v3/projects", '{"title": "t", "description": "x\\udc00y"}'),
            (p + "/exec", '{"command": %s}' % SURROGATE),
            (p + "/exec", '{"command": "echo", "args": ["ok", %s]}' % SURROGATE),
            (p + "/exec", '{"command": "true", "env": {%s: "v"}}' % SURROGATE),
            (p + "/exec", '{"command": "true", %s: 1}' % SURROGATE),
            (p + "/sessions", '{"kernel": %s}' % SURROGATE),
            (p + "/exec", DEEP),
            (p + "/exec", '{"command": "true", "timeout": NaN}'),
            (p + "/exec", '{"command": "true", "timeout": 1e999}'),
            (p + "/exec", '{"command": "true", "timeout": %s}' % ("9" * 4000)),
        ],
        "conat": [
            ("/api/conat/project", '{"project_id": "%s", "name": "system.exec", "args": [{"command": %s}]}'
             % (pid, SURROGATE)),
            ("/api/conat/project", '{"project_id": "%s", "name": "system.writeTextFileToProject", '
             '"args": [{"path": "f", "content": %s}]}' % (pid, SURROGATE)),
            ("/api/conat/hub", '{"name": "projects.createProject", "args": [{"title": %s}]}' % SURROGATE),
            ("/api/conat/hub", DEEP),
            ("/api/conat/project", DEEP),
        ],
        "v1": [
            ("/api/v1/project_exec", '{"project_id": "%s", "command": %s}' % (pid, SURROGATE)),
            ("/api/v1/project_exec", '{"project_id": "%s", "command": "echo", "args": [%s]}' % (pid, SURROGATE)),
            ("/api/v1/project_exec", DEEP),
        ],
        "v2": [
            ("/api/v2/exec", '{"project_id": "%s", "command": %s}' % (pid, SURROGATE)),
            ("/api/v2/exec", '{"project_id": "%s", "command": "true", "env": {"A": %s}}' % (pid, SURROGATE)),
            ("/api/v2/exec", DEEP),
        ],
    }


def _check(r: httpx.Response, surface: str) -> None:
    assert r.status_code == 400, (surface, r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "Traceback" not in r.text and "internal server error" not in r.text
    if surface == "v1":
        assert body.get("event") == "error"


@pytest.fixture
def log_since(server: Server) -> Callable[[], str]:
    start = len(server.log())
    return lambda: server.log()[start:]


def _post(server: Server, path: str, body: bytes, key: str | None,
          content_type: str = "application/json") -> httpx.Response:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(server.url + path, content=body, headers=headers, timeout=60)


@pytest.mark.parametrize("surface", ["v3", "conat", "v1", "v2"])
def test_bad_json_is_400_on_every_surface(server: Server, proj_a: Proj, surface: str,
                                          log_since: Callable[[], str]) -> None:
    require_sandbox()
    for path, body in _bodies(proj_a.project_id)[surface]:
        _check(_post(server, path, body.encode(), proj_a.key), surface)
        # without a key every surface refuses before it reads the body (review finding 2)
        _check_unauthenticated(_post(server, path, body.encode(), None), surface)
    # the same surrogate sent as raw UTF-8 bytes (ED A0 80) instead of an escape
    path, body = _bodies(proj_a.project_id)[surface][0]
    raw = body.encode().replace(SURROGATE.encode(), b'"\xed\xa0\x80"')
    _check(_post(server, path, raw, proj_a.key), surface)
    log = log_since()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]
    assert proj_a.run("echo alive")["stdout"] == "alive\n"   # nothing was broken on the way


def _check_unauthenticated(r: httpx.Response, surface: str) -> None:
    """Refused on the key alone: v3 401, v1 400, conat and v2 CoCalc's HTTP 200 error."""
    assert r.status_code == {"v3": 401, "v1": 400}.get(surface, 200), (surface, r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "malformed" not in body["error"], body   # the body was never decoded
    assert "Traceback" not in r.text and "internal server error" not in r.text


def test_deep_json_before_authentication_is_refused_not_500(server: Server,
                                                            log_since: Callable[[], str]) -> None:
    for path in ("/api/conat/hub", "/api/conat/project", "/api/v1/project_exec", "/api/v2/exec"):
        surface = "v1" if "v1" in path else ("conat" if "conat" in path else "v2")
        _check_unauthenticated(_post(server, path, DEEP.encode(), None), surface)
        _check_unauthenticated(_post(server, path, DEEP.encode(), "sk-wrongwrongwrongwr000001"), surface)
    assert "Traceback" not in log_since()


def test_form_encoded_v1_and_v2_refuse_undecodable_fields(server: Server, proj_a: Proj,
                                                          log_since: Callable[[], str]) -> None:
    require_sandbox()
    form = "application/x-www-form-urlencoded"
    for field in ("command=%ED%A0%80", "command=echo&args=%ED%B0%80", "command=%FF", "%ED%A0%80=1&command=true"):
        body = f"project_id={proj_a.project_id}&{field}".encode()
        _check(_post(server, "/api/v1/project_exec", body, proj_a.key, form), "v1")
        _check(_post(server, "/api/v2/exec", body, proj_a.key, form), "v2")
    many = "&".join(f"f{i}=1" for i in range(5000)).encode()
    _check(_post(server, "/api/v1/project_exec", many, proj_a.key, form), "v1")
    # a well-formed form body still works
    ok = _post(server, "/api/v1/project_exec",
               f"project_id={proj_a.project_id}&command=echo%20h%C3%A9&bash=true".encode(), proj_a.key, form)
    assert ok.status_code == 200 and ok.json().get("event") == "project_exec_output", ok.text
    assert ok.json()["stdout"] == "hé\n"
    assert "Traceback" not in log_since()


def test_valid_unicode_still_round_trips(server: Server, proj_a: Proj) -> None:
    """The decoder refuses only what is broken: astral characters as escape pairs pass."""
    require_sandbox()
    out = proj_a.run("printf %s \"$X\"", env={"X": "\U0001F600 é \u4e2d"})
    assert out["stdout"] == "\U0001F600 é \u4e2d"
    r = _post(server, f"/api/v3/projects/{proj_a.project_id}/exec",
              b'{"command": "printf", "args": ["%s", "\\ud83d\\ude00"]}', proj_a.key)
    assert r.status_code == 200 and r.json()["stdout"] == "\U0001F600", r.text

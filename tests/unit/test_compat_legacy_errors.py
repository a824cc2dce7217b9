"""The older channel's error wrapping on v1/v2 (spec 4.9, seed 003), as a pure function.
The same texts are asserted end to end against a real server in
tests/integration/test_legacy.py."""

from __future__ import annotations

from projecthub.api.compat import _js_text, _legacy_error
from projecthub.errors import RemoteError

SEED = ("Error executing command 'sleep 5' with args '' -- killed command "
        "'bash /tmp/f-11757-1677-8ei2z0.t4fex0qkt9', , ")


def test_compat_kill_reproduces_the_seed_byte_for_byte() -> None:
    exc = RemoteError("killed command 'bash /tmp/f-11757-1677-8ei2z0.t4fex0qkt9'",
                      stdout="", stderr="", killed_by="timeout")
    assert _legacy_error({"command": "sleep 5", "args": []}, exc) == {
        "error": SEED, "stdout": "", "stderr": "", "killed_by": "timeout"}
    # v2 without args: '' as well, never 'undefined'
    assert _legacy_error({"command": "sleep 5"}, exc)["error"] == SEED


def test_compat_other_errors_have_no_kill_suffix_and_no_extra_fields() -> None:
    exc = RemoteError("command ''false' (args=)' exited with nonzero code 1 -- stderr=''")
    assert _legacy_error({"command": "false"}, exc) == {
        "error": "Error executing command 'false' with args '' -- command ''false' (args=)' "
                 "exited with nonzero code 1 -- stderr=''"}
    # a spent budget names its job; an HTTP status hint never travels
    exc = RemoteError("timeout: the call's time budget ran out", job_id="j", status=403)
    assert _legacy_error({"command": "x"}, exc) == {
        "error": "Error executing command 'x' with args '' -- timeout: the call's time budget ran out",
        "job_id": "j"}


def test_compat_connection_refused_hint() -> None:
    exc = RemoteError("command 'curl x' exited with nonzero code 7 -- stderr='Connection refused\n'")
    assert _legacy_error({"command": "curl x"}, exc)["error"] == (
        "Error executing command 'curl x' with args '' -- command 'curl x' exited with nonzero code 7 "
        "-- stderr='Connection refused\n' -- Email help@cocalc.com if you need full internet access, "
        "which is disabled by default.")


def test_compat_args_render_as_javascript_does() -> None:
    assert _js_text(["a", "b"]) == "a,b"
    assert _js_text([1, 2.0, 2.5, True, None, "x"]) == "1,2,2.5,true,,x"
    assert _js_text([["a", "b"], "c"]) == "a,b,c"
    assert _js_text({"a": 1}) == "[object Object]"
    assert _js_text(None) == "null"
    assert _js_text("a b") == "a b"
    assert _legacy_error({}, RemoteError("TypeError: x"))["error"] == (
        "Error executing command 'undefined' with args '' -- TypeError: x")

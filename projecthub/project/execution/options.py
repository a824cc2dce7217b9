"""Turn a ``system.exec`` / native exec options dict into one validated ``ExecRequest``.

All of CoCalc's resolution rules live here (spec 4.2-4.5): defaults, the automatic
switch to bash, POSIX quoting of bash+args, path/cwd/home, env overlay.  Bad input is
rejected with a ``RemoteError`` the caller can read, never a traceback.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

from ...errors import RemoteError
from ..context import ProjectContext

DEFAULT_TIMEOUT_S = 60.0
ASYNC_DEFAULT_MAX_OUTPUT = 1_048_576
ENV_CAP_BYTES = 1 << 20
# Blocking execs in CoCalc keep unbounded output; we keep at most this many characters
# per stream in memory (overridable with ctx.settings["exec_output_limit"]).
DEFAULT_OUTPUT_LIMIT = 16 * 1024 * 1024

# CoCalc splits with /\s+/; leading/trailing whitespace yields empty pieces that count.
_WHITESPACE = re.compile(r"\s+")


@dataclass
class ExecRequest:
    argv: list[str]             # what is executed; argv[0] is the program
    script: str | None          # bash mode: the script text (without the ulimit line)
    display: str                # "X" of the CoCalc error strings
    cwd: str
    env: dict[str, str]         # overlay only (merged over ctx.base_env at spawn)
    timeout_s: float | None     # None = no limit
    max_output: int | None      # user's cap in characters (None = none given)
    output_limit: int           # effective in-memory cap per stream
    ulimit_timeout: bool
    err_on_exit: bool
    uid_requested: bool         # uid/gid were sent: the spawn must fail like an unprivileged one
    kill_on_output: bool = False  # native: exceeding max_output kills the group (killed_by "output")

    @property
    def bash(self) -> bool:
        return self.script is not None

    @property
    def program(self) -> str:
        return self.argv[0]


def js_str(value: Any, what: str) -> str:
    """Convert like JavaScript's String(): node's spawn does this to args and env values."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
            return str(int(value))
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN" if value != value else repr(value))
    raise RemoteError(f"error invalid {what}: expected a string, got {type(value).__name__}")


def _no_nul(value: str, what: str) -> str:
    if "\0" in value:
        raise RemoteError(f"error TypeError [ERR_INVALID_ARG_VALUE]: The argument '{what}' "
                          "must be a string without null bytes.")
    return value


def _number(opts: dict[str, Any], key: str) -> float | None:
    value = opts.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise RemoteError(f"error invalid {key}: expected a number, got {value!r}")
    if value < 0:
        raise RemoteError(f"error invalid {key}: must not be negative, got {value!r}")
    return float(value)


def _flag(opts: dict[str, Any], key: str, default: bool) -> bool:
    value = opts.get(key)
    return default if value is None else bool(value)


def parse_request(ctx: ProjectContext, opts: dict[str, Any], *, async_mode: bool) -> ExecRequest:
    if not isinstance(opts, dict):
        raise RemoteError("error invalid options: expected an object")
    command = opts.get("command")
    if command is None:
        raise RemoteError("TypeError: Cannot read properties of undefined (reading 'split')")
    if not isinstance(command, str):
        raise RemoteError(f"error invalid command: expected a string, got {type(command).__name__}")
    _no_nul(command, "command")

    raw_args = opts.get("args")
    if raw_args is None:
        raw_args = []
    if not isinstance(raw_args, list):
        raise RemoteError("error invalid args: expected a list of strings")
    args = [_no_nul(js_str(a, "args"), f"args[{i}]") for i, a in enumerate(raw_args)]

    # --- command/args resolution and the automatic switch to bash (4.3)
    bash = bool(opts.get("bash"))
    if not args and len(_WHITESPACE.split(command)) > 1:
        script: str | None = command
    elif args and bash:
        script = " ".join(shlex.quote(x) for x in [command, *args])
        args = []
    elif bash:
        script = command
    else:
        script = None
    display = script if script is not None else f"'{command}' (args={' '.join(args)})"

    # --- working directory (4.2 step 5); `path` preset to HOME when absent (step 1)
    home = opts.get("home")
    home = str(ctx.home) if not home else _no_nul(js_str(home, "home"), "home")
    path = opts.get("path")
    if path is None:
        path = home
    else:
        path = _no_nul(js_str(path, "path"), "path")
        if not path.startswith("/"):
            path = f"{home}/{path}"
    cwd = opts.get("cwd")
    if cwd:
        path = _no_nul(js_str(cwd, "cwd"), "cwd")

    # --- timeout (4.10): default 60 s, 0 = none
    timeout = _number(opts, "timeout")
    timeout_s = DEFAULT_TIMEOUT_S if timeout is None else (timeout or None)

    # --- output cap (4.7)
    max_output_f = _number(opts, "max_output")
    max_output = None if max_output_f is None else int(max_output_f)
    if max_output is None and async_mode:
        max_output = ASYNC_DEFAULT_MAX_OUTPUT
    hard = int(ctx.settings.get("exec_output_limit", DEFAULT_OUTPUT_LIMIT))
    output_limit = hard if max_output is None else min(max_output, hard)

    # --- environment overlay (4.5)
    raw_env = opts.get("env")
    if raw_env is None:
        raw_env = {}
    if not isinstance(raw_env, dict):
        raise RemoteError("error invalid env: expected an object of strings")
    env: dict[str, str] = {}
    size = 0
    for key, value in raw_env.items():
        key = _no_nul(str(key), "env")
        if not key or "=" in key:
            raise RemoteError(f"error invalid env: bad variable name {key!r}")
        env[key] = _no_nul(js_str(value, f"env.{key}"), f"env.{key}")
        size += len(key) + len(env[key]) + 2
        if size > ENV_CAP_BYTES:
            raise RemoteError(f"error invalid env: larger than {ENV_CAP_BYTES} bytes")
    uid_requested = opts.get("uid") is not None or opts.get("gid") is not None
    if opts.get("uid") is not None:
        env["HOME"] = home

    return ExecRequest(
        argv=["bash"] if script is not None else [command, *args],
        script=script, display=display, cwd=path, env=env, timeout_s=timeout_s,
        max_output=max_output, output_limit=output_limit,
        ulimit_timeout=_flag(opts, "ulimit_timeout", True),
        err_on_exit=_flag(opts, "err_on_exit", True),
        uid_requested=uid_requested,
        kill_on_output=_flag(opts, "kill_on_output_limit", False),
    )

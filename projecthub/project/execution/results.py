"""Shape an ``Outcome`` for each caller: CoCalc blocking result/errors (spec 4.4, 4.7-4.9),
CoCalc async final states (4.11), and the rich native result."""

from __future__ import annotations

import signal as signal_mod
from typing import Any

from ...errors import RemoteError
from .options import ExecRequest
from .runner import Outcome

STDERR_CUT = 1024


def cut_stderr(text: str) -> str:
    return text if len(text) <= STDERR_CUT else text[: STDERR_CUT - 1] + "\u2026"


def _suffixed(text: str, truncated: bool, req: ExecRequest, memory_truncated: bool = False) -> str:
    """CoCalc appends the suffix when the kept text is >= the cap (so exactly-M output
    gets it too).  Without a user cap, only our own memory caps can trigger it; a memory
    cap (bytes, capture.py) names the characters actually kept."""
    if req.max_output is not None and len(text) >= req.max_output:
        return f"{text} (truncated at {req.max_output} characters)"
    if memory_truncated:
        return f"{text} (truncated at {len(text)} characters)"
    if req.max_output is None and truncated:
        return f"{text} (truncated at {req.output_limit} characters)"
    return text


def compat_exit_code(outcome: Outcome) -> int:
    """CoCalc maps a death by signal (null exit code) to 0, and a spawn failure to 1."""
    if outcome.spawn_error is not None:
        return 1
    return 0 if outcome.exit_code is None else outcome.exit_code


def blocking_result(req: ExecRequest, outcome: Outcome) -> dict[str, Any]:
    """The ``system.exec`` reply, or the exact RemoteError (decision order of 4.8)."""
    stdout, stderr = outcome.stdout.text(), outcome.stderr.text()
    if outcome.killed_by is not None:
        # Deviation: the partial output travels with the error (extra JSON fields).
        raise RemoteError(outcome.kill_text, stdout=stdout, stderr=stderr,
                          killed_by=outcome.killed_by)
    code = compat_exit_code(outcome)
    if req.err_on_exit and code != 0:
        raise RemoteError(f"command '{req.display}' exited with nonzero code {code} "
                          f"-- stderr='{cut_stderr(stderr)}'")
    if outcome.spawn_error is not None:
        raise RemoteError(f"command '{req.display}' was not able to run "
                          f"-- stderr='{cut_stderr(stderr)}'")
    return {"type": "blocking",
            "stdout": _suffixed(stdout, outcome.stdout.truncated, req, outcome.stdout.memory_truncated),
            "stderr": _suffixed(stderr, outcome.stderr.truncated, req, outcome.stderr.memory_truncated),
            "exit_code": code}


def async_final_fields(req: ExecRequest, outcome: Outcome, *, native: bool) -> dict[str, Any]:
    """status/stdout/stderr/exit_code of a finished job (4.11 final-state table).
    Native jobs keep their output and real exit code; only kills make them "error"."""
    stdout, stderr = outcome.stdout.text(), outcome.stderr.text()
    if native:
        failed = outcome.killed_by is not None or outcome.spawn_error is not None
        status = "killed" if outcome.killed_by == "killed" else "error" if failed else "completed"
        return {"status": status, "stdout": stdout,
                "stderr": stderr, "exit_code": compat_exit_code(outcome)}
    code = compat_exit_code(outcome)
    if outcome.killed_by == "killed":     # killed on request through the jobs API
        return {"status": "killed", "stdout": stdout, "stderr": stderr, "exit_code": code}
    if outcome.killed_by is not None:
        return {"status": "error", "stdout": "", "stderr": outcome.kill_text, "exit_code": 1}
    if outcome.spawn_error is not None:
        text = stderr if req.err_on_exit else (
            f"command '{req.display}' was not able to run -- stderr='{cut_stderr(stderr)}'")
        return {"status": "error", "stdout": "", "stderr": text, "exit_code": 1}
    if code != 0 and req.err_on_exit:
        return {"status": "error", "stdout": "", "stderr": stderr or "No result", "exit_code": 1}
    if code != 0:
        return {"status": "completed", "stdout": stdout, "stderr": stderr, "exit_code": code}
    return {"status": "completed",
            "stdout": _suffixed(stdout, outcome.stdout.truncated, req, outcome.stdout.memory_truncated),
            "stderr": _suffixed(stderr, outcome.stderr.truncated, req, outcome.stderr.memory_truncated),
            "exit_code": code}


def native_result(outcome: Outcome) -> dict[str, Any]:
    killed_by = outcome.killed_by
    if killed_by in ("cancelled", "killed"):
        killed_by = "signal"     # stopped on request (caller gone, daemon stop, jobs API)
    if killed_by is None and outcome.oom_killed:
        # the OOM killer fired inside this exec's group, even if it took a child (a bash
        # script's `head` dies and the script itself exits normally)
        killed_by = "oom"
    elif killed_by is None and outcome.signal is not None:
        killed_by = "signal"
    sig = None
    if outcome.signal is not None:
        try:
            sig = signal_mod.Signals(outcome.signal).name
        except ValueError:
            sig = str(outcome.signal)
    result: dict[str, Any] = {
        "exit_code": outcome.exit_code,
        "signal": sig,
        "timed_out": outcome.timed_out,
        "killed_by": killed_by,
        "stdout": outcome.stdout.text(),
        "stderr": outcome.stderr.text(),
        "stdout_truncated": outcome.stdout.truncated,
        "stderr_truncated": outcome.stderr.truncated,
        "stdout_bytes": outcome.stdout.total_bytes,
        "stderr_bytes": outcome.stderr.total_bytes,
        "wall_s": round(outcome.wall_s, 6),
        "cpu_user_s": round(outcome.cpu_user_s, 6),
        "cpu_sys_s": round(outcome.cpu_sys_s, 6),
        "max_rss_bytes": outcome.max_rss_bytes,
        "oom_killed": outcome.oom_killed,
    }
    if outcome.spawn_error is not None:
        result["spawn_error"] = outcome.spawn_error
    for name, cap in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
        error = getattr(cap, "spill_error", None)
        if error is not None:   # an async job's output file ended short (its disk filled)
            result[f"{name}_error"] = error
    return result


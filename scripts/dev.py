#!/usr/bin/env python3
"""Set up a virtual environment and run projecthub or its tests.

    python3 scripts/dev.py serve [serve options]   # embedded defaults: SQLite, 127.0.0.1:8765
    python3 scripts/dev.py setup                   # only set up .venv; says how to call `projecthub`
    python3 scripts/dev.py test [pytest options]   # the whole suite

Needs nothing but Python 3.11+.  The venv lives in .venv next to this repository and is
re-synced when pyproject.toml changes; the first set-up takes a minute or two, each step is
shown on stderr with the time it took (pip's own progress too).  The `projecthub` command is
then ``.venv/bin/projecthub`` (or ``projecthub`` after ``source .venv/bin/activate``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
COMMAND = VENV / "bin" / "projecthub"
_STARTED = time.monotonic()
# the base install is nothing (so that `projecthub[client]` is only httpx): the server is its
# [server] extra, and the tests drive it through the client and the MCP server too
TEST_EXTRAS = "server,client,test"


def step(message: str) -> None:
    """One line of progress on stderr (stdout stays the command's own), with the time so far."""
    print(f"[dev.py {time.monotonic() - _STARTED:5.1f} s] {message}", file=sys.stderr, flush=True)


def _pip(*args: str) -> None:
    # pip's own lines go to stderr too: progress, never mixed into serve's stdout
    done = subprocess.run([str(PYTHON), "-m", "pip", *args, "--disable-pip-version-check"],
                          stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"dev.py: pip {' '.join(args[:2])} failed (exit code {done.returncode}): see its "
                 "output above; fix the cause and run the same command again")


def ensure_venv(extras: str) -> bool:
    """Create or update .venv; True when something was installed."""
    if sys.version_info < (3, 11):
        sys.exit("projecthub needs Python 3.11 or newer")
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PYTHON.exists() and stamp.exists() and stamp.read_text() == digest:
        return False
    step("setting up the projecthub environment in .venv (a minute or two the first time)")
    if not PYTHON.exists():
        step(f"creating the virtual environment {VENV}")
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(f"dev.py: cannot create {VENV}: {exc} (on Debian/Ubuntu: apt-get install python3-venv)")
    step("upgrading pip")
    _pip("install", "--upgrade", "pip")
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    step(f"installing projecthub{f' with its {extras} extras' if extras else ''} and its dependencies")
    _pip("install", "--progress-bar", "off", "-e", target)
    stamp.write_text(digest)
    step("set-up done")
    return True


def how_to_call() -> None:
    shown = os.path.relpath(COMMAND) if COMMAND.is_relative_to(Path.cwd()) else str(COMMAND)
    step(f"the projecthub command is {shown} (e.g. `{shown} --help`, `{shown} doctor`), "
         f"or `projecthub` after `source {os.path.dirname(shown)}/activate`")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("serve", "setup", "test"):
        sys.exit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    if command in ("serve", "setup"):
        installed = ensure_venv("server")
        if installed or command == "setup":
            how_to_call()
        if command == "setup":
            return
        step(f"starting {COMMAND} serve {' '.join(rest)}".rstrip())
        os.execv(str(COMMAND), [str(COMMAND), "serve", *rest])
    ensure_venv(TEST_EXTRAS)
    os.chdir(ROOT)
    os.execv(str(PYTHON), [str(PYTHON), "-m", "pytest", *(rest or ["tests"])])


if __name__ == "__main__":
    main()

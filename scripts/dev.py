#!/usr/bin/env python3
"""Set up a virtual environment and run projecthub or its tests.

    python3 scripts/dev.py serve [serve options]   # embedded defaults: SQLite, 127.0.0.1:8765
    python3 scripts/dev.py test [pytest options]   # the whole suite

Needs nothing but Python 3.11+.  The venv lives in .venv next to this repository and is
re-synced when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit("projecthub needs Python 3.11 or newer")
    if not PYTHON.exists():
        print(f"creating {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", target], check=True)
    stamp.write_text(digest)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("serve", "test"):
        sys.exit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "serve":
        ensure_venv("")
        os.execv(str(VENV / "bin" / "projecthub"), ["projecthub", "serve", *rest])
    ensure_venv("test")
    os.chdir(ROOT)
    os.execv(str(PYTHON), [str(PYTHON), "-m", "pytest", *(rest or ["tests"])])


if __name__ == "__main__":
    main()

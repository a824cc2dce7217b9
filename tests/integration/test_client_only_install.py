"""`pip install 'projecthub[client]'` pulls only httpx (issue 18 item 2), and that install works:
a throwaway venv gets the package from a copy of this checkout with its [client] extra, holds
nothing of the server, imports ``projecthub.client`` and drives the session's real server with
it; its ``projecthub serve`` says in one line which extra is missing.

Needs PyPI (pip resolves httpx and the build backend there); under CI=true an unreachable
index is a failure, like any missing capability.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.server import Account, Server

ROOT = Path(__file__).resolve().parents[2]
# httpx and what it depends on (any of its releases since 0.27), and what a venv starts with
ALLOWED = {"projecthub", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio",
           "typing-extensions", "exceptiongroup", "pip", "setuptools"}
SERVER = {"starlette", "uvicorn", "httptools", "sqlalchemy", "psutil", "jupyter-client", "ipykernel",
          "pyzmq", "pyseccomp", "pydantic", "diff-match-patch", "prometheus-client"}

USE_CLIENT = r"""
import sys
from projecthub.client import Client
url, key = sys.argv[1], sys.argv[2]
for name in ("starlette", "uvicorn", "sqlalchemy", "pydantic"):
    try:
        __import__(name)
    except ImportError:
        continue
    sys.exit(f"{name} is importable in a client-only install")
with Client(url, key) as c:
    project = c.projects.create("client-only install")
    info = c.files.write_bytes(project, "hello.txt", b"hello from a client-only venv")
    assert info.size == 29, info
    result = c.exec(project, "cat hello.txt; echo; python3 -c 'print(6 * 7)'")
    assert result.stdout == "hello from a client-only venv\n42\n", result
    assert c.files.read_bytes(project, "hello.txt") == b"hello from a client-only venv"
    c.projects.delete(project)
print("ok")
"""


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _source_copy(dest: Path) -> Path:
    """The package as pip would get it from a release, outside the shared checkout (an
    in-tree build would leave build/ and *.egg-info in it)."""
    dest.mkdir()
    shutil.copytree(ROOT / "projecthub", dest / "projecthub",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_client_extra_is_only_httpx_and_works(server: Server, account: Account, tmp_path: Path) -> None:
    require("PyPI reachable (pip install of projecthub[client] into a fresh venv)", _pypi_reachable())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    source = _source_copy(tmp_path / "src")
    done = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                           f"{source}[client]"], capture_output=True, text=True, timeout=540, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True, timeout=60, env=env, cwd=tmp_path)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "httpx" in installed and "projecthub" in installed
    assert not installed & SERVER, f"the client extra pulled server packages: {sorted(installed & SERVER)}"
    assert installed <= ALLOWED, f"the client extra pulled more than httpx: {sorted(installed - ALLOWED)}"

    # -I: neither the cwd nor PYTHONPATH may put this checkout on the path
    used = subprocess.run([str(python), "-I", "-c", USE_CLIENT, server.url, account.api_key],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert used.returncode == 0 and used.stdout.strip() == "ok", used.stdout + used.stderr

    for args in (["serve", "--port", "1"], ["doctor"], ["key", "list"]):
        refused = subprocess.run([str(venv / "bin" / "projecthub"), *args], capture_output=True, text=True,
                                 timeout=60, env=env, cwd=tmp_path)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stderr == "projecthub: error: the server needs 'pip install projecthub[server]'\n", \
            (args, refused.stderr)
        assert "Traceback" not in refused.stdout + refused.stderr

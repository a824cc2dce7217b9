"""The shared project environment (host/environment.py) read as a hostile project would.

Every project runs the same interpreter and packages, so a project that could change them
would run its code in every other project (and in their daemons).  And the server's own
Python packages, and the base interpreter's, must not be there to import.
"""

from __future__ import annotations

import sys

from tests.security.conftest import new_project, require_sandbox
from tests.server import Server


def test_a_project_cannot_change_the_shared_environment(server: Server) -> None:
    require_sandbox()
    attacker = new_project(server, server.new_account("EnvAttacker"), "env-attacker")
    victim = new_project(server, server.new_account("EnvVictim"), "env-victim")
    prefix = attacker.run("python3 -c 'import sys; print(sys.prefix)'")["stdout"].strip()
    site = attacker.run("python3 -c 'import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))'")[
        "stdout"].strip()
    attempts = {
        "replace numpy": f"echo 'raise SystemExit(\"pwned\")' > {site}/numpy/__init__.py",
        "plant a .pth": f"echo 'import os' > {site}/zz_evil.pth",
        "replace python": f"cp /bin/true {prefix}/bin/python3",
        "chmod": f"chmod 777 {site}",
        "pip into it": "pip install --no-user --no-index --no-deps --target " + site + " /dev/null",
    }
    for name, command in attempts.items():
        out = attacker.run(command + " 2>&1; echo rc=$?")
        assert "rc=0" not in out["stdout"], (name, out)
    # plain `pip install` (no --user) falls back to the user site: never into the environment
    out = attacker.run(f"ls -la {site} | wc -l")
    entries = int(out["stdout"].strip())
    assert victim.run("python3 -c 'import numpy; print(numpy.arange(3).sum())'")["stdout"] == "3\n"
    assert int(attacker.run(f"ls -la {site} | wc -l")["stdout"].strip()) == entries


def test_server_and_base_packages_are_not_importable(server: Server) -> None:
    require_sandbox()
    p = new_project(server, server.new_account("EnvLook"), "env-look")
    probe = ("import importlib.util, json, sys; "
             "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))")
    # the server's dependencies (in its venv) and a package only the base interpreter has
    found = p.run(f"python3 -c '{probe}' starlette uvicorn sqlalchemy httptools projecthub pytest numpy")
    import json
    seen = json.loads(found["stdout"])
    assert seen.pop("numpy") is True                   # the environment's own
    assert not any(seen.values()), seen                # nothing of the server's or the base's
    out = p.run(f"ls {sys.prefix} 2>&1; echo rc=$?")   # the server's venv is not mounted
    assert "rc=0" not in out["stdout"], out

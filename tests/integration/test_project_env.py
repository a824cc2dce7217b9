"""The project software environment (host/environment.py): numpy everywhere, user packages
with ``pip install --user``, and the server's own environment out of sight."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile

import httpx

from tests.server import PROJECT_ENV, Server


def v3(server: Server, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + "/api/v3" + path, timeout=120,
                         headers={"Authorization": f"Bearer {key}"}, **kwargs)


def make_wheel(name: str, version: str, source: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel (PEP 427) holding module ``name``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": source.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buf.getvalue()


def sh(project, command: str, timeout: int = 60) -> tuple[str, int]:
    """stdout+stderr and the exit code of ``command`` (the client raises on a non-zero exit)."""
    out = project.system.exec(command=f"{{ {command} ; }} 2>&1; echo __rc=$?", bash=True, timeout=timeout)
    text, _, rc = out["stdout"].rpartition("__rc=")
    return text, int(rc)


def put_file(project, path: str, data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    out = project.system.exec(command=f"echo {encoded} | base64 -d > {path}", bash=True)
    assert out["exit_code"] == 0, out


def test_numpy_in_stateless_execute(project) -> None:
    assert project.system.jupyter_execute(input="import numpy; numpy.arange(3).sum()", kernel="python3") == [
        {"data": {"text/plain": "3"}}]
    out = project.system.jupyter_execute(
        input="import pandas, scipy, matplotlib; int(pandas.Series([1, 2]).sum() + scipy.special.comb(3, 2))",
        kernel="python3")
    assert out == [{"data": {"text/plain": "6"}}]


def test_numpy_in_session_and_exec(server: Server, account, project_id: str, project) -> None:
    base = f"/projects/{project_id}/sessions"
    created = v3(server, account.api_key, "POST", base, json={"kernel": "python3"})
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]
    try:
        out = v3(server, account.api_key, "POST", f"{base}/{sid}/execute",
                 json={"code": "import numpy as np; int(np.arange(3).sum())"}).json()
        assert out["outputs"] == [{"data": {"text/plain": "3"}}], out
    finally:
        v3(server, account.api_key, "DELETE", f"{base}/{sid}")
    out = project.system.exec(command="python3 -c 'import numpy; print(numpy.arange(3).sum())'")
    assert out["stdout"] == "3\n" and out["exit_code"] == 0


def test_project_runs_the_project_environment_not_the_servers(project) -> None:
    gen = str(PROJECT_ENV.resolve() / "current")
    prefix = project.system.exec(command="python3 -c 'import sys; print(sys.prefix)'")["stdout"].strip()
    assert prefix.startswith(str(PROJECT_ENV)), prefix
    assert gen  # the managed environment's generation is what projects see
    # the server's packages are not importable, and its venv is not there at all
    for module in ("starlette", "sqlalchemy", "uvicorn", "projecthub.api"):
        text, rc = sh(project, f"python3 -c 'import {module}'")
        assert rc != 0 and "ModuleNotFoundError" in text, (module, text)
    import sys
    text, rc = sh(project, f"ls {sys.prefix}/lib")
    assert rc != 0 and "No such file" in text, text
    # the base interpreter's own site-packages (the server machine's packages) is hidden
    out = project.system.exec(
        command="python3 -c 'import sys, os; print(sorted(os.listdir(p) for p in sys.path if p.endswith(\"site-packages\") and not p.startswith(sys.prefix) and os.path.isdir(p)))'")
    assert out["stdout"].strip() in ("[]", "[[]]"), out
    # the environment is read-only for the project
    text, rc = sh(project, f"touch {prefix}/bin/evil")
    assert rc != 0 and "Read-only" in text, text
    # and its kernelspec is the one jupyter lists
    kernels = project.system.jupyter_execute(input="import sys; sys.executable", kernel="python3")
    assert kernels[0]["data"]["text/plain"].strip("'").startswith(str(PROJECT_ENV))


def test_pip_install_user_wheel_imports_everywhere(server: Server, account, project_id: str, project) -> None:
    name, data = make_wheel("phub_demo_pkg", "1.0", "VALUE = 'from a user wheel'\n")
    put_file(project, name, data)
    text, rc = sh(project, f"pip install --user --no-index ./{name}", timeout=120)
    assert rc == 0, text
    check = "import phub_demo_pkg; phub_demo_pkg.VALUE"
    # exec, a new stateless kernel, a session
    out = project.system.exec(command="python3 -c 'import phub_demo_pkg; print(phub_demo_pkg.__file__)'")
    assert "/home/user/.local/lib/python" in out["stdout"], out
    assert project.system.jupyter_execute(input=check, kernel="python3") == [
        {"data": {"text/plain": "'from a user wheel'"}}]
    base = f"/projects/{project_id}/sessions"
    sid = v3(server, account.api_key, "POST", base, json={"kernel": "python3"}).json()["session_id"]
    out = v3(server, account.api_key, "POST", f"{base}/{sid}/execute", json={"code": check}).json()
    assert out["outputs"] == [{"data": {"text/plain": "'from a user wheel'"}}], out
    v3(server, account.api_key, "DELETE", f"{base}/{sid}")
    # the user site lives in the home: it persists across a restart of the project
    headers = {"Authorization": f"Bearer {account.api_key}"}
    for name_ in ("stop", "start"):
        r = httpx.post(server.url + f"/api/v3/projects/{project_id}/{name_}", headers=headers, timeout=60)
        assert r.status_code in (200, 202, 204), r.text
    assert project.system.jupyter_execute(input=check, kernel="python3") == [
        {"data": {"text/plain": "'from a user wheel'"}}]

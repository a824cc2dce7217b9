"""Jupyter through the official client (spec 6; checklist 28-32) and native kernel sessions."""

from __future__ import annotations

import base64
import concurrent.futures
import time

import cocalc_api
import httpx
import pytest

from tests.server import Server


def test_seed_examples_exact(project) -> None:
    assert project.system.jupyter_execute(input="sum(range(100))", kernel="python3") == [
        {"data": {"text/plain": "4950"}}]
    assert project.system.jupyter_execute(input='print("Hello")', kernel="python3") == [
        {"name": "stdout", "text": "Hello\n"}]
    assert project.system.jupyter_execute(input="sum(range(a + 1))", kernel="python3", history=["a = 100"]) == [
        {"data": {"text/plain": "5050"}}]


def test_stateless_between_calls(project) -> None:
    project.system.jupyter_execute(input="secret = 42", kernel="python3")
    out = project.system.jupyter_execute(input="secret", kernel="python3")
    assert out[0]["ename"] == "NameError" and "is not defined" in out[0]["evalue"]


def test_error_shape_and_two_stream_items(project) -> None:
    out = project.system.jupyter_execute(input="1/0", kernel="python3")
    assert len(out) == 1 and out[0]["ename"] == "ZeroDivisionError"
    assert out[0]["evalue"] == "division by zero"
    assert any("division by zero" in line for line in out[0]["traceback"])
    assert "output_type" not in out[0] and "execution_count" not in out[0]
    two = project.system.jupyter_execute(
        input="import sys; sys.stdout.write('1'); sys.stdout.flush(); print('2')", kernel="python3")
    assert two == [{"name": "stdout", "text": "1"}, {"name": "stdout", "text": "2\n"}]


def test_kernels_reply_without_ipykernels_execute_sleep(project) -> None:
    # ipykernel sleeps 0.5 ms before each reply unless told not to; the daemon tells it
    # (it reads IOPub up to "idle"), so output written at the very end must still arrive.
    assert project.system.jupyter_execute(input="get_ipython().kernel._execute_sleep", kernel="python3") == [
        {"data": {"text/plain": "0.0"}}]
    out = project.system.jupyter_execute(input="for i in range(300): print(i)", kernel="python3")
    assert "".join(o["text"] for o in out) == "".join(f"{i}\n" for i in range(300))


def test_output_cap_notice(project) -> None:
    out = project.call("system.jupyterExecute", [{  # the official client cannot send limits
        "input": "import sys; print('hi'); sys.stdout.flush(); print('x'*100)", "kernel": "python3",
        "limits": {"max_output_per_cell": 50}}])
    assert out == [{"name": "stdout", "text": "hi\n"},
                   {"name": "stdout", "output_type": "stream",
                    "text": ["Output truncated since it exceeded the cell output limit of 50 characters"]}]


def test_timeout_interrupts_and_pool_keeps_working(project) -> None:
    started = time.monotonic()
    out = project.call("system.jupyterExecute", [{
        "input": "print('before', flush=True)\nwhile True: pass", "kernel": "python3",
        "limits": {"timeout_ms_per_cell": 1000}}])
    assert time.monotonic() - started < 15
    assert out[0] == {"name": "stdout", "text": "before\n"}
    assert project.system.jupyter_execute(input="2+2", kernel="python3") == [{"data": {"text/plain": "4"}}]


def test_kernel_death_then_recovery(project) -> None:
    with pytest.raises(RuntimeError, match="Kernel last exited with code 1"):
        project.system.jupyter_execute(input="import os; os._exit(1)", kernel="python3")
    assert project.system.jupyter_execute(input="1+1", kernel="python3") == [{"data": {"text/plain": "2"}}]


def test_unknown_kernel_lists_specs(project) -> None:
    with pytest.raises(RuntimeError, match=r'No spec available for kernel "nope"\.  Available specs: .*python3'):
        project.system.jupyter_execute(input="1", kernel="nope")


def test_path_changes_directory(project) -> None:
    project.system.exec(command="mkdir -p work/dir")
    out = project.system.jupyter_execute(input="import os; os.getcwd()", kernel="python3", path="work/dir")
    assert out[0]["data"]["text/plain"].strip("'").endswith("/work/dir")


def test_kernel_list_is_never_empty_right_after_an_execute(project) -> None:
    """Issue 19 item 6: the used pool kernel is killed after its call while its replacement
    starts; a list at once must still show a live kernel (CoCalc's never comes back empty
    then), with a real pid."""
    empty = 0
    for i in range(50):
        out = project.system.jupyter_execute(input=f"{i} + 1", kernel="python3")
        assert out == [{"data": {"text/plain": str(i + 1)}}], out
        kernels = project.system.list_jupyter_kernels()
        if not kernels:
            empty += 1
        for kernel in kernels:
            assert isinstance(kernel["pid"], int) and kernel["pid"] > 0, kernel
    assert empty == 0, f"{empty} of 50 lists right after an execute were empty"


def test_list_and_stop_kernels(project) -> None:
    project.system.jupyter_execute(input="1", kernel="python3")  # fills the pool
    # The refill boots in the background, after the call has answered.
    deadline = time.monotonic() + 10
    while not (kernels := project.system.list_jupyter_kernels()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernels, "a warm pool kernel should be listed"
    for kernel in kernels:
        assert isinstance(kernel["pid"], int) and kernel["pid"] > 0
        assert isinstance(kernel["connectionFile"], str) and kernel["kernel_name"] == "python3"
    victim = kernels[0]["pid"]
    assert project.system.stop_jupyter_kernel(pid=victim) == {"success": True}
    assert victim not in [k["pid"] for k in project.system.list_jupyter_kernels()]
    assert project.system.stop_jupyter_kernel(pid=999999) == {"success": False}


def test_twenty_concurrent_executes(project) -> None:
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(
            lambda i: project.system.jupyter_execute(input=f"{i} * 3", kernel="python3"), range(20)))
    assert [r[0]["data"]["text/plain"] for r in results] == [str(i * 3) for i in range(20)]


def test_hub_jupyter_kernels_and_execute(server: Server, hub, project_id: str) -> None:
    specs = hub.jupyter.kernels(project_id=project_id)
    assert any(spec["name"] == "python3" for spec in specs)
    result = hub.jupyter.execute(input="6*7", kernel="python3", project_id=project_id)
    assert result["output"] == [{"data": {"text/plain": "42"}}]
    assert isinstance(result["created"], str)
    stranger = cocalc_api.Hub(api_key=server.new_account("Stranger").api_key, host=server.url)
    with pytest.raises(RuntimeError, match="permission denied -- user must be collaborator on project"):
        stranger.jupyter.execute(input="1", kernel="python3", project_id=project_id)
    with pytest.raises(RuntimeError, match="Jupyter API is not enabled on this server"):
        hub.jupyter.execute(input="1", kernel="python3")


def test_bridge_timeout_says_timeout(server: Server, account, project_id: str) -> None:
    body = {"name": "system.jupyterExecute", "project_id": project_id, "timeout": 1500,
            "args": [{"input": "import time; time.sleep(10)", "kernel": "python3"}]}
    started = time.monotonic()
    out = httpx.post(server.url + "/api/conat/project", json=body, timeout=60,
                     headers={"Authorization": f"Bearer {account.api_key}"}).json()
    assert "timeout" in out["error"] and time.monotonic() - started < 5


def v3(server: Server, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + "/api/v3" + path, timeout=120,
                         headers={"Authorization": f"Bearer {key}"}, **kwargs)


def test_persistent_session(server: Server, account, project_id: str) -> None:
    base = f"/projects/{project_id}/sessions"
    created = v3(server, account.api_key, "POST", base, json={"name": "analysis", "kernel": "python3"})
    assert created.status_code == 201
    sid = created.json()["session_id"]
    run = lambda code, **kw: v3(server, account.api_key, "POST", f"{base}/{sid}/execute",  # noqa: E731
                                json={"code": code, **kw}).json()
    assert run("x = 21")["status"] == "ok"
    assert run("x * 2")["outputs"] == [{"data": {"text/plain": "42"}}]
    interrupted = run("import time\nwhile True: time.sleep(0.05)", timeout_s=1)
    assert interrupted["timed_out"] is True and interrupted["interrupted"] is True
    assert interrupted["state_survived"] is True and interrupted["restarted"] is False
    assert run("x")["outputs"] == [{"data": {"text/plain": "21"}}]
    assert run("get_ipython().kernel._execute_sleep")["outputs"] == [{"data": {"text/plain": "0.0"}}]
    png = run("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()")
    images = [o for o in png["outputs"] if "image/png" in o.get("data", {})]
    assert images and base64.b64decode(images[0]["data"]["image/png"]).startswith(b"\x89PNG")
    stream = v3(server, account.api_key, "POST", f"{base}/{sid}/stream",
                json={"code": "for i in range(3): print(i, flush=True)"})
    assert "event: output" in stream.text and "event: done" in stream.text
    listed = v3(server, account.api_key, "GET", base).json()
    assert [s["session_id"] for s in listed] == [sid]
    assert v3(server, account.api_key, "DELETE", f"{base}/{sid}").status_code == 204
    assert v3(server, account.api_key, "GET", f"{base}/{sid}").status_code == 404


def test_hub_jupyter_without_project_in_shared_project(server: Server, hub) -> None:
    enabled = server.cli("jupyter-api", "enable")
    try:
        assert enabled["jupyter_api_enabled"] is True
        assert hub.jupyter.execute(input="2**10", kernel="python3")["output"] == [{"data": {"text/plain": "1024"}}]
        assert any(spec["name"] == "python3" for spec in hub.jupyter.kernels())
    finally:
        server.cli("jupyter-api", "disable")
    with pytest.raises(RuntimeError, match="Jupyter API is not enabled on this server"):
        hub.jupyter.execute(input="1", kernel="python3")

"""Jupyter and terminals in scale-out mode (issue 17): the hub holds no kernel and no PTY;
every call goes through its ``RemoteHost`` and the NATS fabric to the project's host.
Real kernels, a real terminal WebSocket, one cluster (two hubs, two hosts) for the module."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from tests.cluster import Cluster, attempt, module_cluster, nats_server, wait_for  # noqa: F401
from tests.server import Server
from tests.terminals import attach, listing, new_terminal



def _v3(hub: Server, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, hub.url + "/api/v3" + path, timeout=120,
                         headers={"Authorization": f"Bearer {key}"}, **kwargs)


def _new_project(cluster: Cluster, title: str) -> tuple[str, str]:
    """(account key, project id) of a started project, created through hub 0."""
    import cocalc_api
    account = cluster.new_account()
    hub0 = cluster.hubs[0]
    project_id = cocalc_api.Hub(api_key=account.api_key, host=hub0.url).projects.create_project(title=title)
    project = cocalc_api.Project(api_key=account.api_key, host=hub0.url, project_id=project_id)
    wait_for(lambda: attempt(lambda: project.system.exec(command="true")), 90, "the project to start")
    return account.api_key, project_id


def _placed_on(cluster: Cluster, project_id: str) -> str:
    """The host whose data dir holds the project (it runs on exactly one)."""
    holders = [name for name, host in cluster.hosts.items()
               if (host.data_dir / "projects" / project_id).is_dir()]
    assert len(holders) == 1, holders
    return holders[0]


def test_stateless_jupyter_through_both_hubs(module_cluster: Cluster) -> None:
    import cocalc_api
    key, project_id = _new_project(module_cluster, "jupyter")
    _placed_on(module_cluster, project_id)
    for hub in module_cluster.hubs:
        project = cocalc_api.Project(api_key=key, host=hub.url, project_id=project_id)
        assert project.system.jupyter_execute(input="sum(range(100))", kernel="python3") == [
            {"data": {"text/plain": "4950"}}]
        out = project.system.jupyter_execute(input="1/0", kernel="python3")
        assert out[0]["ename"] == "ZeroDivisionError", out
        assert any(k["pid"] for k in project.system.list_jupyter_kernels())
        api = cocalc_api.Hub(api_key=key, host=hub.url)
        assert any(spec["name"] == "python3" for spec in api.jupyter.kernels(project_id=project_id))
        assert api.jupyter.execute(input="6*7", kernel="python3", project_id=project_id)["output"] == [
            {"data": {"text/plain": "42"}}]


def test_persistent_session_with_an_image_through_both_hubs(module_cluster: Cluster) -> None:
    key, project_id = _new_project(module_cluster, "sessions")
    hub0, hub1 = module_cluster.hubs
    base = f"/projects/{project_id}/sessions"
    created = _v3(hub0, key, "POST", base, json={"name": "analysis", "kernel": "python3"})
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]

    def run(hub: Server, code: str, **kw: Any) -> dict[str, Any]:
        r = _v3(hub, key, "POST", f"{base}/{sid}/execute", json={"code": code, **kw})
        assert r.status_code == 200, r.text
        return r.json()

    assert run(hub0, "x = 21")["status"] == "ok"
    assert run(hub1, "x * 2")["outputs"] == [{"data": {"text/plain": "42"}}]   # same kernel
    interrupted = run(hub1, "import time\nwhile True: time.sleep(0.05)", timeout_s=1)
    assert interrupted["timed_out"] is True and interrupted["state_survived"] is True, interrupted
    png = run(hub0, "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()")
    images = [o for o in png["outputs"] if "image/png" in o.get("data", {})]
    assert images and base64.b64decode(images[0]["data"]["image/png"]).startswith(b"\x89PNG"), png
    stream = _v3(hub1, key, "POST", f"{base}/{sid}/stream",
                 json={"code": "for i in range(3): print(i, flush=True)"})
    assert stream.status_code == 200 and "event: output" in stream.text and "event: done" in stream.text
    assert [s["session_id"] for s in _v3(hub1, key, "GET", base).json()] == [sid]
    assert _v3(hub1, key, "DELETE", f"{base}/{sid}").status_code == 204
    assert _v3(hub0, key, "GET", f"{base}/{sid}").status_code == 404


def test_terminal_attached_through_hub0_reattached_through_hub1(module_cluster: Cluster) -> None:
    key, project_id = _new_project(module_cluster, "terminals")
    hub0, hub1 = module_cluster.hubs
    host = _placed_on(module_cluster, project_id)
    tid = new_terminal(hub0, project_id, key, cols=100, rows=30)
    a = attach(hub0, project_id, tid, key)
    a.type("echo hi-$((6*7)); stty size; echo end-$((1+1))")
    out = a.read_until(b"end-2\r\n", timeout=30)   # the typed line echoes "end-$((1+1))"
    assert b"hi-42" in out and b"30 100" in out, out
    a.resize(120, 40)
    a.type("stty size")
    a.read_until(b"40 120", timeout=30)
    a.close()
    wait_for(lambda: listing(hub1, project_id, key)[0]["clients"] == 0, 10, "the client to detach")

    b = attach(hub1, project_id, tid, key, header=False)     # the other hub, as a browser does
    assert b"hi-42" in b.scrollback and b"40 120" in b.scrollback, b.scrollback
    b.type("echo again-$((2*21))")
    assert b"again-42" in b.read_until(b"again-42", timeout=30)
    [row] = listing(hub0, project_id, key)
    assert (row["cols"], row["rows"], row["alive"], row["clients"]) == (120, 40, True, 1), row
    b.type("exit 7")
    assert b.wait_closed(30) == (1000, "the shell exited")
    assert b.controls == [{"type": "exit", "code": 7}], b.controls
    assert listing(hub1, project_id, key) == []
    assert _placed_on(module_cluster, project_id) == host

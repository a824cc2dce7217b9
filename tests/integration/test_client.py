"""projecthub.client against a real server: projects, exec, jobs and streams (with a dropped
connection), sessions with images, limits, keys, errors and retries."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from projecthub.client import (BadRequest, CellError, Client, CommandFailed, ConnectionFailed, NotFound,
                               PermissionDenied, ProjectHubError, TimeoutExpired, Unauthorized)
from tests.integration.client_proxy import CuttingProxy
from tests.server import Server


@pytest.fixture
def proj(client: Client):
    project = client.projects.create("client test")
    yield project
    client.projects.delete(project)


def test_import_pulls_nothing_of_the_server() -> None:
    code = ("import sys, projecthub.client; from projecthub.client import AsyncClient; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'starlette', 'sqlalchemy', 'psutil', 'jupyter_client', 'ipykernel', 'zmq', 'uvicorn', 'pydantic'}); "
            "server = sorted(m for m in sys.modules if m.startswith('projecthub.') "
            "and not m.startswith('projecthub.client')); print(bad, server); assert not bad and not server")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_projects_lifecycle(client: Client) -> None:
    project = client.projects.create("lifecycle", description="d")
    assert project.title == "lifecycle" and project.description == "d"
    assert project.project_id in {p.project_id for p in client.projects.list()}
    assert client.projects.start(project)["state"] == "running"
    assert client.projects.get(project).running
    assert client.projects.stop(project.project_id)["state"] in ("stopped", "stopping")
    client.projects.delete(project)
    with pytest.raises(NotFound) as err:
        client.projects.get(project)
    assert err.value.status == 404 and "no such project" in err.value.message


def test_exec_results_and_errors(server: Server, client: Client, proj) -> None:
    result = client.exec(proj, "echo hi; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (3, "hi\n", "err\n", False)
    assert client.exec(proj, "echo", args=["a b"]).stdout == "a b\n"
    assert client.exec(proj, "pwd", cwd="/tmp").stdout == "/tmp\n"
    assert client.exec(proj, "echo $X", env={"X": "42"}).stdout == "42\n"
    with pytest.raises(CommandFailed) as failed:
        client.exec(proj, "echo oops >&2; false", check=True)
    assert failed.value.result.exit_code == 1
    with pytest.raises(TimeoutExpired) as timed:
        client.exec(proj, "echo before; sleep 30", timeout=0.5)
    assert timed.value.stdout == "before\n" and timed.value.result.killed_by == "timeout"
    with pytest.raises(BadRequest) as bad:
        client.exec(proj, "")
    assert bad.value.status == 400 and "command" in bad.value.message
    stranger = server.new_account("Stranger")
    with Client(server.url, stranger.api_key) as other:
        with pytest.raises(PermissionDenied):
            other.exec(proj, "true")
    with Client(server.url, "sk-nopenopenopenopeno000001") as nobody:
        with pytest.raises(Unauthorized):
            nobody.projects.list()


def test_idempotency_key_runs_once(client: Client, proj) -> None:
    body = "echo run >> runs.txt; wc -l < runs.txt"
    first = client.exec(proj, body, idempotency_key="client-once-1")
    again = client.exec(proj, body, idempotency_key="client-once-1")
    assert first.stdout == again.stdout == "1\n" and first.job_id == again.job_id


def test_jobs_wait_stream_callbacks_kill(client: Client, proj) -> None:
    job = client.start(proj, "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2")
    chunks = list(job.stream())
    assert "".join(c.data for c in chunks if c.stream == "stdout") == "line1\nline2\nline3\n"
    assert "".join(c.data for c in chunks if c.stream == "stderr") == "oops\n"
    assert job.result is not None and job.result.exit_code == 0
    assert list(job.stream()) == []   # a second stream resumes after the end: nothing new
    again = [c.data for c in job.stream(from_start=True)]
    assert "".join(again).count("line") == 3
    assert job.wait().stdout == "line1\nline2\nline3\n"
    out, err = [], []
    result = client.exec(proj, "echo a; sleep 0.3; echo b >&2", on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == "a\n" and "".join(err) == "b\n" and result.exit_code == 0
    slow = client.start(proj, "sleep 60")
    with pytest.raises(TimeoutExpired) as still:
        slow.wait(timeout=0.5)
    assert still.value.result.running and still.value.job_id == slow.job_id
    assert any(j.job_id == slow.job_id for j in client.jobs(proj))
    assert slow.kill() is True
    assert slow.wait(timeout=20).status != "running"
    with pytest.raises(NotFound):
        client.job(proj, "nope").info()


def test_job_output_beyond_the_cap(client: Client, proj) -> None:
    job = client.start(proj, "seq 1 300000", max_output=10)
    done = job.wait(timeout=60)
    expected = "".join(f"{i}\n" for i in range(1, 300001))
    assert len(done.stdout) == 10 and done.stdout_bytes == len(expected)
    assert job.output() == expected                       # > 1 MiB: read in pages
    assert job.output(offset=100, length=20) == expected[100:120]


def test_stream_resumes_after_a_dropped_connection(server: Server, account, client: Client, proj) -> None:
    job = client.start(proj, "for i in $(seq 1 12); do echo line$i; sleep 0.1; done")
    proxy = CuttingProxy(server.port, cut_after=700)   # headers and a few events, then cut
    try:
        with Client(proxy.url, account.api_key) as through_proxy:
            handle = through_proxy.job(proj, job.job_id)
            text = "".join(c.data for c in handle.stream())
            assert proxy.connections >= 2                 # it did reconnect
    finally:
        proxy.close()
    assert text == "".join(f"line{i}\n" for i in range(1, 13))   # nothing lost, nothing twice
    assert handle.result is not None and handle.result.exit_code == 0
    # resuming explicitly from an event id, e.g. in another process
    first_id = "6:0"   # after "line1\n" (6 bytes of stdout, 0 of stderr)
    rest = "".join(c.data for c in client.job(proj, job.job_id).stream(last_event_id=first_id))
    assert rest == text[6:]


def test_idempotent_calls_are_retried_others_are_not(server: Server, account, proj) -> None:
    # the proxy's first connection answers nothing and closes: GET is sent again
    proxy = CuttingProxy(server.port, cut_after=0)
    try:
        with Client(proxy.url, account.api_key, backoff=0.01) as c:
            assert c.projects.get(proj).project_id == proj.project_id
            assert proxy.connections == 2
        proxy.cuts_left = 1
        with Client(proxy.url, account.api_key, backoff=0.01) as c:   # a plain POST exec may have run
            with pytest.raises(ConnectionFailed):
                c.exec(proj, "true")
        proxy.cuts_left = 1
        with Client(proxy.url, account.api_key, backoff=0.01) as c:   # with a key it is safe again
            assert c.exec(proj, "echo keyed", idempotency_key="retry-key-1").stdout == "keyed\n"
    finally:
        proxy.close()
    t0 = time.monotonic()
    with Client("http://127.0.0.1:9", account.api_key, retries=2, backoff=0.01) as dead:
        with pytest.raises(ConnectionFailed):
            dead.projects.list()
    assert time.monotonic() - t0 < 10


def test_sessions_state_images_errors_timeouts(client: Client, proj) -> None:
    with client.session(proj, "python3") as s:
        assert s.run("x = 20").ok
        assert s.run("x + 22").result == "42"
        assert s.run("print(x)").stdout == "20\n"
        assert s.session_id in {i.session_id for i in client.sessions(proj)}
        shown = s.run("import matplotlib.pyplot as plt\n%matplotlib inline\nplt.plot([1, 3, 2]); plt.show()")
        assert shown.images and shown.images[0].startswith(b"\x89PNG\r\n\x1a\n")
        failed = s.run("1/0")
        assert not failed.ok and failed.error["ename"] == "ZeroDivisionError"
        with pytest.raises(CellError) as raised:
            s.run("raise ValueError('bad value')", check=True)
        assert raised.value.ename == "ValueError" and "bad value" in str(raised.value)
        streamed = []
        result = s.run("import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.1)",
                       on_output=streamed.append)
        assert "".join(o.text for o in streamed) == "0\n1\n2\n" and result.stdout == "0\n1\n2\n"
        with pytest.raises(TimeoutExpired) as timed:
            s.run("print('started', flush=True)\nimport time; time.sleep(30)", timeout=1)
        assert "started" in timed.value.result.stdout
        assert s.run("x").result == "20" if timed.value.result.state_survived else True
        sid = s.session_id
    assert sid not in {i.session_id for i in client.sessions(proj)}
    with pytest.raises(BadRequest):
        client.session(proj, "no-such-kernel")


def test_limits_and_keys(server: Server, client: Client, proj) -> None:
    limits = client.limits.get(proj)
    assert limits.pids and limits.memory_bytes
    assert client.limits.set(proj, pids=100).pids == 100
    with pytest.raises(BadRequest) as unknown:
        client.limits.set(proj, gpus=3)
    assert unknown.value.status == 422
    with pytest.raises(PermissionDenied):
        client.limits.set(proj, memory_bytes=limits.memory_bytes * 2)
    project_key = client.keys.create("one project", project=proj)
    assert project_key.secret and project_key.project_id == proj.project_id
    with Client(server.url, project_key.secret) as scoped:
        assert scoped.exec(proj, "echo scoped").stdout == "scoped\n"
        with pytest.raises(PermissionDenied):
            scoped.projects.delete(proj)
    client.keys.revoke(project_key.id)
    key = client.keys.create("ci")
    assert key.secret and key.id in {k.id for k in client.keys.list()}
    with Client(server.url, key.secret) as scoped:
        assert scoped.exec(proj, "echo scoped").stdout == "scoped\n"
        client.keys.revoke(key)
        with pytest.raises(Unauthorized):
            scoped.exec(proj, "true")
    assert key.id not in {k.id for k in client.keys.list()}
    with pytest.raises(ProjectHubError):
        client.keys.create("past", expire="2000-01-01T00:00:00Z")


def test_async_client(server: Server, account) -> None:
    import asyncio

    from projecthub.client import AsyncClient

    async def main() -> None:
        async with AsyncClient(server.url, account.api_key) as client:
            project = await client.projects.create("async")
            result = await client.exec(project, "echo hi")
            assert result.stdout == "hi\n" and result.ok
            results = await asyncio.gather(*(client.exec(project, f"echo {i}") for i in range(8)))
            assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
            job = await client.start(project, "for i in 1 2 3; do echo $i; sleep 0.1; done")
            assert "".join([c.data async for c in job.stream()]) == "1\n2\n3\n"
            assert (await job.wait()).exit_code == 0
            with pytest.raises(TimeoutExpired):
                await client.exec(project, "sleep 10", timeout=0.3)
            async with client.session(project) as s:
                await s.run("y = 5")
                assert (await s.run("y * 2")).result == "10"
            assert (await client.limits.get(project)).pids
            with pytest.raises(NotFound):
                await client.job(project, "nope").info()
            await client.projects.delete(project)
    asyncio.run(main())


def test_a_keep_alive_connection_the_server_closed_is_replaced(server: Server, client: Client, proj) -> None:
    """The server drops idle keep-alive connections after a few seconds; a plain exec (never
    retried) afterwards must open a new one instead of failing on the dead one."""
    assert client.exec(proj, "echo one").stdout == "one\n"
    time.sleep(6)   # uvicorn's keep-alive timeout is 5 s
    assert client.exec(proj, "echo two").stdout == "two\n"


def test_async_client_connections(server: Server, account, proj) -> None:
    """AsyncClient's keep-alive pool: a connection the server dropped is replaced; an idempotent
    call is retried on a broken connection, a plain exec is not."""
    import asyncio

    from projecthub.client import AsyncClient

    async def main() -> None:
        async with AsyncClient(server.url, account.api_key) as client:
            assert (await client.exec(proj, "echo one")).stdout == "one\n"
            await asyncio.sleep(6)   # past uvicorn's 5 s keep-alive
            assert (await client.exec(proj, "echo two")).stdout == "two\n"
        proxy = CuttingProxy(server.port, cut_after=0)
        try:
            async with AsyncClient(proxy.url, account.api_key, backoff=0.01) as client:
                assert (await client.projects.get(proj)).project_id == proj.project_id
                proxy.cuts_left = 1
                await client._fast.aclose()   # the next call opens a (cut) connection
                with pytest.raises(ConnectionFailed):
                    await client.exec(proj, "true")
        finally:
            proxy.close()
    asyncio.run(main())

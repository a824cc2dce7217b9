"""``projecthub project move PROJECT --to HOST`` (issue 17 item 3) on a real cluster: two hubs,
two hosts on NATS.  The home (a few MB, a symlink, modes) and the job records (the state
dir's ``jobs/``) move: ``async_get`` answers the same through both hubs afterwards, and a
job that ran at the move reads as ended; the target's own uid owns the files; both hubs
reach the project on its new host; bad moves are one line, exit 2, and change nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

from projecthub.fabric.nats_config import HUB_USER
from tests.cluster import Cluster, attempt, cluster, nats_server, wait_for  # noqa: F401
from tests.server import PROJECTHUB, TEST_ENV



def _move(cluster: Cluster, project_id: str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROJECTHUB, "project", "move", project_id, "--to", target, *extra,
                           "--database-url", cluster.database_url, "--nats", cluster.nats.url,
                           "--nats-creds", str(cluster.nats.creds_file(HUB_USER))],
                          capture_output=True, text=True, timeout=300, env={**TEST_ENV, **os.environ})


async def _call_host(cluster: Cluster, host: str, name: str, args: list[Any]) -> str:
    """``name`` on ``host`` as a hub would call it; the error text (or "ok")."""
    from projecthub.errors import RemoteError
    from projecthub.fabric.nats_client import NatsFabric
    from projecthub.fabric.nats_wire import HUB_INBOX_PREFIX, connect, load_credentials
    nc = await connect(cluster.nats.url, name="test-stale-hub", inbox_prefix=HUB_INBOX_PREFIX,
                       creds=load_credentials(str(cluster.nats.creds_file(HUB_USER))))
    fabric = NatsFabric(nc)
    try:
        await fabric.start()
        for _ in range(60):   # heard once its heartbeat comes
            if host in fabric.live_hosts():
                break
            await asyncio.sleep(0.05)
        try:
            await fabric.call(host, name, args, 30, 60)
        except RemoteError as exc:
            return exc.message
        return "ok"
    finally:
        await fabric.close()
        await nc.close()


def _holders(cluster: Cluster, project_id: str) -> list[str]:
    return [name for name, host in cluster.hosts.items() if (host.data_dir / "projects" / project_id).is_dir()]


def test_move_a_project_between_hosts(cluster: Cluster) -> None:
    import cocalc_api
    hub0, hub1 = cluster.hubs
    account = cluster.new_account()
    project_id = cocalc_api.Hub(api_key=account.api_key, host=hub0.url).projects.create_project(title="mover")
    p0 = cocalc_api.Project(api_key=account.api_key, host=hub0.url, project_id=project_id)
    wait_for(lambda: attempt(lambda: p0.system.exec(command="true")), 90, "the project to start")
    [source] = _holders(cluster, project_id)
    target = "h2" if source == "h1" else "h1"

    setup = ("mkdir -p work/sub && head -c 3000000 /dev/urandom > work/big.bin && echo hello > work/sub/a.txt"
             " && chmod 0640 work/sub/a.txt && chmod 0750 work/sub && ln -s sub/a.txt work/link"
             " && sha256sum work/big.bin")
    digest = p0.system.exec(command=setup, bash=True)["stdout"].split()[0]
    job = p0.system.exec(command="echo job-out", bash=True, async_call=True)
    done = p0.call("system.exec", [{"async_get": job["job_id"], "async_await": True}])
    assert done["status"] == "completed" and done["stdout"] == "job-out\n", done
    running = p0.system.exec(command="sleep 600", bash=True, async_call=True)   # still running at the move

    # bad moves: one line, exit 2, nothing changed
    same = _move(cluster, project_id, source)
    assert same.returncode == 2 and f"already on host {source}" in same.stderr, same.stderr
    assert len(same.stderr.strip().splitlines()) == 1, same.stderr
    unknown = _move(cluster, project_id, "nohost")
    assert unknown.returncode == 2 and "host nohost is unknown" in unknown.stderr, unknown.stderr
    assert _move(cluster, "no-such-project", target).returncode == 2
    assert _holders(cluster, project_id) == [source]

    moved = _move(cluster, project_id, target)
    assert moved.returncode == 0, moved.stderr
    assert _holders(cluster, project_id) == [target]   # on the target's disk, gone from the source's

    check = ("sha256sum work/big.bin; cat work/sub/a.txt; readlink work/link; stat -c '%a %u' work/sub/a.txt"
             " work/sub; id -u")
    for hub in cluster.hubs:
        project = cocalc_api.Project(api_key=account.api_key, host=hub.url, project_id=project_id)
        out = wait_for(lambda: attempt(lambda: project.system.exec(command=check, bash=True)), 60,
                       "the moved project to answer")["stdout"].splitlines()
        uid = out[-1]
        assert out[0].split()[0] == digest and out[1] == "hello" and out[2] == "sub/a.txt", out
        assert out[3] == f"640 {uid}" and out[4] == f"750 {uid}", out   # modes kept, the target's uid
        assert int(uid) in range(cluster.hosts[target].uid_base, cluster.hosts[target].uid_base + 1000)
        # the job records came along: the same job, answered by the target through any hub
        again = project.call("system.exec", [{"async_get": job["job_id"]}])
        assert again["status"] == "completed" and again["stdout"] == "job-out\n", again
        assert again["exit_code"] == 0 and again["job_id"] == job["job_id"], again
        ended = project.call("system.exec", [{"async_get": running["job_id"]}])
        assert ended["status"] in ("killed", "error") and ended["job_id"] == running["job_id"], ended
    assert _holders(cluster, project_id) == [target]
    # a hub that missed the project.moved event and still routes to the old host is refused
    # there (it forgets the placement on that error), never served an empty new home
    stale = asyncio.run(_call_host(cluster, source, "project.call",
                                   [project_id, {"limits": {}, "deleted": False}, "system.exec",
                                    [{"command": "true"}]]))
    assert f"moved to host {target}" in stale, stale
    assert _holders(cluster, project_id) == [target]

    # back to where it came from: still whole
    assert _move(cluster, project_id, source).returncode == 0
    assert _holders(cluster, project_id) == [source]
    out = p0.system.exec(command="sha256sum work/big.bin; cat work/sub/a.txt", bash=True)["stdout"]
    assert out.split()[0] == digest and "hello" in out
    back = p0.call("system.exec", [{"async_get": job["job_id"]}])
    assert back["status"] == "completed" and back["stdout"] == "job-out\n", back
    # the host it moved away from still serves the project's compute-server instance
    # (compute_server_id): only calls for its home are refused there
    ids = {row["name"]: row["id"] for row in cluster.host_list()}
    away = p0.system.exec(command="echo instance > here.txt && cat here.txt", bash=True,
                          compute_server_id=ids[target])
    assert away["stdout"] == "instance\n" and away["exit_code"] == 0, away
    assert p0.system.exec(command="test -e here.txt || echo home-untouched", bash=True)["stdout"] == "home-untouched\n"


def test_a_cut_copy_or_a_down_target_changes_nothing(cluster: Cluster) -> None:
    import cocalc_api
    account = cluster.new_account()
    hub0 = cluster.hubs[0]
    project_id = cocalc_api.Hub(api_key=account.api_key, host=hub0.url).projects.create_project(title="stay")
    p0 = cocalc_api.Project(api_key=account.api_key, host=hub0.url, project_id=project_id)
    wait_for(lambda: attempt(lambda: p0.system.exec(command="echo kept > kept.txt", bash=True)), 90)
    [source] = _holders(cluster, project_id)
    target = "h2" if source == "h1" else "h1"

    # a copy cut short (--timeout): the target's partial copy goes, the source stays
    p0.system.exec(command="head -c 80000000 /dev/zero > big.bin", bash=True)
    cut = _move(cluster, project_id, target, "--timeout", "0.2")
    assert cut.returncode == 2 and "timeout" in cut.stderr and f"stays on {source}" in cut.stderr, cut.stderr
    assert _holders(cluster, project_id) == [source]
    for hub in cluster.hubs:
        project = cocalc_api.Project(api_key=account.api_key, host=hub.url, project_id=project_id)
        assert wait_for(lambda: attempt(lambda: project.system.exec(command="cat kept.txt")), 60)["stdout"] == "kept\n"

    cluster.kill_host(target)
    down = _move(cluster, project_id, target)
    assert down.returncode == 2 and f"host {target} is registered but down" in down.stderr, down.stderr
    assert _holders(cluster, project_id) == [source]
    assert p0.system.exec(command="cat kept.txt")["stdout"] == "kept\n"

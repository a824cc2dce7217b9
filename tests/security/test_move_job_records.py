"""The archive's ``scope: "jobs"`` (``project move`` carries a project's job records, the state
dir's ``jobs/``) read as a hostile project user would.

The jobs dir is the project's own writable state: its code can plant a symlink in place of
``jobs/`` or a tar member that climbs out.  Neither end of the copy may follow such a link
or write outside the state dir's ``jobs/``; a stale record the target held does not
survive (no job id answers for the project that it did not have); and a project user
cannot ask for that scope through ``copyPathBetweenProjects`` (the hub passes only rsync's
options on).  The daemon-side parts run the real archive code on real directories and the
real JobManager; the last test drives a real server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import cocalc_api
import pytest

from projecthub.errors import RemoteError
from projecthub.project import archive
from projecthub.project.context import ProjectContext
from projecthub.project.execution.options import parse_request
from projecthub.project.jobs import JobManager
from projecthub.project.tracking_fallback import MarkerTracker
from tests.security.conftest import new_project
from tests.server import Account, Server

_TRACKER: MarkerTracker | None = None


def _ctx(base: Path, name: str) -> ProjectContext:
    global _TRACKER
    if _TRACKER is None:
        # not a subreaper: the suite's process would then inherit every orphan of the later
        # tests' servers (their sandboxes) as zombies nobody waits for
        _TRACKER = MarkerTracker(subreaper=False)
    home = base / name / "home"
    home.mkdir(parents=True)
    project_id = str(uuid.uuid4())
    return ProjectContext(project_id=project_id, home=home, state_dir=base / name / "state",
                          tmp_dir=base / name / "tmp", tracker=_TRACKER,
                          base_env=ProjectContext.default_base_env(project_id, home))


async def _pack(ctx: ProjectContext, opts: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    items = [item async for item in archive.pack(ctx, [opts])]
    return items[0], b"".join(base64.b64decode(i["data"]) for i in items[1:])


async def _unpack(ctx: ProjectContext, data: bytes, **opts: Any) -> dict[str, Any]:
    begin = await archive.unpack_begin(ctx, [{"path": "", "kind": "dir", "scope": "jobs", **opts}])
    for at in range(0, len(data), archive.CHUNK):
        await archive.unpack_chunk(ctx, [{"id": begin["id"],
                                          "data": base64.b64encode(data[at:at + archive.CHUNK]).decode()}])
    return await archive.unpack_end(ctx, [{"id": begin["id"]}])


async def _finished_job(ctx: ProjectContext, command: str) -> str:
    jobs = JobManager(ctx)
    jobs.load()
    job = jobs.start(parse_request(ctx, {"command": command, "bash": True}, async_mode=True), native=False)
    await jobs.wait(job.job_id)
    return job.job_id


def test_records_move_whole_and_the_targets_stale_ones_go(tmp_path: Path) -> None:
    async def main() -> None:
        src, dst = _ctx(tmp_path, "src"), _ctx(tmp_path, "dst")
        job_id = await _finished_job(src, "echo moved-out; echo to-err >&2")
        stale = await _finished_job(dst, "echo stale")   # the target held one of its own
        head, data = await _pack(src, {"scope": "jobs"})
        assert head == {"kind": "dir"}
        await _unpack(dst, data, delete_missing=True, overwrite_newer=True)
        fresh = JobManager(dst)
        fresh.load()
        rec = fresh.get(job_id)
        assert rec is not None and rec["status"] == "completed", rec
        assert rec["stdout"] == "moved-out\n" and rec["stderr"] == "to-err\n" and rec["exit_code"] == 0, rec
        assert fresh.get(stale) is None and not (dst.state_dir / "jobs" / stale).exists()
        assert list(dst.home.iterdir()) == [], "nothing landed in the home"
    asyncio.run(main())


def test_a_link_planted_as_the_jobs_dir_is_never_followed(tmp_path: Path) -> None:
    async def main() -> None:
        src, dst = _ctx(tmp_path, "src"), _ctx(tmp_path, "dst")
        secret = tmp_path / "elsewhere"
        secret.mkdir()
        (secret / "secret.txt").write_text("not the project's")
        # the source's jobs/ is a link out: packed as nothing, never what it points to
        src.state_dir.mkdir()
        (src.state_dir / "jobs").symlink_to(secret)
        head, data = await _pack(src, {"scope": "jobs"})
        assert head == {"kind": "dir"}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert tar.getnames() == [], "the link was followed"
        # the target's jobs/ is a link out: it is replaced by a directory, nothing is written
        # (nor deleted, with delete_missing) where it pointed
        other = _ctx(tmp_path, "other")
        real = await _finished_job(other, "echo x")
        _, records = await _pack(other, {"scope": "jobs"})
        dst.state_dir.mkdir()
        (dst.state_dir / "jobs").symlink_to(secret)
        await _unpack(dst, records, delete_missing=True, overwrite_newer=True)
        jobs_dir = dst.state_dir / "jobs"
        assert jobs_dir.is_dir() and not jobs_dir.is_symlink()
        assert (jobs_dir / real / "job.json").is_file()
        assert sorted(p.name for p in secret.iterdir()) == ["secret.txt"]
    asyncio.run(main())


def test_members_that_climb_out_are_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        dst = _ctx(tmp_path, "dst")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in ("../escaped.txt", "../home/planted.txt", "/abs.txt"):
                info = tarfile.TarInfo(name)
                info.size = 2
                tar.addfile(info, io.BytesIO(b"x\n"))
            link = tarfile.TarInfo("link")
            link.type, link.linkname = tarfile.SYMTYPE, "../home"
            tar.addfile(link)
        stats = await _unpack(dst, buf.getvalue())
        assert stats["skipped_unsafe"] == 4 and stats["files"] == 0, stats
        assert not (dst.state_dir / "escaped.txt").exists() and list(dst.home.iterdir()) == []
        assert list((dst.state_dir / "jobs").iterdir()) == []
    asyncio.run(main())


def test_the_scope_takes_no_path_and_no_other_value(tmp_path: Path) -> None:
    async def main() -> None:
        ctx = _ctx(tmp_path, "p")
        for opts, message in (({"scope": "jobs", "path": "x"}, "'path' must be empty"),
                              ({"scope": "jobs", "path": "../home"}, "inside the home"),
                              ({"scope": "state", "path": ""}, "'scope' must be")):
            with pytest.raises(RemoteError, match=message):
                await _pack(ctx, opts)
            with pytest.raises(RemoteError, match=message):
                await archive.unpack_begin(ctx, [{**opts, "kind": "dir"}])
        with pytest.raises(RemoteError, match="'kind' must be 'dir'"):
            await archive.unpack_begin(ctx, [{"scope": "jobs", "kind": "file"}])
    asyncio.run(main())


def test_a_user_cannot_ask_copy_between_projects_for_job_records(server: Server, alice: Account) -> None:
    a, b = new_project(server, alice, "jobs src"), new_project(server, alice, "jobs dst")
    assert a.run("echo home-file > f")["exit_code"] == 0
    hub = cocalc_api.Hub(api_key=alice.api_key, host=server.url)
    try:   # "scope" is not one of rsync's options: dropped by the hub, the home's path is copied
        hub.call("projects.copyPathBetweenProjects", [{
            "src_project_id": a.project_id, "src_path": "f", "target_project_id": b.project_id,
            "target_path": "f", "scope": "jobs"}])
    finally:
        hub.client.close()
    assert b.run("cat f")["stdout"] == "home-file\n"
    a.stop()
    b.stop()

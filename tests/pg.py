"""A real PostgreSQL server for the tests: ``initdb`` into a temp dir, ``pg_ctl start`` on a
free loopback port (its unix socket in the same temp dir), stopped at the end.

PostgreSQL refuses to run as root, so as root the cluster belongs to the unprivileged
``postgres`` system user (Debian's package creates it; else ``nobody``) and the binaries run
under ``runuser``.  Binaries: Debian keeps them in ``/usr/lib/postgresql/<version>/bin``
(the newest one is used), else whatever ``pg_ctl`` is on PATH.  ``PgServer.available()``
says why not when they are missing, for ``require`` (a skip locally, a failure under CI).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

_START_TIMEOUT_S = 60


def pg_bin_dir() -> Path | None:
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"):
        try:
            versions.append((int(candidate.parent.parent.name), candidate.parent))
        except ValueError:
            continue
    if versions:
        return max(versions)[1]
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The unprivileged user to run PostgreSQL as (None: as ourselves, we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


class PgServer:
    """One cluster; ``new_database()`` hands each test a fresh, empty store URL."""

    user = "projecthub"

    def __init__(self) -> None:
        self.bin_dir = pg_bin_dir()
        self.password = secrets.token_hex(12)
        self.port = 0
        self.base: Path | None = None
        self._runuser = _run_as()
        self._options = ""
        self._tests_db = False

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if pg_bin_dir() is None:
            return False, "PostgreSQL binaries (Debian package postgresql: initdb, pg_ctl)"
        if os.geteuid() == 0 and (_run_as() is None or shutil.which("runuser") is None):
            return False, "an unprivileged user and runuser to run PostgreSQL as (we are root)"
        return True, ""

    def _cmd(self, *argv: str) -> list[str]:
        assert self.bin_dir is not None
        cmd = [str(self.bin_dir / argv[0]), *argv[1:]]
        return ["runuser", "-u", self._runuser, "--", *cmd] if self._runuser else cmd

    def start(self) -> PgServer:
        # Under /tmp itself: pytest's tmp dirs are 0700 root, which the postgres user cannot cross.
        self.base = Path(tempfile.mkdtemp(prefix="projecthub-pg-"))
        data, pwfile = self.base / "data", self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._runuser:
            entry = pwd.getpwnam(self._runuser)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            subprocess.run(self._cmd("initdb", "-D", str(data), "-U", self.user, "--pwfile", str(pwfile),
                                     "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale", "C"),
                           check=True, capture_output=True, timeout=_START_TIMEOUT_S)
            for attempt in range(3):   # the free port may be taken between the probe and the bind
                self.port = _free_port()
                self._options = options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                           f"-c unix_socket_directories={self.base} -c fsync=off "
                           "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
                done = subprocess.run(
                    self._cmd("pg_ctl", "start", "-w", "-t", str(_START_TIMEOUT_S), "-D", str(data),
                              "-l", str(self.base / "server.log"), "-o", options),
                    capture_output=True, text=True, timeout=_START_TIMEOUT_S + 10)
                if done.returncode == 0:
                    return self
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} "
                               f"{(self.base / 'server.log').read_text()[-2000:]}")
        except BaseException:
            self.stop()
            raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh, empty store URL: a schema of its own in the shared ``tests`` database,
        reached through ``search_path`` (~20 ms to make, against ~300 ms for a database)."""
        if not self._tests_db:
            self.admin('CREATE DATABASE "tests"')
            self._tests_db = True
        name = "t_" + uuid.uuid4().hex[:16]
        self.admin(f'CREATE SCHEMA "{name}"', "tests")
        return f"{self.url('tests')}?options=-csearch_path%3D{name}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("%3D", 1)[1]
        self.admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE', "tests")

    def stop(self) -> None:
        if self.base is None:
            return
        data = self.base / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(self._cmd("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(data)),
                           capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def stop_server(self) -> None:
        """Stop the server but keep its files (``restart`` brings it back on the same port)."""
        assert self.base is not None
        subprocess.run(self._cmd("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.base / "data")),
                       check=True, capture_output=True, timeout=60)

    def restart(self) -> None:
        assert self.base is not None
        subprocess.run(self._cmd("pg_ctl", "start", "-w", "-t", str(_START_TIMEOUT_S), "-D",
                                 str(self.base / "data"), "-l", str(self.base / "server.log"),
                                 "-o", self._options),
                       check=True, capture_output=True, timeout=_START_TIMEOUT_S + 10)

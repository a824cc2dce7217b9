"""One Unix uid/gid per project, and the passwd/group files the sandbox shows.

The uid is not created in the host's /etc/passwd (no useradd, nothing to clean
up): the kernel only needs the number.  Inside the sandbox a generated
/etc/passwd and /etc/group are bind-mounted over the host's so that ``id``,
``whoami``, ``~`` and Python's ``pwd`` module work.

Allocation is deterministic where possible (a hash of the project id into the
range) and persisted in ``<data_dir>/uids.json`` under an flock, so a restart
or a second host process on the same data dir agree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

USERNAME = "user"  # CoCalc's name for the project owner inside a project


class UidAllocator:
    def __init__(self, data_dir: Path, uid_range: tuple[int, int]):
        lo, hi = uid_range
        if not (0 < lo <= hi):
            raise ValueError(f"uid_range: expected (low, high) with 0 < low <= high, got {uid_range!r}")
        self.range = (lo, hi)
        self.path = Path(data_dir) / "uids.json"

    def uid_for(self, project_id: str, wanted: int | None = None) -> int:
        """The project's uid: ``wanted`` when given (recorded), else the recorded one,
        else a fresh one from the range."""
        if wanted is not None and not self.in_range(wanted):
            raise ValueError(f"uid: {wanted} is outside uid_range {self.range}")
        with self._locked() as table:
            if wanted is not None:
                # The caller (the host's store) is authoritative: mirror it, and drop a
                # stale record that gave this uid to another project.
                for other in [p for p, u in table.items() if u == wanted and p != project_id]:
                    del table[other]
                table[project_id] = wanted
                return wanted
            if project_id not in table:
                table[project_id] = self._pick(project_id, set(table.values()))
            return table[project_id]

    def lookup(self) -> dict[str, int]:
        with self._locked() as table:
            return dict(table)

    def in_range(self, uid: int) -> bool:
        return self.range[0] <= uid <= self.range[1]

    def _pick(self, project_id: str, taken: set[int]) -> int:
        lo, hi = self.range
        size = hi - lo + 1
        start = int.from_bytes(hashlib.sha256(project_id.encode()).digest()[:8], "big") % size
        for i in range(size):
            uid = lo + (start + i) % size
            if uid not in taken:
                return uid
        raise RuntimeError(f"uid_range {self.range} is exhausted")

    @contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
            table: dict[str, int] = json.loads(raw) if raw.strip() else {}
            before = dict(table)
            yield table
            if table != before:
                data = json.dumps(table, sort_keys=True).encode()
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
        finally:
            os.close(fd)


def write_identity_files(etc_dir: Path, uid: int, gid: int, home_inside: str) -> dict[str, Path]:
    """Write passwd/group (and empty shadow/gshadow) for the sandbox; returns name -> path.

    System accounts (uid < 1000, nobody) are kept so that tools resolving ``root``
    or ``nobody`` still work; every other host account is left out.
    """
    etc_dir.mkdir(parents=True, exist_ok=True)
    passwd = [f"{USERNAME}:x:{uid}:{gid}:project owner:{home_inside}:/bin/bash"]
    group = [f"{USERNAME}:x:{gid}:"]
    passwd += _system_lines("/etc/passwd", exclude_id=uid, id_field=2)
    group += _system_lines("/etc/group", exclude_id=gid, id_field=2)
    files = {
        "passwd": "\n".join(passwd) + "\n",
        "group": "\n".join(group) + "\n",
        "shadow": "",
        "gshadow": "",
    }
    out = {}
    for name, text in files.items():
        path = etc_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        # shadow stand-ins are empty AND root-only, like the real ones (defence in depth).
        os.chmod(tmp, 0o600 if "shadow" in name else 0o644)
        os.replace(tmp, path)
        out[name] = path
    return out


def _system_lines(path: str, exclude_id: int, id_field: int) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ["root:x:0:0:root:/root:/bin/sh"] if "passwd" in path else ["root:x:0:"]
    keep = []
    for line in lines:
        parts = line.split(":")
        if len(parts) <= id_field or parts[0] == USERNAME:
            continue
        try:
            num = int(parts[id_field])
        except ValueError:
            continue
        if num != exclude_id and (num < 1000 or num == 65534):
            keep.append(line)
    return keep


def setpriv_path() -> str | None:
    import shutil
    return shutil.which("setpriv")


def drop_argv(uid: int, gid: int) -> list[str]:
    """Prefix that becomes ``uid``/``gid`` with no supplementary groups, no capabilities
    (including the bounding set, so nothing can be regained) and no_new_privs (so
    setuid binaries and file capabilities are inert) -- then execs the rest.

    Used inside a root-run bwrap (``bwrap --unshare-user --uid N`` as root is NOT a
    uid drop: the process stays host uid 0, baselines §2) and in mode "none".
    """
    exe = setpriv_path()
    if not exe:
        raise RuntimeError("setpriv: not installed (util-linux); cannot drop to the project uid")
    return [exe, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"]

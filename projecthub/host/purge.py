"""Purging a deleted project: its home, daemon state and disk image, its cgroups, its run dir.

Deleting a project stops it and marks it deleted; its files stay for a grace period
(``serve --purge-after``, default 7 days: an operator can still copy them out), then the
hub purges them (``hub/lifecycle.py``), or ``projecthub project purge`` does it at once.
Both come here.  Runs as root on the host; counting and removing never follow a symlink
nor enter a filesystem mounted below the project's directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sandbox import Sandbox


def purge_project_files(sandbox: "Sandbox", data_dir: Path, project_id: str) -> int:
    """Remove everything the host keeps for ``project_id``; the bytes freed on the data disk.
    The project must be deleted and stopped (whatever still runs in its cgroups is killed)."""
    # processes left (none, normally), the cgroups, the image's loop device and mounts
    sandbox.stop_project(project_id)
    base = sandbox.project_dir(project_id)
    run = Path(data_dir) / "run" / project_id
    freed = allocated_bytes(base) + allocated_bytes(run)
    sandbox.purge_project(project_id)   # image and dirs; refuses while anything is mounted there
    shutil.rmtree(run, ignore_errors=True)
    return freed


def allocated_bytes(root: Path) -> int:
    """Bytes the files under ``root`` occupy on disk (``st_blocks``: a sparse image counts
    what it really holds, not its size); mount points below ``root`` are not entered."""
    try:
        top = os.lstat(root)
    except FileNotFoundError:
        return 0
    total = top.st_blocks * 512
    if not stat.S_ISDIR(top.st_mode):
        return total
    for dirpath, dirnames, filenames in os.walk(root):   # never follows symlinks
        keep = []
        for name in dirnames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                    keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total

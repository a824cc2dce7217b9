"""What a host on its own machine knows about its projects, without the hub's database.

``Host`` (host.py) reads and writes a handful of project facts through its ``db``.  In the
embedded server that is the hub's store; a host serving over NATS (``projecthub host``)
never opens the database, and uses this ledger instead:

* ``list_all_projects`` (at start: which daemons to adopt, which sandboxes are strays) and
  ``update_project`` (running / stopped and why): the projects this host ran, kept in
  ``<data_dir>/host-ledger.json``, so a restarted host re-adopts its running daemons;
* ``get_project`` (a project's limit overrides, whether it is deleted): given by the hub
  with each call that may start the project (``remember``), never looked up;
* ``allocate_uid``: per machine, so the host allocates it (``sandbox.uids``, the
  ``<data_dir>/uids.json`` the sandbox already keeps) and nothing cluster-wide is needed.

Spare projects need ids from the hub's store: a NATS host runs none (``spare_projects=0``).
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import RemoteError

LEDGER_NAME = "host-ledger.json"


class HostLedger:
    def __init__(self, data_dir: Path, uid_for: Any) -> None:
        self.path = Path(data_dir) / LEDGER_NAME
        self._uid_for = uid_for          # sandbox.uids.uid_for
        self._projects: dict[str, dict[str, Any]] = self._load()

    @staticmethod
    def mark_data_dir(data_dir: Path) -> None:
        """An empty ledger from the host's first start on: the data dir is a host's (for
        ``projecthub stop-all``, which then needs no store there)."""
        path = Path(data_dir) / LEDGER_NAME
        if not path.exists():
            HostLedger(data_dir, None)._save()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._projects, f)
        os.replace(tmp, self.path)

    def remember(self, project_id: str, spec: dict[str, Any]) -> None:
        """The hub's view of a project, sent with each call that may start it: its limit
        overrides and whether it is deleted (the hub checked who may call it)."""
        limits = spec.get("limits") if isinstance(spec.get("limits"), dict) else {}
        record = self._projects.get(project_id, {"project_id": project_id, "state": "stopped"})
        changed = record.get("settings", {}).get("limits") != limits or \
            bool(record.get("deleted")) != bool(spec.get("deleted"))
        record.update(settings={"limits": limits}, deleted=bool(spec.get("deleted")))
        if changed or project_id not in self._projects:
            self._projects[project_id] = record
            self._save()

    def moved_to(self, project_id: str) -> str | None:
        """The host the project was moved to (``projecthub project move``), if it left here."""
        moved = self._projects.get(project_id, {}).get("moved_to")
        return moved if isinstance(moved, str) else None

    def set_moved(self, project_id: str, target: str | None) -> None:
        """Mark the project as moved to ``target`` (None: it is this host's again)."""
        record = self._projects.setdefault(project_id, {"project_id": project_id, "state": "stopped"})
        if target is None:
            record.pop("moved_to", None)
        else:
            record["moved_to"] = target
        self._save()

    def mark_stopped(self, project_id: str, reason: str) -> None:
        """For ``projecthub stop-all`` on the host's data dir (no host process running)."""
        record = self._projects.get(project_id)
        if record is not None:
            record.update(state="stopped", state_reason=reason,
                          state_time=datetime.now(timezone.utc).isoformat())
            self._save()

    def project_ids(self) -> list[str]:
        return list(self._projects)

    # -- what Host calls (the AsyncStore methods it uses) -------------------------------------
    async def list_all_projects(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self._projects.values()]

    async def get_project(self, project_id: str) -> dict[str, Any] | None:
        record = self._projects.get(project_id)
        return dict(record) if record is not None else None

    async def allocate_uid(self, project_id: str, lo: int, hi: int) -> int:
        return int(await asyncio.to_thread(self._uid_for, project_id))

    async def update_project(self, project_id: str, **fields: Any) -> None:
        record = self._projects.get(project_id)
        if record is None:
            return
        for name, value in fields.items():
            record[name] = value.isoformat() if isinstance(value, datetime) else value
        self._save()   # a small file, replaced atomically: cheaper than a thread hop

    async def create_spare_project(self) -> str:
        raise RemoteError("Error: a host on NATS keeps no spare projects")

    async def discard_spare(self, project_id: str) -> None:
        self._projects.pop(project_id, None)

"""What every project-side function gets: the project's identity, paths and trackers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tracking import ProcessTracker


@dataclass
class ProjectContext:
    project_id: str
    home: Path                     # the project's HOME, the default cwd of everything
    state_dir: Path                # daemon-private durable state (jobs, kernel sessions)
    tmp_dir: Path                  # where temp files of execs go (the sandbox's private /tmp)
    tracker: ProcessTracker        # where spawned processes are accounted and killed
    base_env: dict[str, str] = field(default_factory=dict)  # env every user process starts from
    settings: dict[str, Any] = field(default_factory=dict)  # limits and knobs from the host

    def child_env(self, overlay: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(self.base_env)
        if overlay:
            env.update(overlay)
        return env

    @staticmethod
    def default_base_env(project_id: str, home: Path) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "TERM")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update({
            "HOME": str(home),
            "USER": "user",
            "COCALC_PROJECT_ID": project_id,
            "PROJECTHUB_PROJECT_ID": project_id,
        })
        return env

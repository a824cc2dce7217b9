"""Project isolation: per-project uid, bubblewrap namespaces, cgroup limits, probe.

Host side: ``Sandbox`` (prepare dirs/uid/cgroup, build the daemon's start
command, live limits, stop, adoption, stray cleanup) and ``probe``.
Daemon side: ``tracker_for_daemon`` (a cgroup-backed ProcessTracker).
"""

from .limits import ProjectLimits
from .manager import PreparedProject, Sandbox, SandboxConfig
from .probe import CapabilityReport, Layer, probe
from .tracker import tracker_for_daemon

__all__ = ["CapabilityReport", "Layer", "PreparedProject", "ProjectLimits", "Sandbox",
           "SandboxConfig", "probe", "tracker_for_daemon"]

"""Project isolation: per-project uid, bubblewrap namespaces, cgroup limits, probe.

Host side: ``Sandbox`` (prepare dirs/uid/cgroup, build the daemon's start
command, live limits, stop, adoption, stray cleanup) and ``probe``.
Daemon side: ``tracker_for_daemon`` (a cgroup-backed ProcessTracker).

Decisions (numbers from this machine, 2 cores under load):

* uid drop: a root-run bwrap (no user namespace) whose capabilities are cut to
  SETUID/SETGID/SETPCAP, then ``setpriv`` inside drops to the project uid with no
  groups, empty capability sets (bounding included) and no_new_privs.  The other
  way -- setuid before an unprivileged ``bwrap --unshare-user`` -- cannot mount the
  interpreter when it lives under a 0700 directory such as /root/.pyenv (the
  project uid cannot even resolve the bind source), and ``bwrap --unshare-user
  --uid N`` run as root is no uid drop at all.  Start cost is similar (daemon
  starts are rare; python's own start dominates).
* /root/.pyenv visibility: only ``sys.base_prefix`` (and the venv, and the
  projecthub package if it is a source checkout) is bind-mounted, at its host path;
  bwrap would create the missing parents (/root, /root/.pyenv, ...) 0700, so they are
  created 0755 explicitly.  /root itself is an empty tmpfs directory inside.
* sessions: ``start_new_session`` puts the outer bwrap in its own host session
  (detached from the hub's terminal and process group, survives a hub restart; no
  --die-with-parent), and ``setsid`` inside makes the daemon its own session and
  group leader under bwrap's init (which reaps orphans, so the daemon keeps normal
  signal semantics and need not be pid 1).  ``--new-session`` is redundant with
  that and only used when the setsid binary is missing.
* the daemon must outlive its own project's bombs (found by tests/security): child
  groups carry pids/memory sub-limits below the project's, children start with
  oom_score_adj 500 while the host pins the daemon's to 0 (tracker.py).
* one machine, several data dirs (test runs, a second server): they share the
  cgroup root and the uid range, so stray-killing, ``running_projects`` and the
  fallback sweep only ever touch projects whose directory is in THIS data dir, and a
  process in another project's cgroup is never matched by uid.  Uids are still
  allocated per data dir (two servers hand out the same numbers); give each server
  its own ``uid_range`` when several run on one machine.
* disk: home and the daemon's state dir live in a sparse per-project ext4 image,
  loop-mounted while the project runs (``disk.py``; ``disk_bytes``, default 10 GiB);
  ``/tmp`` is a sized tmpfs charged to the project's memory.  Without root or loop
  devices homes are plain directories and ``doctor`` reports ``disk-limit`` missing.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .limits import ProjectLimits
    from .manager import PreparedProject, Sandbox, SandboxConfig
    from .probe import CapabilityReport, Layer, probe
    from .tracker import tracker_for_daemon

# Imported on first use: the project daemon only needs ``tracker_for_daemon`` and must not
# pay for the host side (manager, probe, psutil) at every project start.
_EXPORTS = {"ProjectLimits": ".limits", "PreparedProject": ".manager", "Sandbox": ".manager",
            "SandboxConfig": ".manager", "CapabilityReport": ".probe", "Layer": ".probe",
            "probe": ".probe", "tracker_for_daemon": ".tracker"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    import sys
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    # importing the ``probe`` submodule (manager does) binds the module to our ``probe``
    # attribute; the package exports the function of that name
    probe_module = sys.modules.get(__name__ + ".probe")
    if probe_module is not None:
        globals()["probe"] = probe_module.probe
    return value

__all__ = ["CapabilityReport", "Layer", "PreparedProject", "ProjectLimits", "Sandbox",
           "SandboxConfig", "probe", "tracker_for_daemon"]

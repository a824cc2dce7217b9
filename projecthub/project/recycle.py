"""Re-exec the project daemon in place once its Jupyter has gone idle.

A daemon that served Jupyter keeps jupyter_client, zmq, traitlets and tornado imported
(~15 MiB resident) after its kernels and zygote are gone, and Python cannot unload
modules.  So when the project has been quiet for the Jupyter idle window, the daemon
execs itself again: same pid, same listening socket, same cgroup descriptors, same
instance id, and a fresh interpreter that imports Jupyter only when it is used again.

It happens only when nothing can be lost or attacked:

* no request or stream is in flight on any connection, no async job runs and no Jupyter
  session is open;
* the sandbox holds no process but its init and the daemon (``/proc`` of the sandbox's
  pid namespace): after execve the daemon is dumpable until it calls
  ``make_undumpable`` again, and with no other process of the project's uid alive
  nothing can ptrace it or take its descriptors in that window;
* the host gave the daemon cgroup descriptors (the only tracker that tells the truth
  about leftover processes) and an inherited listening socket.

The hub is told first (fabric ``bye``, see ``fabric/messages.py``): it sends no further
request on the old connection, and every request the daemon still reads is refused
unstarted, so the host resends it on a new connection (``Host.call``), which waits in the
socket's backlog until the new interpreter listens.
"""

from __future__ import annotations

import os
import socket
import sys
from types import SimpleNamespace

# The new interpreter is told who it was; ``daemon._parse`` knows these options.
INSTANCE_OPTION = "--instance-id"
STARTED_OPTION = "--started"


def alone_in_sandbox() -> bool:
    """True when the sandbox's pid namespace holds only its init (pid 1) and us.

    Outside a pid namespace (no sandbox) ``/proc`` lists the whole machine: never true."""
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return False
    return all(not n.isdigit() or int(n) in (1, me) for n in names)


def exec_argv(orig_argv: list[str], option_count: int, opts: SimpleNamespace, listen_fd: int,
              instance_id: str, started: float) -> list[str]:
    """The command line of the re-exec: the interpreter and its boot arguments as they
    were (``orig_argv`` minus the ``option_count`` daemon options), then the options again
    with the inherited listening socket's new number and the daemon's identity."""
    head = orig_argv[:len(orig_argv) - option_count]
    return [*head, "--project-id", opts.project_id, "--home", opts.home,
            "--listen-fd", str(listen_fd), "--state-dir", opts.state_dir,
            "--tmp-dir", opts.tmp_dir, "--settings", opts.settings,
            INSTANCE_OPTION, instance_id, STARTED_OPTION, repr(started)]


def inheritable_listener(listen: socket.socket) -> int:
    """A duplicate of the listening socket that survives execve: closing the asyncio
    server (to stop accepting) leaves the socket and its backlog alive through it."""
    fd = os.dup(listen.fileno())
    os.set_inheritable(fd, True)
    return fd


def exec_in_place(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process; returns only if execve failed (the caller then exits)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0] if os.path.isabs(argv[0]) else sys.executable, argv, env)

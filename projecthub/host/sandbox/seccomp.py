"""The sandbox's syscall filter: no new user namespaces inside a project.

A user namespace is where an unprivileged process gets every capability over the
namespaces it creates, and it is the kernel's busiest attack surface: a project has no
use for one (``unshare -Ur`` worked inside the sandbox before this filter).  bwrap's own
``--disable-userns`` needs the sandbox to be a user namespace itself, which the root
start chain is not (it drops to the project uid with setpriv, so that uid is real on
the host), so projecthub loads a seccomp filter with bwrap's ``--seccomp FD`` instead:

* ``unshare`` and ``clone`` with ``CLONE_NEWUSER`` fail with EPERM;
* ``clone3`` fails with ENOSYS (its flags live in a struct seccomp cannot read); glibc
  then falls back to ``clone``, which the rule above checks;
* everything else is allowed.  Syscalls of other architectures (32-bit x86 through
  ``int 0x80``) are refused: they would bypass the rules.

The filter is built with libseccomp (``pyseccomp``), not by hand.  Without libseccomp the
sandbox still starts and ``doctor`` reports the layer as missing.
"""

from __future__ import annotations

import errno
import os
from functools import lru_cache

CLONE_NEWUSER = 0x10000000


@lru_cache(maxsize=1)
def filter_program() -> bytes | None:
    """The compiled BPF program, or None when libseccomp cannot be loaded here."""
    try:
        import pyseccomp as sc
        rules = sc.SyscallFilter(defaction=sc.ALLOW)
        newuser = sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
        rules.add_rule(sc.ERRNO(errno.EPERM), "unshare", newuser)
        rules.add_rule(sc.ERRNO(errno.EPERM), "clone", newuser)
        rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        fd = os.memfd_create("projecthub-seccomp", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as out:
                rules.export_bpf(out)
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 1 << 20)
        finally:
            os.close(fd)
    except Exception:  # no libseccomp, an unknown syscall name on this arch, ...
        return None

"""The project software environment: the Python that projects run, separate from the server's.

Three kinds (``resolve``):

* **managed** (the default, ``~/.cache/projecthub/project-env``): a virtual environment projecthub builds and
  owns, with ipykernel and a scientific default set (``DEFAULT_PACKAGES``).  It lives in
  generations: ``gen-N/`` is a complete venv, ``current`` a symlink to the one in use, and
  ``gen-N/projecthub-env.json`` is written last, so a generation without it is an
  interrupted build that nothing uses.  ``install`` copies the current generation, installs
  into the copy, checks it and only then moves ``current``: an interrupted or failed
  install leaves the previous environment in use.  Projects pick up a new generation at
  their next start; the previous one is kept for the projects still running on it.
* **external** (``serve --project-env DIR`` where DIR is a Python prefix with
  ``bin/python``): an existing environment, used as it is.
* **rootfs** (``serve --project-rootfs DIR``): an unpacked root filesystem (``docker
  export`` output) replaces the host's system directories; its own ``python3`` runs.

Every kind is mounted read-only into the sandbox at its host path (so shebangs and the
venv's ``pyvenv.cfg`` stay true), first on ``PATH``, and the daemon runs on its interpreter,
so ``jupyter.kernels`` lists its kernelspecs.  The daemon needs a few modules there
(``DAEMON_MODULES``); ``check`` says which are missing.

User packages: a managed venv has ``include-system-site-packages = true`` only so that Python
enables the user site (``~/.local/lib/pythonX.Y/site-packages``, in the project's home), and
pip allows ``pip install --user``; the base interpreter's own site-packages is hidden in the
sandbox behind an empty read-only mount (``masked_paths``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import site
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import projecthub

# Installed into every managed environment.  The first four are what the daemon itself
# imports inside the sandbox (minimums as in pyproject.toml); the rest is the documented
# default scientific set.
# numpy 1.26 where wheels exist (Python < 3.13): its scalars print as plain numbers
# (``numpy.arange(3).sum()`` shows ``3``, 2.x shows ``np.int64(3)``) and most published
# notebooks were written against it; `projecthub env install "numpy>=2"` moves up.
DAEMON_PACKAGES: tuple[str, ...] = ("ipykernel>=6.29", "jupyter_client>=8.6", "pyzmq>=26", "psutil>=5.9")
DEFAULT_PACKAGES: tuple[str, ...] = DAEMON_PACKAGES + (
    "numpy>=1.26,<2; python_version < '3.13'", "numpy>=2.1; python_version >= '3.13'",
    "pandas", "matplotlib", "scipy",
)
DAEMON_MODULES: tuple[str, ...] = ("zmq", "psutil", "jupyter_client", "ipykernel", "tornado")
META_NAME = "projecthub-env.json"
CURRENT = "current"
KEEP_GENERATIONS = 2          # the current one and the one before (projects still on it)
_PIP_TAIL_BYTES = 4000        # how much of a failing pip's output an error repeats
_PIP_TIMEOUT_S = 1800.0
_GEN_RE = re.compile(r"^gen-(\d+)$")
_ROOTFS_PYTHONS = ("/usr/local/bin/python3", "/usr/bin/python3")


class EnvironmentError_(Exception):
    """A project environment problem, with a message that names the cause (one line)."""


@dataclass(frozen=True)
class ProjectEnvironment:
    """What the sandbox needs to know of a project environment."""
    kind: str                           # "managed" | "external" | "rootfs" | "server"
    python: str                         # the interpreter, as a path inside the sandbox
    bin_dirs: tuple[str, ...]           # first on PATH inside projects
    ro_paths: tuple[str, ...] = ()      # host paths bound read-only at the same path
    masked_paths: tuple[str, ...] = ()  # hidden behind an empty read-only tmpfs
    rootfs: str | None = None           # replaces the host's system directories
    root: str | None = None             # managed: the directory holding the generations
    prefix: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "python": self.python, "prefix": self.prefix,
                "rootfs": self.rootfs, "root": self.root}


def server_environment() -> ProjectEnvironment:
    """The server's own interpreter (embedders and tests that build a Sandbox directly);
    ``serve`` never uses it."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                             sys.base_exec_prefix)} | {sys.prefix, sys.base_prefix}
    return ProjectEnvironment(kind="server", python=sys.executable,
                              bin_dirs=(os.path.dirname(sys.executable),),
                              ro_paths=tuple(sorted(prefixes)), prefix=sys.prefix)


def package_dir() -> str:
    """The projecthub package directory the daemon imports (bound read-only alone: not the
    server's site-packages around it)."""
    return os.path.dirname(os.path.realpath(projecthub.__file__))


# ---------------------------------------------------------------------------- resolving

def default_root(data_dir: Path | None = None) -> Path:
    """One managed environment per machine user, outside every data dir: its path shows
    inside sandboxes (it is mounted at its host path), the data dir's must not; and
    servers with different data dirs share one build."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "projecthub" / "project-env"


def resolve(data_dir: Path, project_env: str | None = None, rootfs: str | None = None, *,
            build_missing: bool = True, progress: Callable[[str], None] | None = None
            ) -> ProjectEnvironment:
    """The environment ``serve`` uses; builds the managed one when it is missing."""
    if project_env and rootfs:
        raise EnvironmentError_("--project-env and --project-rootfs exclude each other")
    if rootfs:
        return rootfs_environment(Path(rootfs))
    if project_env:
        path = Path(project_env)
        if (path / "bin" / "python").exists() and not (path / CURRENT).exists():
            return external_environment(path)
        root = path
    else:
        root = default_root(data_dir)
    env = managed_environment(root)
    if env is None:
        _check_managed_root(root)
        if not build_missing:
            raise EnvironmentError_(f"no project environment in {root} yet: `projecthub env build` makes it "
                                    "(serve does on its first start)")
        build(root, progress=progress)
        env = managed_environment(root)
        assert env is not None
    return env


def _check_managed_root(root: Path) -> None:
    """A managed environment is built only where one is or nothing is: never into a
    directory of other files (``--project-env /etc`` is a mistake, not a request)."""
    try:
        entries = [e.name for e in root.iterdir()]
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EnvironmentError_(f"project environment {root}: {exc.strerror}") from None
    ours = [e for e in entries if _GEN_RE.match(e) or e in (CURRENT, ".lock", f".{CURRENT}.tmp")]
    if len(ours) != len(entries):
        raise EnvironmentError_(f"{root} is neither a project environment (made by `projecthub env "
                                "build`) nor a Python environment (no bin/python)")


def _check_owned(root: Path) -> None:
    """Nobody but this user (or root) may be able to change a managed environment or swap it
    for another: every project runs it, and the host runs its ``python`` as this user (the
    checks after a build or install, ``env status``, ``doctor``).  So the directory and every
    directory above it (as written and as resolved) must belong to this user or root and not
    be writable by others -- above it, a sticky directory such as /tmp is fine: nobody can
    rename or remove there what is not theirs."""
    me = os.geteuid()
    path = Path(os.path.abspath(root))
    for chain in (path, Path(os.path.realpath(path))):
        for depth, d in enumerate((chain, *chain.parents)):
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                continue   # made by this user when it is built
            except OSError as exc:
                raise EnvironmentError_(f"project environment {root}: {d}: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                continue   # replaceable only through its directory, checked next; target: resolved chain
            why = ""
            if st.st_uid not in (0, me):
                why = f"owned by uid {st.st_uid}"
            elif st.st_mode & 0o022 and not (depth > 0 and st.st_mode & stat.S_ISVTX):
                why = f"writable by {'group and others' if st.st_mode & 0o002 else 'its group'}"
            if why:
                raise EnvironmentError_(
                    f"project environment {root}: {d} is {why}: another user could change or replace "
                    f"the environment every project runs (use a directory only uid {me} or root can change)")


def managed_environment(root: Path) -> ProjectEnvironment | None:
    _check_owned(root)
    gen = current_generation(root)
    if gen is None:
        return None
    meta = read_meta(gen)
    return ProjectEnvironment(
        kind="managed", python=str(gen / "bin" / "python"), bin_dirs=(str(gen / "bin"),),
        ro_paths=tuple(sorted({str(gen), *_base_prefixes(gen)})),
        masked_paths=tuple(meta.get("masked_paths") or ()), root=str(root), prefix=str(gen))


def external_environment(prefix: Path) -> ProjectEnvironment:
    prefix = Path(os.path.abspath(prefix))
    python = prefix / "bin" / "python"
    if not python.exists():
        raise EnvironmentError_(f"--project-env {prefix}: no bin/python there (not a Python environment)")
    missing = missing_modules(str(python))
    if missing:
        raise EnvironmentError_(
            f"--project-env {prefix}: the project daemon needs {', '.join(missing)} there "
            f"(`{python} -m pip install ipykernel psutil`)")
    return ProjectEnvironment(kind="external", python=str(python), bin_dirs=(str(prefix / "bin"),),
                              ro_paths=tuple(sorted({str(prefix), *_base_prefixes(prefix)})),
                              prefix=str(prefix))


def rootfs_environment(rootfs: Path) -> ProjectEnvironment:
    rootfs = Path(os.path.abspath(rootfs))
    if not rootfs.is_dir():
        raise EnvironmentError_(f"--project-rootfs {rootfs}: no such directory")
    for d in ("usr", "etc"):
        if not (rootfs / d).is_dir():
            raise EnvironmentError_(f"--project-rootfs {rootfs}: no {d}/ (not an unpacked root filesystem)")
    python = next((p for p in _ROOTFS_PYTHONS if os.path.lexists(str(rootfs) + p)), None)
    if python is None:
        raise EnvironmentError_(f"--project-rootfs {rootfs}: no python3 in /usr/local/bin or /usr/bin")
    missing = _rootfs_missing_modules(rootfs, python)
    if missing:
        raise EnvironmentError_(
            f"--project-rootfs {rootfs}: the project daemon needs {', '.join(missing)} in the image's "
            f"{python} (`pip install ipykernel psutil` in the image)")
    return ProjectEnvironment(kind="rootfs", python=python,
                              bin_dirs=(os.path.dirname(python),), rootfs=str(rootfs))


def _rootfs_missing_modules(rootfs: Path, python: str) -> list[str]:
    """``missing_modules`` for the image's interpreter, run with the image as its root (its
    libraries, not the host's); unchecked (start-up then fails with the reason) without bwrap."""
    exe = shutil.which("bwrap")
    if exe is None:
        return []
    from .sandbox.bwrap import SYSTEM_DIRS   # what a project's sandbox takes from the image
    argv = [exe, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent"]
    for d in SYSTEM_DIRS:
        src = str(rootfs) + d
        if os.path.islink(src):
            argv += ["--symlink", os.readlink(src), d]
        elif os.path.isdir(src):
            argv += ["--ro-bind", src, d]
    argv.append("--")
    return missing_modules(python, runner=argv, env={"PATH": "/usr/bin:/bin"})


def _base_prefixes(prefix: Path) -> set[str]:
    """The base interpreter's install prefix a venv at ``prefix`` runs from (its
    ``pyvenv.cfg`` ``home`` is that prefix's bin/); none for a plain prefix."""
    cfg = _read_pyvenv_cfg(prefix)
    home = cfg.get("home")
    if not home:
        return set()
    out = set()
    for h in (home, os.path.realpath(home)):
        base = os.path.dirname(h.rstrip("/"))
        if base and not _system_dir(base):
            out.add(base)
    return out


def _system_dir(path: str) -> bool:
    from .sandbox.bwrap import SYSTEM_DIRS   # bound read-only in every sandbox anyway
    return any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS)


def _read_pyvenv_cfg(prefix: Path) -> dict[str, str]:
    try:
        text = (prefix / "pyvenv.cfg").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _set_system_site(prefix: Path, on: bool) -> None:
    cfg = prefix / "pyvenv.cfg"
    lines = cfg.read_text().splitlines()
    value = "true" if on else "false"
    lines = [f"include-system-site-packages = {value}"
             if line.split("=")[0].strip().lower() == "include-system-site-packages" else line
             for line in lines]
    tmp = cfg.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, cfg)


def missing_modules(python: str, modules: tuple[str, ...] = DAEMON_MODULES, *,
                    runner: Sequence[str] = (), env: dict[str, str] | None = None) -> list[str]:
    """Which of ``modules`` ``python`` cannot import (``-I``: as the daemon imports them);
    ``runner`` prefixes the command (bwrap, for an image's interpreter)."""
    # In a venv a module found only in the base interpreter's site-packages counts as
    # missing: that directory is hidden in the sandbox.
    code = ("import importlib.util, os, sys\n"
            "def ok(m):\n"
            " s = importlib.util.find_spec(m)\n"
            " if s is None: return False\n"
            " o = os.path.realpath(s.origin or (list(s.submodule_search_locations or []) or [''])[0])\n"
            " return sys.prefix == sys.base_prefix or o.startswith(os.path.realpath(sys.prefix) + '/')\n"
            "print(' '.join(m for m in sys.argv[1:] if not ok(m)))")
    try:
        out = subprocess.run([*runner, python, "-I", "-c", code, *modules], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"(python did not run: {exc})"]
    if out.returncode != 0:
        return [f"(python failed: {_tail(out.stderr)})"]
    return out.stdout.split()


# ---------------------------------------------------------------------------- generations

def generations(root: Path) -> list[tuple[int, Path]]:
    out = []
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            m = _GEN_RE.match(entry.name)
            if m and entry.is_dir() and not entry.is_symlink():
                out.append((int(m.group(1)), entry))
    return sorted(out)


def current_generation(root: Path) -> Path | None:
    link = root / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    gen = root / target
    if not _GEN_RE.match(target) or not (gen / META_NAME).exists():
        return None
    return gen


def read_meta(gen: Path) -> dict:
    try:
        data = json.loads((gen / META_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One build or install at a time per environment (a CLI and a starting server alike)."""
    root.mkdir(parents=True, exist_ok=True)
    _check_owned(root)      # again: another user may have made it between the check and mkdir
    os.chmod(root, 0o755)   # traversable: sandboxes of project uids bind it (mode none runs it)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _next_generation(root: Path) -> Path:
    gens = generations(root)
    return root / f"gen-{(gens[-1][0] + 1) if gens else 1}"


def _sweep(root: Path, keep: Path | None) -> None:
    """Remove interrupted generations, and all but the newest KEEP_GENERATIONS complete ones."""
    complete = [g for _, g in generations(root) if (g / META_NAME).exists()]
    keep_set = set(complete[-KEEP_GENERATIONS:]) | ({keep} if keep else set())
    for _, gen in generations(root):
        if gen not in keep_set:
            shutil.rmtree(gen, ignore_errors=True)


def _switch(root: Path, gen: Path) -> None:
    """Point ``current`` at ``gen`` atomically (a rename over the old symlink)."""
    tmp = root / f".{CURRENT}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(gen.name, tmp)
    os.replace(tmp, root / CURRENT)


# ---------------------------------------------------------------------------- build / install

def build(root: Path, packages: tuple[str, ...] = DEFAULT_PACKAGES, *,
          progress: Callable[[str], None] | None = None) -> Path:
    """A fresh managed environment with ``packages``; returns its generation."""
    say = progress or (lambda line: None)
    root = Path(os.path.abspath(root))
    _check_owned(root)   # before anything is created there
    _check_managed_root(root)
    with _locked(root):
        _sweep(root, current_generation(root))
        gen = _next_generation(root)
        try:
            say(f"[1/3] creating a virtual environment in {gen}")
            subprocess.run([_base_python(), "-m", "venv", str(gen)], check=True, capture_output=True,
                           timeout=300, stdin=subprocess.DEVNULL)
            say(f"[2/3] installing {' '.join(packages)} (downloads ~150 MB the first time)")
            _pip_install(gen, list(packages), say)
            say("[3/3] checking the environment")
            _finish(root, gen, list(packages))
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(gen, ignore_errors=True)
            raise EnvironmentError_(f"env build: creating the venv failed: {_tail(exc.stderr)}") from None
        except BaseException:
            shutil.rmtree(gen, ignore_errors=True)
            raise
        say(f"project environment ready: {gen}")
        return gen


def install(root: Path, packages: list[str], *, progress: Callable[[str], None] | None = None) -> Path:
    """Add ``packages`` for every project: a new generation, switched to only when it works."""
    say = progress or (lambda line: None)
    root = Path(os.path.abspath(root))
    if not packages:
        raise EnvironmentError_("env install: name at least one package")
    for p in packages:
        if not p.strip() or p.startswith("-") and p not in ("--upgrade", "-U", "--pre"):
            raise EnvironmentError_(f"env install: {p!r} is not a package requirement")
    with _locked(root):
        old = current_generation(root)
        if old is None:
            raise EnvironmentError_(f"no project environment in {root}: run `projecthub env build` first")
        _sweep(root, old)
        gen = _next_generation(root)
        try:
            say(f"[1/3] copying {old.name} to {gen.name}")
            _copy_generation(old, gen)
            say(f"[2/3] installing {' '.join(packages)}")
            _pip_install(gen, packages, say)
            say("[3/3] checking the environment")
            requested = list(read_meta(old).get("packages") or DEFAULT_PACKAGES)
            requested += [p for p in packages if p not in requested and not p.startswith("-")]
            _finish(root, gen, requested)
        except BaseException:
            shutil.rmtree(gen, ignore_errors=True)
            raise
        say(f"project environment {gen.name} is current (running projects use it from their next start)")
        return gen


def _base_python() -> str:
    """The interpreter new environments are made from: the server's base Python (so the
    sandbox needs no second Python installation)."""
    for cand in (os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"),
                 os.path.join(sys.base_prefix, "bin", "python3")):
        if os.path.exists(cand):
            return cand
    return sys.executable


def _pip_install(gen: Path, packages: list[str], say: Callable[[str], None]) -> None:
    # pip must see only this venv while it installs (the base's site-packages would make it
    # skip what is installed there); user site enabled again by _finish.
    _set_system_site(gen, False)
    argv = [str(gen / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
            "--no-input", *packages]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    interactive = sys.stderr.isatty()
    # On a terminal pip draws its own progress bars; otherwise its lines are summarised.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, cwd="/",
                            stdout=None if interactive else subprocess.PIPE,
                            stderr=None if interactive else subprocess.STDOUT)
    tail = b""
    deadline = time.monotonic() + _PIP_TIMEOUT_S
    try:
        if proc.stdout is not None:
            for raw in proc.stdout:
                tail = (tail + raw)[-_PIP_TAIL_BYTES:]
                line = raw.decode(errors="replace").rstrip()
                if line.startswith(("Collecting", "Installing collected", "Successfully installed")):
                    say("      " + line[:200])
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, _PIP_TIMEOUT_S)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise EnvironmentError_(f"pip install {' '.join(packages)} failed (exit {rc}): {_tail(tail)}")


def _finish(root: Path, gen: Path, packages: list[str]) -> None:
    _set_system_site(gen, True)
    missing = missing_modules(str(gen / "bin" / "python"))
    if missing:
        raise EnvironmentError_(f"the new environment cannot import {', '.join(missing)} "
                                "(the project daemon needs them); the previous one stays in use")
    meta = {"packages": packages, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": _python_version(gen), "masked_paths": _base_site_packages()}
    _chmod_readable(gen)
    tmp = gen / (META_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.chmod(tmp, 0o644)
    os.replace(tmp, gen / META_NAME)    # last: from here on the generation is complete
    _switch(root, gen)
    _sweep(root, gen)


def _python_version(gen: Path) -> str:
    out = subprocess.run([str(gen / "bin" / "python"), "-I", "-c",
                          "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def _base_site_packages() -> list[str]:
    """The base interpreter's site-packages directories: hidden in sandboxes (its packages
    are the server machine's, not the project environment's)."""
    base = [p for p in site.getsitepackages([sys.base_prefix]) if os.path.isdir(p)]
    return sorted({os.path.realpath(p) for p in base} | set(base))


def _chmod_readable(gen: Path) -> None:
    """Files a project uid may read and run, none it may write (umask may have said 077)."""
    for dirpath, dirnames, filenames in os.walk(gen):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if not os.path.islink(path):
                    mode = st.st_mode & 0o7777
                    want = (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & ~0o022
                    if want != mode:
                        os.chmod(path, want)
    os.chmod(gen, 0o755)


def _copy_generation(old: Path, new: Path) -> None:
    """A copy of ``old`` that works at ``new``: a venv writes its own path into its
    scripts' shebangs and activate files, so those are rewritten."""
    shutil.copytree(old, new, symlinks=True)
    (new / META_NAME).unlink(missing_ok=True)
    old_b, new_b = str(old).encode(), str(new).encode()
    for entry in (new / "bin").iterdir():
        if entry.is_symlink() or not entry.is_file():
            continue
        data = entry.read_bytes()
        if old_b in data[:65536] and b"\0" not in data[:1024]:
            mode = entry.stat().st_mode
            entry.write_bytes(data.replace(old_b, new_b))
            os.chmod(entry, mode)


def _tail(data: bytes | str | None) -> str:
    if not data:
        return "(no output)"
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-4:])[-600:]


# ---------------------------------------------------------------------------- status

def status(env: ProjectEnvironment) -> dict:
    """What ``projecthub env status`` prints."""
    out = env.to_json()
    if env.kind == "managed" and env.root:
        root = Path(env.root)
        gen = Path(env.prefix or "")
        meta = read_meta(gen)
        out.update({"generation": gen.name, "packages": meta.get("packages", []),
                    "created": meta.get("created"), "python_version": meta.get("python"),
                    "generations": [g.name for _, g in generations(root)],
                    "bytes": _du(gen)})
    if env.kind != "rootfs":
        listing = subprocess.run([env.python, "-I", "-m", "pip", "list", "--local", "--format", "json",
                                  "--disable-pip-version-check"], capture_output=True, text=True,
                                 timeout=120, stdin=subprocess.DEVNULL)
        with contextlib.suppress(ValueError):
            out["installed"] = {p["name"]: p["version"] for p in json.loads(listing.stdout or "[]")}
        out["missing_daemon_modules"] = missing_modules(env.python)
    return out


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total

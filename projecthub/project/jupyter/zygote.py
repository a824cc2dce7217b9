"""Kernel zygote: a pre-imported Python that forks brand-new ipykernels in milliseconds.

This file is the *zygote process's* program, run with ``runpy.run_path`` (see
``forking.ZYGOTE_BOOT``; the control socket's fd is the last argument).  It uses the
stdlib and ipykernel only: importing projecthub would put it in every kernel's
``sys.modules``.  The daemon side lives in ``forking.py``.

Cost (2 vCPUs, see ``bench/jupyter_micro.py``): a forked kernel costs ~25-30 ms of
CPU over its whole life of one stateless call (it varies by a third with this VM's
load), against ~0.3-0.5 s for a launched one: ~14 ms in the rest of IPKernelApp's
initialisation (sockets and threads, the kernel object, extensions; the app, its
config, session and shell are prebuilt here, see ``Prebuilt``), ~5 ms in its first
execute and ~3-4 ms tearing down its address space at exit.  Much of it is
copy-on-write faults (~3100 per kernel, ~2-3 us each on this VM: CPython 3.11 refcounts
write to shared pages), which is why hot spots that touch every module are served from
packed copies (``_ModuleFiles``), and why the zygote maps as little as it can.

What children do share with each other: the str hash seed (fixed at interpreter start)
and the zygote's heap layout, so ``id()`` of objects created the same way may coincide
across calls.  Neither carries state from an earlier call: no child ever forks from a
kernel that ran user code.

Lifecycle of one kernel:

1. The daemon sends ``{"op": "spawn", "id", "connection_file", "cwd", "env", "rlimits",
   "stderr", "argv"}`` over the control socket (newline-delimited JSON).
2. The zygote checks that it is still single-threaded and ``os.fork()``s.  The child
   blocks on a private pipe; the zygote answers ``{"id", "pid"}``.
3. The daemon moves the pid into the kernel's own ProcessGroup (cgroup or marker) and
   sends ``{"op": "release", "pid"}``; the zygote writes one byte to the child's pipe.
   So the kernel starts no thread and forks nothing before it sits in its own group.
4. The child becomes a clean ipykernel: own session (``setsid``), default signal
   handlers, stdio on /dev/null + its stderr file, every other fd closed, its cwd, its
   environment, its rlimits, then ``IPKernelApp.launch_instance`` in-process.
5. The zygote stays the kernel's parent and reaps it (single fork: the zygote is the one
   process that can ``wait4`` it without the daemon being a subreaper); it reports
   ``{"exit": pid, "code", "utime", "stime", "maxrss"}`` so the daemon keeps exit codes
   and rusage.  A kernel dies with the zygote (a parent-death SIGKILL; ipykernel's
   parent poller thread where that is unavailable); the zygote exits when the daemon
   closes the socket.

What a forked stateless kernel leaves out, being one call's kernel that only our daemon
talks to: the debugger (``_without_debugger``) and its sockets, subshells and the
shell channel thread, the control thread (shell and control are served on the main
thread, ``Prebuilt._init_sockets``), the parent poller thread and the heartbeat (its
thread, socket and ZMQ context: the daemon never checks a heartbeat, it watches the
kernel's process, and nobody else talks to a kernel that lives for one call).  Each is
memory that every fork copies page tables for, or threads every kernel starts and
tears down.

Kernels never fork from a used kernel: the zygote itself never runs user code, starts
no thread, opens no ZMQ context and has no event loop.
"""

import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading


def warm_up() -> None:
    """Import what every kernel needs; nothing that starts a thread or opens a socket."""
    import IPython  # noqa: F401
    import ipykernel.ipkernel  # noqa: F401
    import ipykernel.kernelapp  # noqa: F401
    import ipykernel.zmqshell  # noqa: F401
    import jupyter_client  # noqa: F401
    import tornado  # noqa: F401
    import zmq  # noqa: F401
    for name in ("ipykernel.comm", "ipykernel.displayhook", "ipykernel.iostream",
                 "ipykernel.heartbeat", "ipykernel.parentpoller", "ipykernel.eventloops",
                 "ipykernel.jsonutil", "IPython.core.completer", "IPython.core.formatters",
                 "IPython.core.magics", "IPython.core.history", "IPython.core.payloadpage",
                 "IPython.core.interactiveshell", "comm", "jupyter_client.session",
                 "zmq.eventloop.zmqstream", "tornado.ioloop", "asyncio", "sqlite3",
                 "pickle", "pydoc",
                 # Not matplotlib (matplotlib_inline): it brings numpy, OpenBLAS (whose
                 # thread the fork check cannot see) and a font cache, doubling the
                 # zygote's anonymous memory (36 -> 67 MB).  Every fork copies page tables
                 # and every exit tears down what is mapped: ~1.2 ms more per fork and
                 # ~5 ms more CPU per kernel, for every stateless call, to save the ~0.4 s
                 # import in the few cells that plot.
                 # (not debugpy: see _without_debugger)
                 "ipykernel.debugger", "bdb", "cmd", "code", "pdb", "faulthandler",
                 "mimetypes", "resource", "runpy", "psutil", "pwd", "email.utils",
                 "http.client", "xmlrpc.client", "stringprep",
                 # imported lazily by IPKernelApp.initialize/start and the first cells:
                 # ~10 ms of every child's CPU when left to the child
                 "tornado.platform.asyncio", "IPython.core.completerlib",
                 "IPython.core.debugger", "IPython.core.logger", "IPython.core.oinspect",
                 "IPython.extensions.storemagic", "IPython.utils.wildcard",
                 "encodings.utf_16_be"):
        try:
            __import__(name)
        except Exception:
            pass


def _without_debugger() -> None:
    """Stateless kernels get no debugger: ipykernel decides at import whether debugpy is
    available, so hide it while ``ipykernel.debugger`` is imported.  Nobody can attach a
    debugger to a kernel that serves one call, and debugpy/pydevd would be ~6 MB of the
    zygote's memory that every fork copies page tables for and every exit tears down,
    plus a Debugger object per kernel.  User code can still ``import debugpy``: the
    hiding entry is removed at once."""
    hidden = "debugpy" not in sys.modules
    if hidden:
        sys.modules["debugpy"] = None  # type: ignore[assignment]  (import raises ImportError)
    try:
        import ipykernel.debugger  # noqa: F401
    except Exception:
        pass
    finally:
        if hidden:
            del sys.modules["debugpy"]


# The argv (besides -f and parent_handle) the daemon gives every ipykernel it starts
# (kernels.py); the prebuilt app below is configured with exactly this.
# - History in memory: kernels here are short-lived or concurrent, and 20 of them would
#   contend for one history.sqlite in HOME.
# - No _execute_sleep: ipykernel sleeps 0.5 ms (~0.7 ms here) before every execute_reply
#   so that clients which stop reading at the reply have seen the cell's output.  The
#   daemon reads IOPub until the kernel's "idle" status, which is published after the
#   reply and after the output (one IOPub socket, in order), so the sleep is pure latency.
KERNEL_EXTRA_ARGV = ["--HistoryManager.hist_file=:memory:", "--IPythonKernel._execute_sleep=0"]
# Kernel traits that shape how the shell is built: if the user's config sets any, the
# shell cannot be built ahead of the kernel and children start the ordinary way.
_SHELL_SHAPING = {"shell_class", "compiler_class", "user_module", "user_ns", "kernel_class"}


class Prebuilt:
    """An IPKernelApp configured and its shell constructed here, before any fork.

    Constructing ZMQInteractiveShell (magics, history, formatters, completer, traceback
    handlers) and parsing the command line and config files is ~15-20 ms of every
    kernel's start and creates no thread, socket or event loop, so children inherit it
    ready-made.  Everything with a thread, a ZMQ socket or an fd (sockets, iopub, control
    and heartbeat threads, stdio capture) and everything that may run user code
    (startup files, exec_lines, extensions) still happens in the child, in ipykernel's
    own order (``run``).  Only for ipykernel 7, whose ``IPKernelApp.initialize`` ``run``
    mirrors.
    """

    def __init__(self) -> None:
        import copy

        import ipykernel
        from ipykernel.compiler import XCachingCompiler
        from ipykernel.ipkernel import IPythonKernel
        from ipykernel.kernelapp import IPKernelApp
        from ipykernel.zmqshell import ZMQInteractiveShell
        if not ipykernel.__version__.startswith("7."):
            raise RuntimeError(f"prebuilding is written for ipykernel 7, not {ipykernel.__version__}")
        app = IPKernelApp.instance()
        # BaseIPythonApplication.initialize without the crash handler (the child's job).
        app.parse_command_line(KERNEL_EXTRA_ARGV)
        cl_config = copy.deepcopy(app.config)
        app.init_profile_dir()
        app.init_config_files()
        # A config file the project can write (~/.ipython/...) is Python code: it must run
        # in each kernel, never in the zygote that every stateless kernel is forked from.
        # With one present, kernels start the ordinary way after the fork and load it.
        owned = [os.path.join(d, name) for d, name, *_ in self._config_stamp(app)
                 if os.access(d, os.W_OK) or os.access(os.path.join(d, name), os.W_OK)]
        if owned:
            raise RuntimeError(f"user config files present ({', '.join(owned)}): not prebuilt")
        app.load_config_file()
        app.update_config(cl_config)
        for section in ("IPKernelApp", "IPythonKernel", "Kernel"):
            if _SHELL_SHAPING & set(app.config.get(section, {})):
                raise RuntimeError(f"config sets {section} traits that shape the shell")
        if app.subapp is not None or app.kernel_class is not IPythonKernel:
            raise RuntimeError("not a plain IPythonKernel app")
        self.config_stamp = self._config_stamp(app)
        # Session construction (trait defaults, packer checks) is ~4 ms: build it here
        # too; the child gives it its own identity and load_connection_info its key.
        app.session  # noqa: B018  (the trait default creates it)
        # What IPythonKernel.__init__ would build; its own instance() call returns this.
        shell = ZMQInteractiveShell.instance(parent=app, profile_dir=app.profile_dir,
                                             user_module=None, user_ns=app.user_ns,
                                             kernel=None, compiler_class=XCachingCompiler)
        self.app = app
        _warm_cell_machinery(shell)
        self.module_files = _ModuleFiles()   # last: after every import above

    @staticmethod
    def _config_stamp(app: object) -> list:
        names = ["ipython_config", getattr(app, "config_file_name", "").rsplit(".", 1)[0]]
        stamp = []
        for d in getattr(app, "config_file_paths", []):
            for name in names:
                for ext in (".py", ".json"):
                    try:
                        st = os.stat(os.path.join(d, name + ext))
                        stamp.append((d, name + ext, st.st_mtime_ns, st.st_size))
                    except OSError:
                        pass
        return stamp

    def fresh(self) -> bool:
        """False once a config file the app loaded (or could load) changed on disk."""
        return self._config_stamp(self.app) == self.config_stamp

    def run(self, connection_file: str, parent_handle: int) -> None:
        """In the child: what IPKernelApp.launch_instance does after the prebuilt part."""
        app = self.app
        app.connection_file = connection_file
        app.parent_handle = parent_handle
        self._renew_session(app.session)
        app.init_crash_handler()
        # IPKernelApp.initialize (ipykernel 7.x), after BaseIPythonApplication.initialize
        app.init_pdb()
        app.init_blackhole()
        app.init_connection_file()
        app.init_poller()
        self._init_sockets(app)
        app.heartbeat = None   # nobody watches a one-call kernel's heartbeat (see below)
        if not self._ports_given(app):
            app.write_connection_file()
        app.log_connection_info()
        app.init_io()
        try:
            app.init_signal()
        except Exception:
            pass
        import IPython.core.shellapp as shellapp
        import ipykernel.ipkernel as ipkernel
        with self.module_files.lent_to(ipkernel):   # it reads sys only for that list
            self._init_kernel(app)
        self._adopt_shell(app.kernel)
        app.init_path()
        app.init_shell()
        if app.shell:
            app.init_gui_pylab()
            app.init_extensions()
            with self.module_files.lent_to(shellapp):
                app.init_code()
        sys.stdout.flush()
        sys.stderr.flush()
        app.start()

    @staticmethod
    def _init_sockets(app: object) -> None:
        """IPKernelApp.init_sockets (ipykernel 7.x) for a kernel with every channel on its
        main thread: shell, stdin and control bound as ipykernel binds them, IOPub on its
        own thread as usual; no control thread, no shell channel thread, no debugger
        sockets.

        ipykernel 7 reads the shell socket in a "shell channel" thread so that subshells
        can run beside the main one, and the control socket in a thread of its own so an
        interrupt or shutdown request is served while a cell runs.  A forked kernel needs
        neither: it serves one client (our daemon), has no subshells, and is interrupted
        with SIGINT and stopped with a signal (forking is only for specs that interrupt
        by signal, ``forking.eligible``).  Its control requests (kernel_info, shutdown)
        are answered between cells.  Two threads and event loops, a STREAM and a DEALER
        socket (the debugger's) and a connection to its own shell socket fewer, per
        kernel; and one thread hop fewer for every shell request and reply."""
        import atexit

        import zmq
        app.log.info("Starting the kernel at pid: %i", os.getpid())
        app.context = context = zmq.Context()
        atexit.register(app.close)
        for name in ("shell", "stdin", "control"):
            sock = context.socket(zmq.ROUTER)
            sock.linger = 1000
            app._apply_curve_server_options(sock)
            setattr(app, f"{name}_port", app._bind_socket(sock, getattr(app, f"{name}_port")))
            if hasattr(zmq, "ROUTER_HANDOVER"):
                sock.router_handover = 1   # as ipykernel sets it (ipython/ipykernel#270)
            setattr(app, f"{name}_socket", sock)
        app.control_thread = app.shell_channel_thread = None
        app.init_iopub(context)

    @staticmethod
    def _init_kernel(app: object) -> None:
        """IPKernelApp.init_kernel (ipykernel 7.x) for the sockets of ``_init_sockets``:
        shell and control streams on the main thread's event loop, no debugger streams."""
        from zmq.eventloop.zmqstream import ZMQStream
        kernel = app.kernel_class.instance(
            parent=app, session=app.session,
            control_stream=ZMQStream(app.control_socket), debugpy_stream=None,
            debug_shell_socket=None, shell_stream=ZMQStream(app.shell_socket),
            control_thread=None, shell_channel_thread=None,
            iopub_thread=app.iopub_thread, iopub_socket=app.iopub_socket,
            stdin_socket=app.stdin_socket, log=app.log, profile_dir=app.profile_dir,
            user_ns=app.user_ns)
        kernel.record_ports({name + "_port": port for name, port in app._ports.items()})
        app.kernel = kernel
        app.displayhook.get_execution_count = lambda: kernel.execution_count
        # IPythonKernel.start warns that a kernel without a debugger stream cannot debug:
        # true by design here (``_without_debugger``), not a line for every kernel's stderr.
        app.log.addFilter(lambda record: record.msg != _NO_DEBUGGER_WARNING)

    @staticmethod
    def _ports_given(app: object) -> bool:
        """Every port came from the connection file (the daemon writes one per kernel with
        all of them): IPKernelApp.write_connection_file would only read the file back,
        merge in the same values and find nothing to write."""
        return all(getattr(app, f"{name}_port") for name in ("shell", "stdin", "control", "iopub", "hb"))

    @staticmethod
    def _renew_session(session: object) -> None:
        """A Session of this process: its own id, pid (Session.send refuses to send
        from a pid it was not made in) and message counter."""
        from jupyter_client.session import new_id
        session.pid = os.getpid()
        session.session = new_id()   # the observer updates bsession
        session.message_count = 0
        session.digest_history = set()

    @staticmethod
    def _adopt_shell(kernel: object) -> None:
        """Make the prebuilt shell look as if ``kernel`` had constructed it just now."""
        shell = kernel.shell
        shell.kernel = kernel
        shell.parent = kernel
        shell.starting_dir = os.getcwd()
        # A launched kernel builds its shell after init_io: it saved the kernel's streams.
        shell._orig_sys_module_state.update(stdin=sys.stdin, stdout=sys.stdout,
                                            stderr=sys.stderr, excepthook=sys.excepthook)


_NO_DEBUGGER_WARNING = "debugpy_stream undefined, debugging will not be enabled"


class _FileOf:
    __slots__ = ("__file__",)

    def __init__(self, path: str) -> None:
        self.__file__ = path


class _ModuleFiles:
    """The zygote's module names and files, packed into a few pages, standing in for
    ``sys.modules`` where ipykernel and IPython list every module while a child starts.

    IPythonKernel.__init__ lists ``[m.__file__ for m in sys.modules.copy().values()
    ...]`` (for its debugger) and InteractiveShellApp.init_code keeps
    ``set(sys.modules.keys())`` (for ``%reset -a``).  In a fork that reference-counts
    ~900 module objects, names and ``__file__`` strings scattered over the shared heap:
    ~2200 copy-on-write page faults, ~10 ms of every kernel's start on a VM.  Fresh
    copies allocated one after another here give the same lists for a few dozen.
    """

    def __init__(self) -> None:
        modules = sys.modules.copy()
        self._count = len(modules)
        self._names = tuple((name + "\0")[:-1] for name in modules)   # new str objects
        self._holders = tuple(_FileOf((m.__file__ + "\0")[:-1]) for m in modules.values()
                              if hasattr(m, "__file__") and m.__file__)

    def copy(self) -> "_ModuleFiles":
        return self

    def values(self) -> tuple:
        return self._holders

    def keys(self) -> object:
        if len(sys.modules) != self._count:   # the child imported something since
            return sys.modules.keys()
        return self._names

    @contextlib.contextmanager
    def lent_to(self, module: object):  # type: ignore[no-untyped-def]
        """Within: ``module`` sees this as ``sys.modules``; every other ``sys``
        attribute it reads or sets is the real one's."""
        module.sys = _SysWithModules(self)
        try:
            yield
        finally:
            module.sys = sys


class _SysWithModules:
    def __init__(self, modules: _ModuleFiles) -> None:
        object.__setattr__(self, "modules", modules)

    def __getattr__(self, name: str) -> object:
        return getattr(sys, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(sys, name, value)   # e.g. shellapp's sys.argv save/restore


def _warm_cell_machinery(shell: object) -> None:
    """Run the stateless parts of a cell's path once (input transformers, parsing, the
    async check, result formatting: lazy trait defaults and caches, ~2 ms of each
    child's first cell).  Nothing is executed, compiled into the shell's cache, counted
    or stored: the shell stays as new."""
    from IPython.core.async_helpers import _should_be_async
    cell = shell.transform_cell("1+1\n")
    shell.compile.ast_parse(cell)
    _should_be_async(cell)
    shell.display_formatter.format(2)


PREBUILT: "Prebuilt | None" = None


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pending: dict[int, int] = {}   # pid -> write end of its release pipe
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def send(self, msg: dict) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # interrupts are for kernels
        self.send({"ready": True, "pid": os.getpid(), "threads": threading.active_count(),
                   "welcome": _kernels_send_iopub_welcome()})
        while True:
            try:
                readable, _, _ = select.select([self.sock, self.wake_r], [], [])
            except InterruptedError:
                continue
            if self.wake_r in readable:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            self.reap()
            if self.sock in readable:
                data = self.sock.recv(1 << 16)
                if not data:
                    return   # the daemon is gone: so are we (kernels follow via their poller)
                self.buf += data
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    if line.strip():
                        self.handle(json.loads(line))

    def reap(self) -> None:
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            wfd = self.pending.pop(pid, None)
            if wfd is not None:
                os.close(wfd)
            self.send({"exit": pid, "code": os.waitstatus_to_exitcode(status),
                       "utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss": ru.ru_maxrss})

    def handle(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "spawn":
            self.spawn(msg)
        elif op == "release":
            wfd = self.pending.pop(int(msg["pid"]), None)
            if wfd is not None:
                try:
                    os.write(wfd, b"go" if msg.get("go", True) else b"")
                finally:
                    os.close(wfd)
        elif op == "ping":
            self.send({"id": msg.get("id"), "pong": True, "threads": threading.active_count()})

    def spawn(self, req: dict) -> None:
        threads = threading.active_count()
        if threads != 1:
            # Forking a multi-threaded process can copy a held lock: refuse, the daemon
            # falls back to a normal launch.
            self.send({"id": req["id"], "error": f"zygote has {threads} threads"})
            return
        if PREBUILT is not None and not PREBUILT.fresh():
            # The kernel config changed on disk: children of this zygote would miss it.
            # Refuse and exit; the daemon launches this kernel normally and restarts us.
            self.send({"id": req["id"], "error": "kernel config changed: zygote restarting"})
            raise SystemExit(0)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(rfd)
            os.close(wfd)
            self.send({"id": req["id"], "error": f"fork: {exc}"})
            return
        if pid == 0:
            code = 1
            try:
                os.close(wfd)
                code = become_kernel(self, req, rfd)
            except BaseException:
                try:
                    import traceback
                    traceback.print_exc()
                    sys.stderr.flush()
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(rfd)
        self.pending[pid] = wfd
        self.send({"id": req["id"], "pid": pid})


def _kernels_send_iopub_welcome() -> bool:
    """Whether this ipykernel greets every IOPub subscription (``iopub_welcome``): then
    the daemon may take that message alone as the sign a kernel is ready."""
    try:
        from ipykernel.iostream import IOPubThread
    except Exception:
        return False
    return hasattr(IOPubThread, "_send_welcome_message")


IMPORT_ENV: dict = {}

_RLIMITS = {"nofile": "RLIMIT_NOFILE", "fsize": "RLIMIT_FSIZE", "cpu": "RLIMIT_CPU",
            "as": "RLIMIT_AS"}


def become_kernel(zygote: Zygote, req: dict, release_fd: int) -> int:
    """In the forked child: wait to be adopted, shed the zygote, run one ipykernel."""
    zygote_pid = os.getppid()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()   # own session and process group: killpg(pid) reaches the kernel's children
    # Wait until the daemon has moved us into our own ProcessGroup.
    go = os.read(release_fd, 2)
    if go != b"go":
        return 0
    zygote.sock.detach()   # the fd is closed below; the object must never close a reused fd
    devnull = os.open(os.devnull, os.O_RDWR)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err, 2)
    os.closerange(3, 1 << 16)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for key, value in IMPORT_ENV.items():
        os.environ.setdefault(key, value)
    _set_dumpable(True)   # user code's own process again: debuggers and py-spy may attach
    _user_import_path(req["env"])
    import resource
    for name, value in (req.get("rlimits") or {}).items():
        rid = getattr(resource, _RLIMITS.get(name, ""), None)
        if rid is None:
            continue
        try:
            _soft, hard = resource.getrlimit(rid)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(rid, (value, value))
        except (OSError, ValueError):
            pass
    import random
    random.seed()   # the fork handler already reseeds; be explicit about it
    import ipykernel.kernelapp
    launcher = os.path.join(os.path.dirname(os.path.dirname(ipykernel.__file__)),
                            "ipykernel_launcher.py")
    argv = ["-f", req["connection_file"], f"--IPKernelApp.parent_handle={os.getppid()}",
            *req.get("argv", [])]
    sys.argv = [launcher, *argv]
    if PREBUILT is not None and req.get("argv", []) == KERNEL_EXTRA_ARGV:
        # No parent poller thread: the kernel gets SIGKILL when the zygote dies.
        PREBUILT.run(req["connection_file"], 0 if _die_with_parent(zygote_pid) else zygote_pid)
        return finish_kernel()
    ipykernel.kernelapp.IPKernelApp.launch_instance(argv=argv)
    return finish_kernel()


def _set_dumpable(on: bool) -> None:
    """The zygote is not dumpable (project code of its uid must not ptrace it: it is the
    parent of every stateless kernel); each kernel is, like any process the user starts."""
    import ctypes
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(4, 1 if on else 0, 0, 0, 0)   # PR_SET_DUMPABLE


def _user_import_path(env: dict) -> None:
    """What ``python -m ipykernel_launcher`` would have on sys.path and the zygote, started
    with ``-I``, has not: $PYTHONPATH first, the kernel's cwd as IPython's '' entry before
    the first site-packages (IPython skips it under -I's safe_path; resolved after the chdir
    above), and the user site when the interpreter has one."""
    sys.path[0:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if "" not in sys.path:
        at = next((i for i, p in enumerate(sys.path)
                   if os.path.basename(p) in ("site-packages", "dist-packages")), 0)
        sys.path.insert(at, "")
    if _user_site_enabled() and not env.get("PYTHONNOUSERSITE"):
        import site
        with contextlib.suppress(Exception):
            site.ENABLE_USER_SITE = True
            site.addsitedir(site.getusersitepackages())


def _user_site_enabled() -> bool:
    """Whether this interpreter has a user site when started without ``-I``: outside a venv,
    or in one made with ``include-system-site-packages = true`` (the managed project
    environment is, so that ``pip install --user`` packages import)."""
    if sys.prefix == sys.base_prefix:
        return True
    try:
        with open(os.path.join(sys.prefix, "pyvenv.cfg"), encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip().lower() == "include-system-site-packages":
                    return value.strip().lower() == "true"
    except OSError:
        pass
    return False


def _die_with_parent(zygote_pid: int) -> bool:
    """PR_SET_PDEATHSIG: SIGKILL when the zygote dies, instead of ipykernel's parent
    poller (a thread that wakes every second to compare getppid()).  The zygote is
    single-threaded, so its death is the parent thread's.  False if unavailable."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:   # 1 = PR_SET_PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != zygote_pid:   # the zygote died before the signal was armed
        os._exit(1)
    return True


def finish_kernel() -> int:
    """The kernel's event loop ended: run its exit handlers as an interpreter exit would."""
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return 0


def _drop_singletons() -> None:
    try:
        from ipykernel.kernelapp import IPKernelApp
        from ipykernel.zmqshell import ZMQInteractiveShell
        IPKernelApp.clear_instance()
        ZMQInteractiveShell.clear_instance()
    except Exception:
        pass


def main() -> None:
    # Like ipykernel_launcher: no cwd on sys.path while importing (IPython adds '' back).
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    sock = socket.socket(fileno=int(sys.argv[-1]))
    _set_dumpable(False)
    import gc
    gc.disable()
    before = dict(os.environ)
    _without_debugger()
    warm_up()
    global PREBUILT
    try:
        PREBUILT = Prebuilt()
    except Exception as exc:
        # Children start the ordinary way (launch_instance); a half-built app or shell
        # would leak into them, so none may remain.
        print(f"zygote: not prebuilding the kernel app: {exc!r}", file=sys.stderr, flush=True)
        _drop_singletons()
    # Variables the imports set (debugpy sets PYDEVD_USE_FRAME_EVAL): a launched kernel
    # has them too, so every child gets them on top of its own environment.
    IMPORT_ENV.update({k: v for k, v in os.environ.items() if before.get(k) != v})
    # Move everything imported so far out of the collector's reach: a child's first
    # collections would otherwise touch every object header and copy the whole shared
    # heap (copy-on-write), costing each fresh kernel tens of ms and its memory.
    gc.collect()
    gc.freeze()
    gc.enable()
    Zygote(sock).run()


if __name__ == "__main__":
    main()

"""``projecthub env build|install|status`` and serve's environment flags: what an admin sees,
including every way an install can fail without breaking the environment in use."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_project_env import make_wheel
from tests.server import PROJECTHUB, Server

# the daemon's own modules only: quick to build from pip's cache
SMALL = ["--package", "six"]


def env_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROJECTHUB, "env", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("envs") / "env"
    out = env_cli("build", "--env-dir", str(root), *SMALL)
    assert out.returncode == 0, out.stderr[-2000:]
    status = json.loads(out.stdout)
    assert status["generation"] == "gen-1" and status["missing_daemon_modules"] == []
    assert "six" in status["installed"] and "numpy" not in status["installed"]
    assert "[1/3]" in out.stderr and "[3/3]" in out.stderr   # progress, on stderr
    return root


def current(root: Path) -> str:
    return os.readlink(root / "current")


def test_install_local_wheel_makes_a_new_generation(small_env: Path, tmp_path: Path) -> None:
    name, data = make_wheel("phub_env_pkg", "2.0", "X = 2\n")
    (tmp_path / name).write_bytes(data)
    before = current(small_env)
    out = env_cli("install", "--env-dir", str(small_env), str(tmp_path / name))
    assert out.returncode == 0, out.stderr[-2000:]
    status = json.loads(out.stdout)
    assert status["installed"]["phub_env_pkg"] == "2.0"
    assert current(small_env) != before and status["generation"] == current(small_env)
    assert before in status["generations"]     # kept for projects still running on it
    new = small_env / current(small_env)
    # the copy's scripts point at the copy, not at the generation it came from
    pip = (new / "bin" / "pip").read_text()
    assert pip.startswith(f"#!{new}/bin/python")
    check = subprocess.run([str(new / "bin" / "python"), "-c", "import phub_env_pkg; print(phub_env_pkg.X)"],
                           capture_output=True, text=True)
    assert check.stdout == "2\n", check.stderr


def test_failing_install_keeps_the_environment_in_use(small_env: Path, tmp_path: Path) -> None:
    before = current(small_env)
    gens = sorted(p.name for p in small_env.iterdir() if p.name.startswith("gen-"))
    out = env_cli("install", "--env-dir", str(small_env), str(tmp_path / "missing-1.0-py3-none-any.whl"))
    assert out.returncode == 2
    error = json.loads(out.stdout)["error"]
    assert "pip install" in error and "missing-1.0-py3-none-any.whl" in error
    assert "Traceback" not in out.stderr + out.stdout
    assert current(small_env) == before
    assert sorted(p.name for p in small_env.iterdir() if p.name.startswith("gen-")) == gens


def test_interrupted_install_keeps_the_environment_in_use(small_env: Path, tmp_path: Path) -> None:
    name, data = make_wheel("phub_slow_pkg", "1.0", "Y = 1\n")
    (tmp_path / name).write_bytes(data)
    before = current(small_env)
    proc = subprocess.Popen([*PROJECTHUB, "env", "install", "--env-dir", str(small_env), str(tmp_path / name)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    known = {p.name for p in small_env.iterdir()}
    while time.monotonic() < deadline and not ({p.name for p in small_env.iterdir()} - known):
        time.sleep(0.01)   # killed once the new generation exists (mid-copy or mid-pip)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert current(small_env) == before
    python = small_env / before / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import zmq, ipykernel"]).returncode == 0
    # the next install sweeps the half-made generation and succeeds
    out = env_cli("install", "--env-dir", str(small_env), str(tmp_path / name))
    assert out.returncode == 0, out.stderr[-2000:]
    gens = [p for p in small_env.iterdir() if p.name.startswith("gen-")]
    assert all((g / "projecthub-env.json").exists() for g in gens), gens


def test_bad_input(small_env: Path, tmp_path: Path) -> None:
    out = env_cli("status", "--env-dir", str(tmp_path / "nothing-here"))
    assert out.returncode == 2 and "env build" in json.loads(out.stdout)["error"]
    out = env_cli("install", "--env-dir", str(small_env), " ")
    assert out.returncode == 2 and "not a package requirement" in json.loads(out.stdout)["error"]
    out = env_cli("install", "--env-dir", str(small_env), "--index-url=http://evil")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # a directory of other files is never turned into an environment
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    out = env_cli("build", "--env-dir", str(other))
    assert out.returncode == 2 and "neither a project environment" in json.loads(out.stdout)["error"]
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("flag,value,message,code", [
    # a missing directory is a bad argument (exit 2, found before anything starts)
    ("--project-rootfs", "/nonexistent/rootfs", "no such directory", 2),
    ("--project-rootfs", "/proc/self", "not an unpacked root filesystem", 1),
    ("--project-env", "/etc", "neither a project environment", 1),
])
def test_serve_refuses_an_unusable_environment(tmp_path: Path, flag: str, value: str, message: str,
                                                code: int) -> None:
    out = subprocess.run([*PROJECTHUB, "serve", "--data-dir", str(tmp_path / "d"), "--port", "0", flag, value],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == code
    assert message in out.stderr and (code == 2 or "refusing to start" in out.stderr), out.stderr
    assert "Traceback" not in out.stderr


def test_serve_refuses_an_environment_without_the_daemons_modules(tmp_path: Path) -> None:
    import venv
    prefix = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(prefix)
    out = subprocess.run([*PROJECTHUB, "serve", "--data-dir", str(tmp_path / "d"), "--port", "0",
                          "--project-env", str(prefix)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "needs zmq" in out.stderr and "pip install ipykernel" in out.stderr, out.stderr


@pytest.fixture
def rootfs(tmp_path: Path):
    """An unpacked-image stand-in: the host's /usr through a copy-on-write overlay (so the test
    can add packages without touching the host), its own /etc with a marker, merged-usr links."""
    if os.geteuid() != 0 or not shutil.which("bwrap"):
        from tests.conftest import require
        require("root and bwrap (rootfs test)", False)
    root, upper, work = tmp_path / "rootfs", tmp_path / "upper", tmp_path / "work"
    for d in (root / "usr", upper, work):
        d.mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/usr,upperdir={upper},workdir={work}", str(root / "usr")], check=True)
    try:
        subprocess.run(["cp", "-a", "/etc", str(root / "etc")], check=True)
        (root / "etc" / "projecthub-rootfs-marker").write_text("from the image\n")
        for name in ("bin", "lib", "lib64", "sbin"):
            if os.path.islink(f"/{name}"):
                os.symlink(os.readlink(f"/{name}"), root / name)
        site = root / "usr/local/lib/python3.11/dist-packages"
        # the image's python3 (Debian's) gets the daemon's modules, from pip's cache
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site),
                              "ipykernel>=6.29", "psutil>=5.9", "jupyter_client>=8.6", "pyzmq>=26"],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "usr")])


def test_serve_with_a_rootfs(tmp_path: Path, rootfs: Path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the host has no /usr/bin/python3 to stand in for the image's")
    server = Server(tmp_path / "d", extra_args=["--project-rootfs", str(rootfs), "--spare-projects", "0"])
    server.data_dir.mkdir()
    server.start(timeout=90)
    try:
        account = server.new_account("Rootfs")
        import cocalc_api
        hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
        project = cocalc_api.Project(api_key=account.api_key, host=server.url,
                                     project_id=hub.projects.create_project(title="rootfs"))
        out = project.system.exec(command="cat /etc/projecthub-rootfs-marker; command -v python3; "
                                          "python3 -c 'import sys; print(sys.version_info[:2])'", bash=True)
        assert out["stdout"].splitlines() == ["from the image", "/usr/bin/python3", "(3, 11)"], out
        assert project.system.jupyter_execute(input="import sys; sys.executable", kernel="python3") == [
            {"data": {"text/plain": "'/usr/bin/python3'"}}]
    finally:
        server.stop()
        server.cli("stop-all")


def test_serve_refuses_a_rootfs_without_the_daemons_modules(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    for name in ("usr", "etc"):
        (root / name).mkdir()
    (root / "usr" / "bin").mkdir()
    os.symlink("/nonexistent", root / "usr" / "bin" / "python3")
    out = subprocess.run([*PROJECTHUB, "serve", "--data-dir", str(tmp_path / "d"), "--port", "0",
                          "--project-rootfs", str(root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "refusing to start" in out.stderr, out.stderr
    assert "python" in out.stderr and "Traceback" not in out.stderr

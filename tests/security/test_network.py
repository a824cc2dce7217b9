"""Network egress (``network=true``): a project gets out through its own namespace, veth and
NAT (``host/sandbox/network.py``), and nothing else: not the hub's port, not any address of
the host, not other projects, not link-local metadata, no spoofed sources, no connections
into it.

Every packet goes to loopback or to a network namespace these tests create (``TestNet``: a
veth to the host with 198.18.0.0/15 benchmark addresses, and 169.254.77.77 routed into it
to stand for a link-local metadata service): nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest

from projecthub.host.sandbox import network
from tests.conftest import IN_CI, require
from tests.security.conftest import Proj, new_project, require_sandbox, wait_until
from tests.server import Account, Server

pytestmark = pytest.mark.timeout(300)

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
METADATA = "169.254.77.77"   # link-local like 169.254.169.254, without touching the real one

# In the project: connect to every (host, port) at once; "connected <greeting>" or the error.
PROBE = r"""
import json, socket, sys, threading
out = {}
def one(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(float(sys.argv[2]))
    try:
        s.connect((host, port))
        out[f"{host}:{port}"] = "connected " + s.recv(64).decode(errors="replace").strip()
    except OSError as e:
        out[f"{host}:{port}"] = f"{type(e).__name__}: {e}"
    finally:
        s.close()
threads = [threading.Thread(target=one, args=tuple(t)) for t in json.loads(sys.argv[1])]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""

# A TCP server that greets and reports each peer's address on stdout.
LISTENER = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(64)
print("ready", flush=True)
while True:
    conn, addr = srv.accept()
    print(addr[0], flush=True)
    try:
        conn.sendall(b"hello-" + sys.argv[2].encode() + b"\n")
    except OSError:
        pass
    conn.close()
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0 or not check, f"ip {' '.join(args)}: {r.stderr}"
    return r


class Listener:
    """``LISTENER`` in a process (optionally inside a netns); ``peers`` fills as it accepts."""

    def __init__(self, port: int, name: str, netns: str | None = None) -> None:
        argv = [sys.executable, "-u", "-c", LISTENER, str(port), name]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.port = port
        self.peers: list[str] = []
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.peers.append(line.strip())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


class TestNet:
    """A network namespace wired to the host by a veth: the outside world for these tests."""
    __test__ = False   # a helper, not a test class

    def __init__(self) -> None:
        pid = os.getpid()
        base = int(ipaddress.IPv4Address("198.18.0.0")) + 4 * (pid % 16384)
        self.name = f"phtest-net-{pid}"
        self.host_if = f"phtv{pid:x}"[:15]          # not "phn*": not a project's
        self.host_addr = str(ipaddress.IPv4Address(base + 1))
        self.addr = str(ipaddress.IPv4Address(base + 2))
        self.close()   # a crashed earlier run with this pid
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        for args in (["link", "set", "lo", "up"], ["addr", "add", f"{self.addr}/30", "dev", "eth0"],
                     ["link", "set", "eth0", "up"], ["addr", "add", f"{METADATA}/32", "dev", "lo"],
                     ["route", "add", "default", "via", self.host_addr]):
            _ip("-n", self.name, *args)
        # the host routes the stand-in metadata address into this namespace
        _ip("route", "add", f"{METADATA}/32", "via", self.addr)

    def run(self, code: str, *args: str) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", code, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def close(self) -> None:
        _ip("route", "del", f"{METADATA}/32", check=False)
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(p: Proj, targets: list[tuple[str, int]], timeout: float = 2.0) -> dict[str, str]:
    out = p.run(f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(targets))} {timeout}", timeout=30)
    assert out["exit_code"] == 0, out
    return json.loads(out["stdout"])


def names(server: Server, project_id: str) -> tuple[str, str]:
    """The project's netns and host-side veth names, as the server's Sandbox makes them."""
    tag = hashlib.sha256(str(server.data_dir.resolve()).encode()).hexdigest()[:12]
    nets = network.ProjectNetworks(tag)
    return nets.netns_name(project_id), nets.ifname(project_id)


def firewall_sources() -> list[list[str]]:
    r = subprocess.run(["nft", "-j", "list", "set", "inet", network.TABLE, "sources"],
                       capture_output=True, text=True, timeout=15)
    if r.returncode != 0:
        return []
    out = []
    for item in json.loads(r.stdout)["nftables"]:
        for elem in (item.get("set") or {}).get("elem", []):
            out.append(elem["concat"])
    return out


def gone(server: Server, project_id: str) -> bool:
    ns, ifname = names(server, project_id)
    return (not os.path.exists(f"/run/netns/{ns}") and not os.path.exists(f"/sys/class/net/{ifname}")
            and not any(e[0] == ifname for e in firewall_sources()))


def sandbox_address(p: Proj) -> str:
    out = p.run("ip -o -4 addr show dev eth0")
    assert out["exit_code"] == 0, out
    return out["stdout"].split()[3].split("/")[0]


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def forwarding() -> Iterator[None]:
    """IPv4 forwarding on (``.ci/run`` turns it on; locally the module does and restores it)
    and every tool network=true needs."""
    require_sandbox()
    before = IP_FORWARD.read_text().strip()
    if before != "1":
        if IN_CI:
            pytest.fail("net.ipv4.ip_forward is 0 under CI=true (.ci/run sets it to 1)")
        IP_FORWARD.write_text("1")
    try:
        why = network.prerequisites()
        require(f"network egress for projects: {why}", not why)
        yield
    finally:
        if before != "1":
            IP_FORWARD.write_text(before)


@pytest.fixture(scope="module")
def testnet(forwarding: None) -> Iterator[TestNet]:
    net = TestNet()
    yield net
    net.close()


@pytest.fixture(scope="module")
def admin(server: Server) -> Account:
    out = server.cli("account", "create", "--name", "Network Admin", "--admin")
    return Account(out["account_id"], out["api_key"])


@pytest.fixture(scope="module")
def netproj(server: Server, admin: Account, forwarding: None) -> Iterator[Proj]:
    p = new_project(server, admin, "networked", network=True)
    assert p.run("true")["exit_code"] == 0
    yield p
    p.stop()


@pytest.fixture
def listener(testnet: TestNet) -> Iterator[Listener]:
    lst = Listener(free_port(), "testns", testnet.name)
    yield lst
    lst.close()


# ---------------------------------------------------------------------------- tests

def test_network_off_has_only_loopback(proj_a: Proj) -> None:
    require_sandbox()
    out = proj_a.run("ip -o link | awk -F': ' '{print $2}'; echo ---; "
                     "python3 -c 'import socket; print(sorted(n for _, n in socket.if_nameindex()))'; "
                     "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert out["exit_code"] == 0, out
    links, _, rest = out["stdout"].partition("---\n")
    assert links.split() == ["lo"], out["stdout"]
    assert rest.split() == ["['lo']", "lo"], out["stdout"]


def test_network_on_reaches_a_test_namespace(netproj: Proj, testnet: TestNet, listener: Listener) -> None:
    out = netproj.run("python3 -c 'import socket; print(sorted(n for _, n in socket.if_nameindex()))'")
    assert out["stdout"].strip() == "['eth0', 'lo']", out
    result = probe(netproj, [(testnet.addr, listener.port)])
    assert result == {f"{testnet.addr}:{listener.port}": "connected hello-testns"}, result
    # masqueraded: the outside sees the host, never the project's pool address
    assert wait_until(lambda: listener.peers == [testnet.host_addr], 3), listener.peers


def test_network_on_cannot_reach_the_host(server: Server, netproj: Proj, testnet: TestNet) -> None:
    """The hub's port on 127.0.0.1 and a listener on 0.0.0.0, through every address of the
    host: loopback (the project's own), the veth's host end (its gateway), eth0's, the
    test veth's; IPv6 too."""
    host_listener = socket.socket()
    host_listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host_listener.bind(("0.0.0.0", 0))
    host_listener.listen(16)
    host_listener.settimeout(0.2)
    port = host_listener.getsockname()[1]
    accepted: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, addr = host_listener.accept()
                accepted.append(addr[0])
                conn.close()
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        addrs = {a.address.split("%")[0] for nic in psutil.net_if_addrs().values() for a in nic
                 if a.family in (socket.AF_INET, socket.AF_INET6)}
        addrs |= {"127.0.0.1", "::1", testnet.host_addr}
        gateway = netproj.run("ip route show default")["stdout"].split()[2]
        addrs.add(gateway)
        targets = [(a, p) for a in sorted(addrs) for p in (server.port, port)]
        result = probe(netproj, targets)
        assert len(result) == len(targets)
        reached = {k: v for k, v in result.items() if v.startswith("connected")}
        assert not reached, reached
        assert not accepted, f"the project reached the host listener as {accepted}"
        # control: the same listener answers from the host itself
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        assert wait_until(lambda: bool(accepted), 3)
    finally:
        stop.set()
        t.join(2)
        host_listener.close()
    # the hub answers on its port (the refusals above are the firewall, not a dead server)
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200


def test_link_local_metadata_is_unreachable(netproj: Proj, testnet: TestNet, listener: Listener) -> None:
    # control: the host routes the address into the test namespace, and the listener answers
    with socket.create_connection((METADATA, listener.port), timeout=3) as s:
        assert s.recv(64) == b"hello-testns\n"
    result = probe(netproj, [(METADATA, listener.port), (testnet.addr, listener.port)])
    assert result[f"{testnet.addr}:{listener.port}"] == "connected hello-testns", result
    assert not result[f"{METADATA}:{listener.port}"].startswith("connected"), result


def test_projects_cannot_reach_each_other(server: Server, admin: Account, netproj: Proj,
                                          testnet: TestNet) -> None:
    other = new_project(server, admin, "networked 2", network=True)
    port = free_port()
    job = other.v3("POST", "/exec", {"command": f"exec python3 -u -c {shlex.quote(LISTENER)} {port} other",
                                     "bash": True, "async": True, "timeout": 120})
    assert job.status_code == 200, job.text
    try:
        # control: the listener answers inside its own project
        assert wait_until(lambda: probe(other, [("127.0.0.1", port)])[f"127.0.0.1:{port}"]
                          == "connected hello-other", 10)
        other_addr, other_gw = sandbox_address(other), other.run("ip route show default")["stdout"].split()[2]
        result = probe(netproj, [(other_addr, port), (other_gw, port)])
        assert not any(v.startswith("connected") for v in result.values()), result
        # and nothing from outside may open a connection into a project either
        inbound = testnet.run(PROBE, json.dumps([[other_addr, port], [sandbox_address(netproj), port]]), "2")
        assert not any(v.startswith("connected") for v in json.loads(inbound).values()), inbound
    finally:
        other.v3("DELETE", f"/jobs/{job.json()['job_id']}")
        other.stop()
    assert wait_until(lambda: gone(server, other.project_id), 10)


def test_spoofed_sources_are_dropped(server: Server, netproj: Proj, testnet: TestNet,
                                     listener: Listener) -> None:
    """The project cannot forge a source (no CAP_NET_RAW, IP_FREEBIND does not send), and
    even a namespace taken over by a kernel bug gets nothing with a foreign source past the
    host: the firewall admits only the project's own address from its veth."""
    attempt = f"""
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW); print("raw: open")
except OSError as e:
    print("raw:", type(e).__name__)
s = socket.socket()
s.setsockopt(socket.IPPROTO_IP, 15, 1)   # IP_FREEBIND: bind an address that is not ours
s.settimeout(2)
try:
    s.bind(("{testnet.host_addr}", 0)); s.connect(("{testnet.addr}", {listener.port})); print("freebind: connected")
except OSError as e:
    print("freebind:", type(e).__name__)
"""
    out = netproj.run(f"python3 -c {shlex.quote(attempt)}")
    assert "raw: PermissionError" in out["stdout"] and "freebind: connected" not in out["stdout"], out
    # the namespace itself, as root (what a compromised netns could do): a second address
    netns, _ = names(server, netproj.project_id)
    own = sandbox_address(netproj)
    connect = (f"import socket, sys\ns = socket.socket(); s.settimeout(2); s.bind((sys.argv[1], 0))\n"
               f"try:\n    s.connect(('{testnet.addr}', {listener.port})); print('connected')\n"
               f"except OSError as e:\n    print(type(e).__name__)\n")
    forged = ["203.0.113.7", str(ipaddress.IPv4Address(own) + 4)]   # outside the pool; a neighbour's
    for addr in forged:
        _ip("-n", netns, "addr", "add", f"{addr}/32", "dev", "eth0")
    try:
        results = {}
        for src in [own, *forged]:
            r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", connect, src],
                               capture_output=True, text=True, timeout=30)
            results[src] = r.stdout.strip() or r.stderr.strip()
    finally:
        for addr in forged:
            _ip("-n", netns, "addr", "del", f"{addr}/32", "dev", "eth0", check=False)
    assert results[own] == "connected", results    # control: the own address gets through
    assert all(results[a] != "connected" for a in forged), results
    assert wait_until(lambda: len(listener.peers) == 1, 3)
    time.sleep(0.5)
    assert listener.peers == [testnet.host_addr], listener.peers


def test_resolv_conf_names_upstream_resolvers_only(netproj: Proj) -> None:
    out = netproj.run("grep '^nameserver' /etc/resolv.conf | awk '{print $2}'")
    servers = out["stdout"].split()
    assert servers == network.upstream_resolvers(), out
    assert not any(ipaddress.ip_address(s).is_loopback for s in servers), servers


def test_stop_and_daemon_loss_remove_the_network(server: Server, admin: Account, testnet: TestNet,
                                                 listener: Listener) -> None:
    p = new_project(server, admin, "networked, stopped", network=True)
    assert p.run("true")["exit_code"] == 0
    ns, ifname = names(server, p.project_id)
    assert os.path.exists(f"/run/netns/{ns}") and os.path.exists(f"/sys/class/net/{ifname}")
    assert any(e[0] == ifname for e in firewall_sources())
    p.stop()
    assert gone(server, p.project_id)
    # the next call starts it again, with a fresh network
    assert probe(p, [(testnet.addr, listener.port)])[f"{testnet.addr}:{listener.port}"].startswith("connected")
    # its daemon dies (SIGKILL from the host): the hub stops the sandbox and its network
    record = json.loads((server.data_dir / "run" / p.project_id / "host.json").read_text())
    os.kill(record["daemon_pid"], signal.SIGKILL)
    assert wait_until(lambda: gone(server, p.project_id), 15), (ns, ifname, firewall_sources())


def test_network_changes_apply_at_the_next_start(server: Server, admin: Account, forwarding: None) -> None:
    p = new_project(server, admin, "network toggled", network=True)
    try:
        assert "eth0" in p.run("ip -o link")["stdout"]
        r = p.v3("PUT", "/limits", {"network": False}, key=admin.api_key)
        assert r.status_code == 200 and r.json()["network"] is False, r.text
        assert p.v3("GET", "/limits").json()["network"] is False
        p.stop()
        assert gone(server, p.project_id)
        links = p.run("ip -o link | awk -F': ' '{print $2}'")["stdout"].split()
        assert links == ["lo"], links
    finally:
        p.stop()


def test_only_an_admin_may_turn_network_on(server: Server, admin: Account) -> None:
    owner = server.new_account("Network wisher")
    p = new_project(server, owner, "wants out")
    r = p.v3("PUT", "/limits", {"network": True})
    assert r.status_code == 403 and "only an admin may raise network" in r.text, r.text
    assert p.v3("GET", "/limits").json()["network"] is False
    r = p.v3("PUT", "/limits", {"network": "yes"})
    assert r.status_code == 400 and "network: expected true or false" in r.text, r.text
    # an admin's own project: raising is an admin's right
    mine = new_project(server, admin, "admin's")
    r = mine.v3("PUT", "/limits", {"network": True})
    if network.prerequisites():
        # a host that cannot give it says why (409), and nothing is stored
        assert r.status_code == 409 and "network: not available on this host" in r.text, r.text
        assert mine.v3("GET", "/limits").json()["network"] is False
        return
    assert r.status_code == 200 and r.json()["network"] is True, r.text
    assert mine.v3("GET", "/limits").json()["network"] is True
    # the operator turns it on for the owner's project; the owner may turn it off again (a
    # tightening), never back on
    out = server.cli("project", "limits", "--project", p.project_id, "--set", "network=true")
    assert out["limits"]["network"] is True
    assert p.v3("GET", "/limits").json()["network"] is True
    assert p.v3("PUT", "/limits", {"network": False}).status_code == 200
    assert p.v3("PUT", "/limits", {"network": True}).status_code == 403
    assert p.v3("GET", "/limits").json()["network"] is False


def test_a_host_that_cannot_give_network_refuses_it(tmp_path: Path) -> None:
    """A bad pool (public addresses) stands in for a host without egress: serve refuses a
    default of network=true with the reason, before listening."""
    from tests.server import PROJECTHUB, TEST_ENV
    env = {**TEST_ENV, **os.environ, network.POOL_ENV: "8.8.8.0/24"}
    r = subprocess.run([*PROJECTHUB, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path),
                        "--default-limits", json.dumps({"network": True})],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "network: not available on this host" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_the_host_start_sweeps_leftover_networks(forwarding: None) -> None:
    """A hub that died with a networked project's sandbox: the next one (its Sandbox on the
    same data dir) restores a flushed firewall and removes netns, veth and firewall entry of
    projects that no longer run when it sweeps at start."""
    from projecthub.host.sandbox import Sandbox, probe
    from tests.unit.test_sandbox_support import SandboxEnv
    env = SandboxEnv()
    try:
        att = env.prepare("leftover", network=True).network
        assert att is not None and os.path.exists(att.netns_path)
        # a firewall reload flushed our rules under it: doctor says so, a hub start repairs
        # (under the machine's network lock: a concurrent setup elsewhere would repair it)
        with network.machine_lock():
            subprocess.run(["nft", "flush", "chain", "inet", network.TABLE, "input"], check=True)
            layer = probe(env.data_dir).layer("network-egress")
        assert layer is not None and not layer.enforced and "no firewall" in layer.detail, layer
        again = Sandbox(env.sandbox.config)
        assert network.firewall_hole() == ""
        assert again.report.enforced("network-egress")
        again.kill_strays(set())
        assert not os.path.exists(att.netns_path)
        assert not os.path.exists(f"/sys/class/net/{att.ifname}")
        assert not any(e[0] == att.ifname for e in firewall_sources())
    finally:
        env.close()


def test_network_that_cannot_be_given_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad pool stands in for a host without egress: the limit check (PUT …/limits: 409)
    and a start both name the cause, and a refused start leaves no namespace behind."""
    require_sandbox()
    from projecthub.host.sandbox import ProjectLimits
    from tests.unit.test_sandbox_support import SandboxEnv
    monkeypatch.setenv(network.POOL_ENV, "8.8.8.0/24")
    env = SandboxEnv()
    try:
        with pytest.raises(ValueError, match=r"network: not available on this host: .*private IPv4"):
            env.sandbox.check_limits("refused", ProjectLimits(network=True))
        with pytest.raises(ValueError, match="network: not available on this host"):
            env.prepare("refused", network=True)
        assert env.sandbox.network.attached() == []
        env.sandbox.check_limits("refused", ProjectLimits(network=False))   # off: always fine
    finally:
        env.close()

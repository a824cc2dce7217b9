"""Network egress for projects with ``network=true``: a namespace of their own, a veth pair,
NAT, and an nftables firewall that keeps the host and the other projects out of reach.

A project with ``network=false`` gets bwrap's ``--unshare-net`` (loopback only).  A project
with ``network=true`` never shares the host's network namespace (its loopback is where the
hub, databases and other local services listen).  Instead, per project, root mode:

* a named netns ``/run/netns/projecthub-<tag>-<project id>`` (``tag``: the data dir's
  hash, so two servers on one machine never touch each other's) that the sandbox is
  started in (``nsenter --net=... bwrap ...`` keeps the pid: nsenter execs bwrap);
* a veth pair: ``phn<12 hex>`` on the host, ``eth0`` in the netns, a /30 out of a pool
  (``$PROJECTHUB_NETWORK_POOL``, default ``10.213.0.0/16``): host end ``.1``, project
  ``.2``, default route via the host end; no IPv6 addresses (``addrgenmode none``);
* one nftables table ``inet projecthub`` shared by every server on the machine, written
  in one atomic transaction at each setup (rules for ``phn*`` interfaces only):

  - prerouting: a packet from a project must carry that project's own address
    (``iifname . ip saddr`` in the set ``sources``) and be IPv4; anything else is dropped
    (spoofing; the kernel's ``rp_filter`` is set strict on the host end as well);
  - input: nothing from a project reaches the host itself -- no address of it (127.0.0.1
    by a route trick, the host end of the veth, eth0's address, a test veth's ...), so no
    hub port, database or other service, whatever address it listens on;
  - forward: no project-to-project traffic; no 0/8, 127/8, link-local 169.254/16 (cloud
    metadata), multicast or reserved destinations; nothing *into* a project that is not
    a reply (``ct state``); at most ``PROJECT_CONNECTIONS`` tracked flows per project
    (their entries sit in the host's own connection-tracking table, which the host's
    connections share: a full table drops every new connection, the hub's too);
  - postrouting: masquerade what leaves the pool towards any other interface.

* DNS: the sandbox's ``/etc/resolv.conf`` names the host's *upstream* resolvers
  (``resolv_conf``); a 127.0.0.x stub resolver is the host's own loopback, unreachable.

Needs root, ``ip`` (iproute2), ``nft`` (nftables), ``nsenter`` (util-linux) and
``net.ipv4.ip_forward=1``: the hub does not turn the machine into a router on its own
(the admin does, ``sysctl -w net.ipv4.ip_forward=1``; ``.ci/run`` does for the tests).
Without them ``network=true`` is refused with the reason (``support``; ``doctor`` shows it).
State lives in the kernel only: ``teardown`` at every stop, ``sweep`` at host start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("projecthub.host.network")

POOL_ENV = "PROJECTHUB_NETWORK_POOL"
DEFAULT_POOL = "10.213.0.0/16"
IF_PREFIX = "phn"                   # host ends of project veths: the firewall matches "phn*"
NETNS_PREFIX = "projecthub-"
NETNS_DIR = Path("/run/netns")
TABLE = "projecthub"
SANDBOX_IF = "eth0"
# /run first: only root creates files there.  /run/lock is world-writable (1777): a local
# user could create the lock file first and hold its flock, hanging every networked start;
# a lock file someone else owns is never used.
LOCK_PATHS = ("/run/projecthub-network.lock", "/run/lock/projecthub-network.lock")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CMD_TIMEOUT_S = 15.0
# Destinations no project may reach even through the uplink: "this" network, loopback,
# link-local (169.254.169.254 cloud metadata), multicast, reserved and broadcast.
BLOCKED_DESTINATIONS = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
# Flows one project may have tracked at once (nftables ``ct count`` per project veth, whose
# name is the project's own: a reused address inherits nothing).  A TCP connection stops
# counting once closed, a UDP flow when its entry expires (30-120 s).
# Without it a project filled the host's table (nf_conntrack_max, often 65536-262144) at
# ~45,000 new flows a second, or with established TCP connections that stay for days.
PROJECT_CONNECTIONS = 4096


class NetworkUnavailable(RuntimeError):
    """``network=true`` cannot be given on this host; the message says why."""


def default_pool() -> str:
    return os.environ.get(POOL_ENV, "").strip() or DEFAULT_POOL


def parse_pool(value: str) -> ipaddress.IPv4Network:
    """The address pool: a private IPv4 network with room for at least two /30s."""
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{POOL_ENV}: expected a private IPv4 network like {DEFAULT_POOL}, "
                         f"got {value!r} ({exc})") from None
    if net.prefixlen > 29 or not net.is_private or net.overlaps(ipaddress.IPv4Network("127.0.0.0/8")):
        raise ValueError(f"{POOL_ENV}: must be a private IPv4 network of /29 or larger "
                         f"(e.g. {DEFAULT_POOL}), got {value}")
    return net


def tool(name: str) -> str | None:
    return shutil.which(name, path=_TOOL_PATH)


def prerequisites(pool: str | None = None) -> str:
    """Why ``network=true`` cannot be given here ("" if it can): root, the tools, IPv4
    forwarding, a pool that no host network uses.  Live (``ip_forward`` may change)."""
    if os.geteuid() != 0:
        return f"the server is not root (uid {os.geteuid()}): no veth, NAT or firewall"
    try:
        net = parse_pool(pool or default_pool())
    except ValueError as exc:
        return str(exc)
    missing = [f"{name} ({pkg})" for name, pkg in (("ip", "iproute2"), ("nft", "nftables"),
                                                   ("nsenter", "util-linux")) if not tool(name)]
    if missing:
        return "not installed: " + ", ".join(missing)
    try:
        forward = IP_FORWARD.read_text().strip()
    except OSError as exc:
        return f"cannot read {IP_FORWARD}: {exc}"
    if forward != "1":
        return ("net.ipv4.ip_forward is 0: the host does not forward packets "
                "(sysctl -w net.ipv4.ip_forward=1 to allow network=true)")
    return _pool_clash(net)


def support(pool: str | None = None) -> tuple[bool, str]:
    """``prerequisites`` plus a dry run of the firewall (``nft -c``: the kernel has nf_tables
    with NAT), and what a networked project gets or why it cannot: for ``doctor``."""
    why = prerequisites(pool)
    if why:
        return False, why
    net = parse_pool(pool or default_pool())
    try:
        r = _run([tool("nft") or "nft", "-c", "-f", "-"], check=False, stdin=_ruleset(net))
        others = _foreign_forward_drop()
    except NetworkUnavailable as exc:
        return False, str(exc)
    if r.returncode != 0:
        return False, f"nftables refuses the firewall (kernel without nf_tables NAT?): {_short(r.stderr)}"
    detail = (f"network=true: own netns, veth from {net} + NAT, nftables drops traffic to the "
              f"host and other projects, at most {PROJECT_CONNECTIONS} tracked flows each; "
              f"DNS: {', '.join(upstream_resolvers()) or 'none usable'}")
    if others:
        detail += f"; note: {others}"
    return True, detail


def firewall_hole() -> str:
    """Project veths up without the firewall (someone flushed the ruleset, e.g. a firewall
    reload): those projects reach the host.  "" when there is no such hole."""
    veths = [n for n in _list_dir("/sys/class/net") if n.startswith(IF_PREFIX)]
    if not veths or os.geteuid() != 0:
        return ""
    if not tool("nft"):
        return f"{len(veths)} project veths but nft is not installed: their firewall is unknown"
    try:
        r = _run([tool("nft") or "nft", "list", "table", "inet", TABLE], check=False)
    except NetworkUnavailable as exc:
        return f"{len(veths)} project veths, and their firewall cannot be read: {exc}"
    # one telltale rule per chain (``_ruleset``)
    expected = (f'iifname "{IF_PREFIX}*" iifname . ip saddr != @sources drop',
                f'iifname "{IF_PREFIX}*" drop', f'iifname "{IF_PREFIX}*" oifname "{IF_PREFIX}*" drop',
                f"add @flows {{ iifname ct count over {PROJECT_CONNECTIONS} }}", "masquerade")
    if r.returncode == 0 and all(rule in r.stdout for rule in expected):
        return ""
    return (f"{len(veths)} project veths but no firewall (table inet {TABLE} flushed?): those "
            "projects can reach the host; the hub's next start, or theirs, restores it")


def repair_firewall(pool: str | None = None) -> None:
    """Rewrite the firewall if project veths run without it (a hub starts with this: its
    adopted projects kept running while no hub watched)."""
    if firewall_hole():
        with machine_lock():
            log.warning("network: project veths without the firewall (flushed?): restoring it")
            _nft(_ruleset(parse_pool(pool or default_pool())))


@dataclass(frozen=True)
class Attachment:
    """A networked project's plumbing, as the sandbox start needs it."""
    netns: str
    ifname: str
    host_address: str
    sandbox_address: str
    resolv_conf: bytes

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def enter_argv(self) -> list[str]:
        """Prefix for the sandbox's argv: join the netns, then exec the rest (same pid)."""
        return [tool("nsenter") or "nsenter", f"--net={self.netns_path}", "--"]


class ProjectNetworks:
    """The veths and namespaces of one data dir's projects (``tag`` names them)."""

    def __init__(self, tag: str, pool: str | None = None) -> None:
        self.tag = tag
        self.pool_text = pool or default_pool()

    @property
    def pool(self) -> ipaddress.IPv4Network:
        return parse_pool(self.pool_text)

    def netns_name(self, project_id: str) -> str:
        return f"{NETNS_PREFIX}{self.tag}-{project_id}"

    def ifname(self, project_id: str) -> str:
        # IFNAMSIZ: 15 characters; a hash keeps names unique across data dirs
        return IF_PREFIX + hashlib.sha256(f"{self.tag}:{project_id}".encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ lifecycle

    def setup(self, project_id: str) -> Attachment:
        """A fresh netns with its veth, address, route and firewall entry; whatever an
        earlier start left is removed first.  NetworkUnavailable if it cannot be given."""
        why = prerequisites(self.pool_text)
        if why:
            raise NetworkUnavailable(f"network: not available on this host: {why}")
        self.teardown(project_id)
        name, ifname, pool = self.netns_name(project_id), self.ifname(project_id), self.pool
        try:
            # one setup at a time on this machine: addresses are drawn from the kernel's
            # interfaces, and the shared firewall is rewritten
            with machine_lock():
                subnet = _free_subnet(pool, ifname)
                host_addr, sandbox_addr = subnet.network_address + 1, subnet.network_address + 2
                # the peer is born inside the netns: it never exists on the host side
                _ip(["-batch", "-"], stdin="\n".join((
                    f"netns add {name}",
                    f"link add {ifname} type veth peer name {SANDBOX_IF} netns {name}",
                    f"link set {ifname} addrgenmode none",
                    f"addr add {host_addr}/{subnet.prefixlen} dev {ifname}")) + "\n")
                # strict reverse-path filter on the host end (the firewall checks sources too)
                _write_sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/rp_filter", "1")
                _write_sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/send_redirects", "0")
                _ip(["-n", name, "-batch", "-"], stdin="\n".join((
                    "link set lo up",
                    f"link set {SANDBOX_IF} addrgenmode none",
                    f"addr add {sandbox_addr}/{subnet.prefixlen} dev {SANDBOX_IF}",
                    f"link set {SANDBOX_IF} up",
                    f"route add default via {host_addr}")) + "\n")
                # until its source is in the set, everything from the veth is dropped: the
                # firewall goes in before the host end comes up
                _nft(_ruleset(pool) + f"add element inet {TABLE} sources {{ \"{ifname}\" . {sandbox_addr} }}\n")
                _ip(["link", "set", ifname, "up"])
        except BaseException:
            with contextlib.suppress(Exception):
                self.teardown(project_id)
            raise
        return Attachment(name, ifname, str(host_addr), str(sandbox_addr), resolv_conf())

    def teardown(self, project_id: str) -> None:
        """Remove the project's firewall entry, veth and netns (each only if present: this
        runs at every stop).  Processes still inside lose their interface at once."""
        name, ifname = self.netns_name(project_id), self.ifname(project_id)
        has_link = os.path.exists(f"/sys/class/net/{ifname}")
        has_ns = (NETNS_DIR / name).exists()
        if not (has_link or has_ns):
            return
        if tool("nft"):
            _drop_sources(lambda element_if: element_if == ifname)
        if has_link:
            _ip(["link", "del", ifname], check=False)
        if has_ns:
            _ip(["netns", "del", name], check=False)

    def attached(self) -> list[str]:
        """Project ids of this data dir that have a netns now."""
        prefix = f"{NETNS_PREFIX}{self.tag}-"
        return sorted(n[len(prefix):] for n in _list_dir(str(NETNS_DIR)) if n.startswith(prefix))

    def sweep(self, keep: set[str]) -> list[str]:
        """Tear down the networks of this data dir's projects not in ``keep`` (a crash or a
        lost daemon left them), and firewall entries whose interface is gone (any server's:
        a missing interface is no one's)."""
        removed = []
        for project_id in self.attached():
            if project_id not in keep:
                with contextlib.suppress(Exception):
                    self.teardown(project_id)
                    removed.append(project_id)
        if os.geteuid() == 0 and tool("nft"):
            with contextlib.suppress(Exception):
                _drop_sources(lambda element_if: not os.path.exists(f"/sys/class/net/{element_if}"))
        if removed:
            log.info("removed the networks of %d stopped projects: %s", len(removed), ", ".join(removed))
        return removed


# ---------------------------------------------------------------------- DNS

def upstream_resolvers() -> list[str]:
    """The host's IPv4 name servers a project can reach: not loopback (a stub resolver such
    as systemd-resolved's 127.0.0.53 is the host's own), not link-local (blocked), not an
    address of the host (the firewall drops that).  systemd-resolved's upstream list is
    used when /etc/resolv.conf names only its stub."""
    local = _host_addresses()
    for path in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        servers = []
        for line in _read(path).splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    addr = ipaddress.IPv4Address(parts[1])
                except ValueError:
                    continue   # IPv6: projects have no IPv6 route
                if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified
                        or str(addr) in local):
                    servers.append(str(addr))
        if servers:
            return servers[:3]   # glibc reads at most three
    return []


def resolv_conf() -> bytes:
    lines = ["# written by projecthub: the host's upstream resolvers (a loopback stub "
             "resolver is the host's own, out of reach)"]
    for line in _read("/etc/resolv.conf").splitlines():
        if line.split()[:1] in (["search"], ["domain"], ["options"]):
            lines.append(line.strip())
    servers = upstream_resolvers()
    lines += [f"nameserver {s}" for s in servers] or ["# no upstream resolver usable: no DNS"]
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------- internals

def _ruleset(pool: ipaddress.IPv4Network) -> str:
    """The whole firewall as one nft transaction: idempotent (chains flushed and rewritten,
    set elements kept), so every setup also repairs a table someone edited."""
    t = f"inet {TABLE}"
    blocked = ", ".join(BLOCKED_DESTINATIONS)
    return f"""add table {t}
add set {t} sources {{ type ifname . ipv4_addr; }}
add set {t} pools {{ type ipv4_addr; flags interval; auto-merge; }}
add set {t} flows {{ type ifname; size 65535; flags dynamic; }}
add chain {t} prerouting {{ type filter hook prerouting priority raw; policy accept; }}
add chain {t} input {{ type filter hook input priority filter - 10; policy accept; }}
add chain {t} forward {{ type filter hook forward priority filter - 10; policy accept; }}
add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain {t} prerouting
flush chain {t} input
flush chain {t} forward
flush chain {t} postrouting
add rule {t} prerouting iifname "{IF_PREFIX}*" meta nfproto != ipv4 drop
add rule {t} prerouting iifname "{IF_PREFIX}*" iifname . ip saddr != @sources drop
add rule {t} input iifname "{IF_PREFIX}*" drop
add rule {t} forward iifname "{IF_PREFIX}*" oifname "{IF_PREFIX}*" drop
add rule {t} forward iifname "{IF_PREFIX}*" ip daddr {{ {blocked} }} drop
add rule {t} forward iifname "{IF_PREFIX}*" ct state new add @flows {{ iifname ct count over {PROJECT_CONNECTIONS} }} reject with icmpx type admin-prohibited
add rule {t} forward oifname "{IF_PREFIX}*" ct state != {{ established, related }} drop
add rule {t} postrouting ip saddr @pools oifname != "{IF_PREFIX}*" masquerade
add element {t} pools {{ {pool} }}
"""


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Address allocation is machine-wide (every server on this host draws from the
    kernel's interfaces): one flock for all of them."""
    fd = None
    for path in LOCK_PATHS:
        try:
            cand = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        if os.fstat(cand).st_uid == os.geteuid():
            fd = cand
            break
        os.close(cand)   # made by someone else, who could hold it forever
    if fd is None:
        raise NetworkUnavailable("network: cannot open a lock file of its own in /run or /run/lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _free_subnet(pool: ipaddress.IPv4Network, ifname: str) -> ipaddress.IPv4Network:
    """A /30 of ``pool`` no interface uses (call under ``machine_lock``).  Probing starts
    at a hash of the interface name, so a restarted project usually gets its old one."""
    used: set[ipaddress.IPv4Network] = set()
    for _, addr in _interface_addresses():
        if addr.ip in pool:
            used.add(ipaddress.IPv4Network((int(addr.ip) & ~3, 30)))
    count = pool.num_addresses // 4
    start = int(hashlib.sha256(ifname.encode()).hexdigest()[:8], 16) % count
    for i in range(count):
        subnet = ipaddress.IPv4Network((int(pool.network_address) + 4 * ((start + i) % count), 30))
        if subnet not in used:
            return subnet
    raise NetworkUnavailable(f"network: the address pool {pool} is exhausted "
                             f"({count} networked projects run on this host)")


def _interface_addresses() -> list[tuple[str, ipaddress.IPv4Interface]]:
    r = _ip(["-o", "-4", "addr", "show"])
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet":
            with contextlib.suppress(ValueError):
                out.append((parts[1].split("@")[0], ipaddress.IPv4Interface(parts[3])))
    return out


def _host_addresses() -> set[str]:
    if os.geteuid() != 0 or not tool("ip"):
        return set()
    with contextlib.suppress(Exception):
        return {str(a.ip) for _, a in _interface_addresses()}
    return set()


def _pool_clash(pool: ipaddress.IPv4Network) -> str:
    """A host interface other than a project veth with an address in the pool: projects
    would shadow (or reach) that network."""
    with contextlib.suppress(Exception):
        for ifname, addr in _interface_addresses():
            if not ifname.startswith(IF_PREFIX) and addr.network.overlaps(pool):
                return (f"the address pool {pool} overlaps {ifname}'s {addr} "
                        f"(set {POOL_ENV} to a free private network)")
    return ""


def _foreign_forward_drop() -> str:
    """Another table whose forward chain drops by default (Docker's, a host firewall):
    its drop wins over our accept, and projects would get no egress."""
    r = _run([tool("nft") or "nft", "-j", "list", "chains"], check=False)
    if r.returncode != 0:
        return ""
    with contextlib.suppress(ValueError, AttributeError):
        for item in json.loads(r.stdout).get("nftables", []):
            chain = item.get("chain") or {}
            if chain.get("hook") == "forward" and chain.get("policy") == "drop" and chain.get("table") != TABLE:
                return (f"table {chain.get('family')} {chain.get('table')} drops forwarded packets by "
                        f"default: allow interfaces {IF_PREFIX}* there or projects get no egress")
    return ""


def _drop_sources(match: Callable[[str], bool]) -> None:
    """Delete the ``sources`` elements whose interface name ``match`` accepts."""
    r = _run([tool("nft") or "nft", "-j", "list", "set", "inet", TABLE, "sources"], check=False)
    if r.returncode != 0:
        return   # no table yet: nothing to remove
    elements = []
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        for item in json.loads(r.stdout).get("nftables", []):
            for elem in (item.get("set") or {}).get("elem", []):
                concat = elem.get("concat") if isinstance(elem, dict) else None
                if isinstance(concat, list) and len(concat) == 2 and match(concat[0]):
                    elements.append(f"\"{concat[0]}\" . {ipaddress.IPv4Address(concat[1])}")
    if elements:
        _nft(f"delete element inet {TABLE} sources {{ {', '.join(elements)} }}\n", check=False)


def _list_dir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read(64 * 1024)
    except OSError:
        return ""


def _ip(args: list[str], *, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return _run([tool("ip") or "ip", *args], check=check, stdin=stdin)


def _nft(script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([tool("nft") or "nft", "-f", "-"], check=check, stdin=script)


def _run(argv: list[str], *, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkUnavailable(f"network: {os.path.basename(argv[0])} failed: {exc}") from None
    if check and r.returncode != 0:
        raise NetworkUnavailable(f"network: {os.path.basename(argv[0])} {' '.join(argv[1:3])} failed: "
                                 f"{_short(r.stderr)}")
    return r


def _short(text: str) -> str:
    return " ".join(text.split())[:300]

"""Build, find, use and tear down a lab of real network namespaces.

State lives in ``/run/egressgw-lab/<name>.json`` so ``status`` and ``down`` find a lab
from another process. ``down`` works from the name alone (namespace names derive from
it), so a lab is always removable even when its state file is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from egressgw.config import NodePortRange
from egressgw.datapath.kernel import KernelDatapath
from egressgw.datapath.kernel.netns import NETNS_DIR, netns_argv
from egressgw.errors import DatapathError, InputError
from egressgw.lab.load import PROGRESS_INTERVAL, LoadResult, check_load_flags
from egressgw.lab.topology import (
    EGRESS_NET4,
    EGRESS_NET6,
    POD_NET4,
    POD_NET6,
    PREFIX,
    SERVER_NET4,
    SERVER_NET6,
    LabSpec,
    Topology,
    check_lab_name,
)
from egressgw.net import Endpoint

STATE_DIR = Path("/run/egressgw-lab")
GW4, GW6 = "192.0.2.1", "2001:db8:1::1"  # the gateway's address towards the pods
EXT4, EXT6 = "198.51.100.1", "2001:db8:100::1"  # ... and towards the servers
SERVER_READY_TIMEOUT = 10.0


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=60, check=False)
    except FileNotFoundError as exc:
        raise DatapathError(f"{exc.filename}: not installed") from None
    if check and done.returncode != 0:
        raise DatapathError(f"{' '.join(argv[:6])}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def _ip_batch(netns: str | None, commands: Sequence[str]) -> None:
    """Several ``ip`` commands in one process (``ip -batch``), optionally in a netns."""
    argv = ["ip", "-batch", "-"] if netns is None else ["ip", "-n", netns, "-batch", "-"]
    _run(argv, stdin="\n".join(commands) + "\n")


def _sysctl(netns: str, settings: dict[str, str]) -> None:
    _run(netns_argv(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]))


def _netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def _start(argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start a load process (it dies with this one: see egressgw.lab.load)."""
    try:
        return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
    except FileNotFoundError as exc:
        raise DatapathError(f"{exc.filename}: not installed") from None


def _stop(process: subprocess.Popen[str]) -> None:
    """Stop a load process (SIGTERM, then SIGKILL) and reap it; nothing if it ended."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(slots=True)
class LoadRun:
    """Connections opened in the background and held until ``stop()``."""

    process: subprocess.Popen[str]
    result: LoadResult

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Lab:
    """One built lab: three namespaces, a server process, and the state file."""

    def __init__(self, topology: Topology, *, state_dir: Path = STATE_DIR) -> None:
        self.topology = topology
        self.state_dir = state_dir

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    def up(cls, spec: LabSpec, *, state_dir: Path = STATE_DIR) -> Lab:
        """Build the lab; on any failure remove what was built and re-raise."""
        topology = Topology.of(spec)
        if any(_netns_exists(ns) for ns in topology.namespaces):
            raise InputError(f"lab {spec.name!r} already exists (egressgw lab down --name "
                             f"{spec.name})", field="--name")
        lab = cls(topology, state_dir=state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        lab._save()
        try:
            lab._build()
            lab.topology = lab.topology.with_server(lab._start_server())
            lab._save()
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def find(cls, name: str, *, state_dir: Path = STATE_DIR) -> Lab:
        path = state_dir / f"{check_lab_name(name)}.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise InputError(f"no lab named {name!r} (egressgw lab up --name {name})",
                             field="--name") from None
        return cls(Topology.from_json(text, source=str(path)), state_dir=state_dir)

    @staticmethod
    def names(*, state_dir: Path = STATE_DIR) -> list[str]:
        return sorted(p.stem for p in state_dir.glob("*.json")) if state_dir.exists() else []

    def down(self) -> None:
        """Remove everything: processes in the namespaces, the namespaces, the state file."""
        remove_lab(self.topology.name, state_dir=self.state_dir)

    def _save(self) -> None:
        path = self.state_dir / f"{self.topology.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.topology.to_json())
        tmp.replace(path)

    def _build(self) -> None:
        t = self.topology
        _ip_batch(None, [f"netns add {ns}" for ns in t.namespaces])
        # No duplicate address detection: addresses (link-local ones too, which neighbour
        # discovery needs) are usable at once instead of after a second or two.
        for ns in t.namespaces:
            _sysctl(ns, {"net.ipv6.conf.all.accept_dad": "0",
                         "net.ipv6.conf.default.accept_dad": "0"})
        _sysctl(t.gateway_ns, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
        _sysctl(t.client_ns, {"net.ipv4.ping_group_range": "0 2147483647",
                              "net.core.somaxconn": "4096"})
        _sysctl(t.server_ns, {"net.core.somaxconn": "4096"})
        gw = [
            f"link add pods0 type veth peer name eth0 netns {t.client_ns}",
            f"link add ext0 type veth peer name eth0 netns {t.server_ns}",
            f"addr add {GW4}/{POD_NET4.prefixlen} dev pods0",
            f"addr add {GW6}/{POD_NET6.prefixlen} dev pods0 nodad",
            f"addr add {EXT4}/24 dev ext0",
            f"addr add {EXT6}/64 dev ext0 nodad",
            *(f"addr add {ip}/{EGRESS_NET4.prefixlen} dev ext0" for ip in t.egress4),
            *(f"addr add {ip}/{EGRESS_NET6.prefixlen} dev ext0 nodad" for ip in t.egress6),
            "link set lo up",
            "link set pods0 up",
            "link set ext0 up",
        ]
        _ip_batch(t.gateway_ns, gw)
        client = [
            *(f"addr add {ip}/{POD_NET4.prefixlen} dev eth0" for ip in t.pods4),
            *(f"addr add {ip}/{POD_NET6.prefixlen} dev eth0 nodad" for ip in t.pods6),
            "link set lo up",
            "link set eth0 up",
            f"route add default via {GW4}",
            f"route add default via {GW6}",
        ]
        _ip_batch(t.client_ns, client)
        server = [
            *(f"addr add {ip}/24 dev eth0" for ip in t.servers4),
            *(f"addr add {ip}/64 dev eth0 nodad" for ip in t.servers6),
            "link set lo up",
            "link set eth0 up",
            # Replies go back through the gateway: to egress IPs, and to pods directly
            # when a destination is excluded from masquerading.
            f"route add {EGRESS_NET4} via {EXT4}",
            f"route add {POD_NET4} via {EXT4}",
            f"route add {EGRESS_NET6} via {EXT6}",
            f"route add {POD_NET6} via {EXT6}",
        ]
        _ip_batch(t.server_ns, server)

    def _start_server(self) -> int:
        t = self.topology
        argv = netns_argv(t.server_ns, [
            sys.executable, "-m", "egressgw.lab.server",
            "--address", ",".join([*t.servers4, *t.servers6]),
            "--tcp", ",".join(map(str, t.tcp_ports)), "--udp", ",".join(map(str, t.udp_ports)),
        ])
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        assert process.stdout is not None
        line = process.stdout.readline()
        process.stdout.close()
        if line.strip() != "ready":
            process.kill()
            process.wait()
            raise DatapathError(f"lab server in {t.server_ns} did not start")
        return process.pid

    # -- use ---------------------------------------------------------------------------

    def datapath(
        self, node_port_range: NodePortRange, *, table: str = "egressgw"
    ) -> KernelDatapath:
        """The kernel datapath of the lab's gateway node."""
        return KernelDatapath(node_port_range, table=table, netns=self.topology.gateway_ns)

    def _load_argv(self, to: str, connections: int, *, proto: str, hold: float,
                   pod: str | None, timeout: float, parallel: int,
                   progress: float) -> list[str]:
        check_load_flags(connections, parallel, timeout, hold)
        try:
            endpoint = Endpoint.parse(to)
        except ValueError as exc:
            raise InputError(str(exc), field="--to") from None
        # Traffic stays inside the lab: only its server networks are valid targets.
        if not any(endpoint.ip in net for net in (SERVER_NET4, SERVER_NET6)):
            raise InputError(f"{to}: not a lab server address ({SERVER_NET4} or {SERVER_NET6})",
                             field="--to")
        if proto != "icmp" and endpoint.port == 0:
            raise InputError(f"{to}: {proto} needs a port", field="--to")
        t = self.topology
        pods = t.pods4 if endpoint.ip.version == 4 else t.pods6
        if pod is not None and pod not in pods:
            raise InputError(f"{pod}: not a lab pod address of the family of {to}",
                             field="--from")
        source = pod or pods[0]
        return netns_argv(t.client_ns, [
            sys.executable, "-m", "egressgw.lab.load", "--to", to, "--from", source,
            "--connections", str(connections), "--proto", proto, "--hold", str(hold),
            "--timeout", str(timeout), "--parallel", str(parallel), "--progress", str(progress),
            "--parent", str(os.getpid()),
        ])

    def load(self, to: str, connections: int, *, proto: str = "tcp", hold: float = 0.0,
             pod: str | None = None, timeout: float = 2.0, parallel: int = 256,
             on_result: Callable[[LoadResult], None] | None = None,
             on_progress: Callable[[dict[str, float]], None] | None = None,
             progress: float = PROGRESS_INTERVAL) -> LoadResult:
        """Open connections from a pod through the gateway, hold them ``hold`` seconds,
        then close them.

        No time limit of its own: it lasts as long as the attempts (``timeout`` each) and
        the hold. ``on_result`` is called as soon as every attempt is settled (before the
        hold), ``on_progress`` every ``progress`` seconds while holding. The load process
        dies with this one and is stopped if this one is interrupted.
        """
        argv = self._load_argv(to, connections, proto=proto, hold=hold, pod=pod,
                               timeout=timeout, parallel=parallel,
                               progress=progress if on_progress is not None else 0.0)
        process = _start(argv)
        result: LoadResult | None = None
        try:
            assert process.stdout is not None
            for line in process.stdout:
                document = json.loads(line)
                if "progress" in document:
                    if on_progress is not None:
                        on_progress(document["progress"])
                elif result is None:
                    result = LoadResult(**document)
                    if on_result is not None:
                        on_result(result)
            process.wait()
        finally:
            _stop(process)
        if result is None or process.returncode != 0:
            err = process.stderr.read().strip() if process.stderr else ""
            raise DatapathError(f"lab load failed (exit {process.returncode}): "
                                f"{err.splitlines()[-1] if err else 'no result'}")
        return result

    def start_load(self, to: str, connections: int, *, proto: str = "tcp",
                   pod: str | None = None, timeout: float = 2.0, parallel: int = 256,
                   hold: float = 3600.0) -> LoadRun:
        """Open connections and keep them open (until ``stop()`` on the returned run)."""
        argv = self._load_argv(to, connections, proto=proto, hold=hold, pod=pod,
                               timeout=timeout, parallel=parallel, progress=0.0)
        process = _start(argv)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            err = process.stderr.read() if process.stderr else ""
            process.wait()
            raise DatapathError(f"lab load failed: {err.strip()}")
        return LoadRun(process, LoadResult.from_json(line))

    def exec(self, role: str, argv: Sequence[str], *, check: bool = True) -> str:
        """Run a command in the ``client``, ``gateway`` or ``server`` namespace."""
        return _run(netns_argv(self.namespace(role), argv), check=check)

    def namespace(self, role: str) -> str:
        t = self.topology
        names = {"client": t.client_ns, "gateway": t.gateway_ns, "server": t.server_ns}
        if role not in names:
            raise InputError(f"{role!r}: expected client, gateway or server", field="role")
        return names[role]

    def flush_conntrack(self) -> None:
        """Forget every tracked connection of the gateway (between experiments)."""
        _run(netns_argv(self.topology.gateway_ns, ["conntrack", "-F"]), check=False)

    def status(self) -> dict[str, object]:
        t = self.topology
        alive = t.server_pid is not None and _is_our_server(t.server_pid)
        count_path = "/proc/sys/net/netfilter/nf_conntrack_count"
        tracked = self.exec("gateway", ["cat", count_path], check=False).strip()
        return {
            "name": t.name,
            "namespaces": {ns: _netns_exists(ns) for ns in t.namespaces},
            "server": {"pid": t.server_pid, "running": alive,
                       "tcp_ports": t.tcp_ports, "udp_ports": t.udp_ports},
            "pods": [*t.pods4, *t.pods6],
            "egress_ips": [*t.egress4, *t.egress6],
            "servers": [*t.servers4, *t.servers6],
            "gateway_conntrack_entries": int(tracked) if tracked.isdigit() else None,
        }


def _is_our_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"egressgw.lab.server" in cmdline


def _namespace_pids(netns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _still_running(pid: int) -> bool:
    try:  # reap it if it is our own child (a lab built by this process)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    return Path(f"/proc/{pid}").exists()


def remove_lab(name: str, *, state_dir: Path = STATE_DIR) -> None:
    """Remove lab ``name``: stop its processes, delete its namespaces and state file."""
    check_lab_name(name)
    base = f"{PREFIX}-{name}"
    namespaces = [f"{base}-client", f"{base}-gw", f"{base}-server"]
    pids = [pid for ns in namespaces if _netns_exists(ns) for pid in _namespace_pids(ns)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _still_running(p)]
        if pids:
            time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for ns in namespaces:
        if _netns_exists(ns):
            _run(["ip", "netns", "delete", ns], check=False)
    for suffix in (".json", ".tmp"):
        (state_dir / f"{name}{suffix}").unlink(missing_ok=True)
    # The BPF datapath's pins (--datapath bpf) outlive the gateway's devices: unpin them.
    from egressgw.datapath.bpf.pins import remove_gateway_pins  # noqa: PLC0415

    remove_gateway_pins(f"{base}-gw")

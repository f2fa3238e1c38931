"""The workload document: who connects where, how often, for how long, how it ends.

A workload is YAML (see docs/simulation.md). Parsing validates everything and raises
InputError naming the file and the field, e.g. ``w.yaml: clients[0].count: must be a
positive integer``. The result is a tree of frozen value types; generating connections
from it is ``egressgw.sim.generate``'s job.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egressgw.config import MAX_DURATION, parse_duration
from egressgw.datapath.model.config import TCP_SYN_RETRIES
from egressgw.errors import ConfigError, InputError, excerpt
from egressgw.net import Endpoint, IPAddress, Proto, parse_cidr, parse_ip
from egressgw.sim.arrivals import (
    Arrivals,
    ConstantRate,
    DailyRate,
    Process,
    RampRate,
    RateProfile,
)
from egressgw.sim.distributions import Duration, DurationKind, EndKind, Ends
from egressgw.yamlload import load_yaml_documents, read_text


class SourcePorts:
    """How a client picks its ephemeral source ports (Linux: 32768-60999)."""

    SEQUENTIAL = "sequential"
    RANDOM = "random"
    CHOICES = (SEQUENTIAL, RANDOM)


EPHEMERAL_MIN = 32768
EPHEMERAL_MAX = 60999

# Bounds on what a workload may ask for, from what the simulator does on a 2-core machine
# (about 400,000 connections/s, docs/performance.md); beyond them a run would take hours
# or its address tables gigabytes. Each is an error naming the field (docs/reliability.md).
MAX_RATE = 100_000.0  # new connections (or requests) per second, per client group
MAX_CLIENTS = 1_000_000  # client addresses in one workload
MAX_GROUPS = 1_000  # client groups in one workload
MAX_DESTINATIONS = 10_000
MAX_REQUESTS_PER_CONNECTION = 1_000_000
MAX_SIGMA = 5.0  # lognormal shape: at 5 the mean is 270,000 times the median
MIN_KEEPALIVE = 1.0  # seconds; Linux's tcp_keepalive_intvl is at least 1 s
MAX_SHARE = 1e6  # weights and end shares are relative; larger numbers add nothing
MAX_NAME_CHARS = 253


@dataclass(frozen=True, slots=True)
class Destination:
    """A remote endpoint clients connect to; ICMP destinations have port 0."""

    name: str
    ip: IPAddress
    port: int
    proto: Proto
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ClientGroup:
    """Clients that behave alike: same arrivals, durations, ends and destinations."""

    name: str
    addresses: tuple[IPAddress, ...]
    arrivals: Arrivals
    duration: Duration
    ends: Ends
    destinations: tuple[int, ...]
    egress_ips: tuple[IPAddress, ...] = ()
    keepalive: float = 0.0
    source_ports: str = SourcePorts.SEQUENTIAL
    # Retransmissions of a dropped first packet: TCP as Linux (net.ipv4.tcp_syn_retries,
    # 1 s initial timeout, doubling); UDP as the application retries (a fixed timeout).
    syn_retries: int = TCP_SYN_RETRIES
    udp_retries: int = 0
    udp_retry_timeout: float = 5.0

    @property
    def count(self) -> int:
        return len(self.addresses)


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """Recorded flows to replay from a CSV file (see ``egressgw.sim.replay``)."""

    path: Path
    egress_ips: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class Workload:
    """A parsed, validated workload."""

    name: str
    source: str
    duration: float | None
    destinations: tuple[Destination, ...]
    groups: tuple[ClientGroup, ...]
    egress_ips: tuple[IPAddress, ...] = ()
    gateways: Mapping[IPAddress, str] = field(default_factory=dict)
    replay: ReplaySpec | None = None

    def gateway_of(self, egress_ip: IPAddress) -> str:
        """The gateway node that owns ``egress_ip`` (one node unless ``gateways`` says)."""
        return self.gateways.get(egress_ip, DEFAULT_GATEWAY)


DEFAULT_GATEWAY = "gateway"


class _Fields:
    """Reads one mapping of the document, naming the field in every error."""

    def __init__(self, data: object, path: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise InputError(f"must be a mapping, got {_kind(data)}", source=source, field=path)
        self.data: Mapping[str, Any] = data
        self.path = path
        self.source = source

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> InputError:
        return InputError(message, source=self.source, field=self.name(key))

    def check_keys(self, allowed: Sequence[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(str(key), f"unknown field (expected one of {', '.join(allowed)})")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def get(self, key: str, default: object = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def required(self, key: str) -> Any:
        if not self.has(key):
            raise self.error(key, "is required")
        return self.data[key]

    def sub(self, key: str) -> _Fields:
        return _Fields(self.required(key), self.name(key), self.source)

    def positive_int(self, key: str, maximum: int) -> int:
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(key, "must be a positive integer")
        if value > maximum:
            raise self.error(key, f"{excerpt(value)}: at most {maximum:,}")
        return value

    def number(
        self, key: str, default: float | None = None, *, positive: bool = False,
        maximum: float = MAX_SHARE,
    ) -> float:
        value = self.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {excerpt(value)}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise self.error(key, f"must be a {'positive' if positive else 'non-negative'} number")
        if value > maximum:
            raise self.error(key, f"{excerpt(value)}: at most {maximum:g}")
        return float(value)

    def text(self, key: str, default: str | None = None) -> str:
        """A string field (a name, a choice): never another type formatted as text."""
        value = self.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_kind(value)}")
        if len(value) > MAX_NAME_CHARS:
            raise self.error(key, f"{excerpt(value)}: at most {MAX_NAME_CHARS} characters")
        return value

    def seconds(self, key: str, default: float | None = None, *, positive: bool = False) -> float:
        value = self.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        return _seconds(value, self, key, positive=positive)

    def rate(self, key: str) -> float:
        return _rate(self.required(key), self, key)

    def ip(self, key: str) -> IPAddress:
        return _ip(self.required(key), self, key)

    def ip_list(self, key: str) -> tuple[IPAddress, ...]:
        value = self.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(key, "must be a list of IP addresses")
        return tuple(_ip(item, self, f"{key}[{i}]") for i, item in enumerate(value))


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool | int | float | str):
        return f"{type(value).__name__} {excerpt(value)}"
    return excerpt(value)


def _seconds(value: object, where: _Fields, key: str, *, positive: bool = False) -> float:
    if isinstance(value, bool):
        raise where.error(key, f"must be a duration such as 30s, got {excerpt(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value, field=where.name(key))
        except ConfigError as exc:
            raise where.error(key, exc.message) from None
    else:
        raise where.error(key, f"must be a duration such as 30s, got {_kind(value)}")
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise where.error(key, f"must be a {'positive' if positive else 'non-negative'} duration")
    if seconds > MAX_DURATION:
        raise where.error(key, f"{seconds:g} s: at most {MAX_DURATION:.0f} s (366 days)")
    return seconds


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _rate(value: object, where: _Fields, key: str) -> float:
    """A rate: a number per second, or ``N/s``, ``N/m``, ``N/h``."""
    expected = f"must be a rate such as 50 or 3000/m, got {excerpt(value)}"
    if isinstance(value, bool):
        raise where.error(key, expected)
    if isinstance(value, int | float):
        rate = float(value)
    elif (
        isinstance(value, str)
        and len(value) <= 32
        and (m := re.fullmatch(r"\s*([0-9.]+)\s*/\s*([smh])\s*", value))
    ):
        try:
            rate = float(m[1]) / _RATE_UNITS[m[2]]
        except ValueError:
            raise where.error(key, expected) from None
    else:
        raise where.error(key, expected)
    if not math.isfinite(rate) or rate < 0:
        raise where.error(key, "must be a non-negative rate")
    if rate > MAX_RATE:
        raise where.error(
            key, f"{rate:g}/s: at most {MAX_RATE:,.0f}/s per client group (docs/reliability.md)"
        )
    return rate


def _ip(value: object, where: _Fields, key: str) -> IPAddress:
    if not isinstance(value, str):
        raise where.error(key, f"must be an IP address as a string, got {_kind(value)}")
    try:
        return parse_ip(value.strip())
    except ValueError as exc:
        raise where.error(key, f"invalid IP address {exc}") from None


def _parse_arrivals(f: _Fields, per_connection: float) -> Arrivals:
    f.check_keys(["process", "rate", "ramp", "daily"])
    process_name = f.text("process", Process.POISSON.value)
    try:
        process = Process(process_name)
    except ValueError:
        raise f.error("process", f"{excerpt(process_name)}: expected poisson or constant") from None
    shapes = [key for key in ("rate", "ramp", "daily") if f.has(key)]
    if len(shapes) != 1:
        raise InputError(
            "give exactly one of rate, ramp or daily", source=f.source, field=f.path
        )
    profile: RateProfile
    if shapes[0] == "rate":
        profile = ConstantRate(f.rate("rate"))
    elif shapes[0] == "ramp":
        ramp = f.sub("ramp")
        ramp.check_keys(["from", "to", "start", "over"])
        profile = RampRate(
            ramp.rate("from"), ramp.rate("to"), ramp.seconds("start", 0.0),
            ramp.seconds("over", positive=True),
        )
    else:
        daily = f.sub("daily")
        daily.check_keys(["low", "high", "peak_at", "period"])
        low, high = daily.rate("low"), daily.rate("high")
        if high < low:
            raise daily.error("high", "must be at least low")
        profile = DailyRate(
            low, high, daily.seconds("peak_at", 14 * 3600.0),
            daily.seconds("period", 86400.0, positive=True),
        )
    return Arrivals(process, profile, per_connection)


def _parse_duration(value: object, where: _Fields, key: str) -> Duration:
    if value in ("forever", math.inf):
        return Duration(DurationKind.FOREVER)
    if not isinstance(value, Mapping):
        return Duration(DurationKind.FIXED, _seconds(value, where, key))
    f = _Fields(value, where.name(key), where.source)
    kind_name = f.text("distribution")
    try:
        kind = DurationKind(kind_name)
    except ValueError:
        choices = ", ".join(k.value for k in DurationKind)
        raise f.error("distribution", f"{excerpt(kind_name)}: expected one of {choices}") from None
    if kind is DurationKind.FIXED:
        f.check_keys(["distribution", "value"])
        return Duration(kind, f.seconds("value"))
    if kind is DurationKind.EXPONENTIAL:
        f.check_keys(["distribution", "mean"])
        return Duration(kind, f.seconds("mean", positive=True))
    if kind is DurationKind.LOGNORMAL:
        f.check_keys(["distribution", "median", "sigma"])
        sigma = f.number("sigma", 1.0, positive=True, maximum=MAX_SIGMA)
        return Duration(kind, f.seconds("median", positive=True), sigma)
    f.check_keys(["distribution"])
    return Duration(kind)


def _parse_ends(value: object, where: _Fields, key: str) -> Ends:
    names = [k.name.lower() for k in EndKind]
    if isinstance(value, str):
        if value not in names:
            raise where.error(
                key, f"{excerpt(value)}: expected fin, rst, rst_server, idle or a mapping of shares"
            )
        return Ends(**{name: float(name == value) for name in names})
    f = _Fields(value, where.name(key), where.source)
    f.check_keys(names)
    shares = {name: f.number(name, 0.0) for name in names}
    if sum(shares.values()) <= 0:
        raise InputError("the shares must not all be 0", source=f.source, field=f.path)
    return Ends(**shares)


def _parse_addresses(f: _Fields) -> tuple[IPAddress, ...]:
    if f.has("addresses") and f.has("cidr"):
        raise InputError("give addresses or cidr, not both", source=f.source, field=f.path)
    if f.has("addresses"):
        addresses = f.ip_list("addresses")
        if not addresses:
            raise f.error("addresses", "must not be empty")
        if len(addresses) > MAX_CLIENTS:
            raise f.error("addresses", f"{len(addresses):,} addresses: at most {MAX_CLIENTS:,}")
        count = f.positive_int("count", MAX_CLIENTS) if f.has("count") else len(addresses)
        if count != len(addresses):
            raise f.error("count", f"is {count} but {len(addresses)} addresses are listed")
        return addresses
    count = f.positive_int("count", MAX_CLIENTS)
    try:
        network = parse_cidr(f.text("cidr").strip())
    except ValueError as exc:
        raise f.error("cidr", f"invalid CIDR {exc}") from None
    usable = network.num_addresses - (2 if network.prefixlen < network.max_prefixlen - 1 else 0)
    if count > usable:
        raise f.error("count", f"{count} clients do not fit in {network} ({usable} addresses)")
    first = int(network.network_address) + (1 if usable < network.num_addresses else 0)
    return tuple(ipaddress.ip_address(first + i) for i in range(count))


def _parse_destination(f: _Fields) -> Destination:
    f.check_keys(["name", "address", "protocol", "weight"])
    text = f.text("address").strip()
    proto_text = f.text("protocol", "tcp")
    try:
        proto = Proto.parse(proto_text)
    except ValueError as exc:
        raise f.error("protocol", str(exc)) from None
    try:
        endpoint = Endpoint.parse(text)
    except ValueError:
        raise f.error("address", f"{excerpt(text)}: expected IP:PORT (or IP for icmp)") from None
    if proto.has_ports and endpoint.port == 0:
        raise f.error("address", f"{text!r}: {proto.label} needs a port, as in 10.2.0.0:8080")
    if not proto.has_ports and endpoint.port != 0:
        raise f.error("address", f"{text!r}: {proto.label} has no port")
    if (proto is Proto.ICMP) != (endpoint.ip.version == 4) and not proto.has_ports:
        raise f.error("protocol", f"{proto.label} does not match the address family of {text}")
    weight = f.number("weight", 1.0, positive=True)
    return Destination(f.text("name", text), endpoint.ip, endpoint.port, proto, weight)


_GROUP_KEYS = [
    "name", "count", "addresses", "cidr", "destinations", "egress_ips", "arrivals",
    "duration", "end", "requests_per_connection", "keepalive", "source_ports",
    "syn_retries", "udp_retries",
]


def _parse_group(
    f: _Fields, index: int, destinations: Sequence[Destination]
) -> ClientGroup:
    f.check_keys(_GROUP_KEYS)
    addresses = _parse_addresses(f)
    per_connection = f.number(
        "requests_per_connection", 1.0, maximum=MAX_REQUESTS_PER_CONNECTION
    )
    if per_connection < 1:
        raise f.error("requests_per_connection", "must be at least 1")
    arrivals = _parse_arrivals(f.sub("arrivals"), per_connection)
    duration = _parse_duration(f.required("duration"), f, "duration")
    if per_connection > 1 and duration.kind is not DurationKind.FOREVER:
        # A connection carrying N requests stays open for N request times.
        duration = Duration(duration.kind, duration.value * per_connection, duration.sigma)
    ends = _parse_ends(f.get("end", "fin"), f, "end")
    by_name = {d.name: i for i, d in enumerate(destinations)}
    wanted = f.get("destinations", [d.name for d in destinations])
    if not isinstance(wanted, list) or not wanted:
        raise f.error("destinations", "must be a non-empty list of destination names")
    picked = []
    if len(wanted) > MAX_DESTINATIONS:
        raise f.error("destinations", f"{len(wanted):,} names: at most {MAX_DESTINATIONS:,}")
    for i, name in enumerate(wanted):
        if not isinstance(name, str) or name not in by_name:
            known = ", ".join(list(by_name)[:10]) + (", ..." if len(by_name) > 10 else "")
            raise f.error(f"destinations[{i}]", f"{excerpt(name)} is not a destination ({known})")
        picked.append(by_name[name])
    for d in picked:
        family = destinations[d].ip.version
        if any(a.version != family for a in addresses):
            raise f.error("destinations", f"clients and {destinations[d].name} differ in family")
    ports = f.text("source_ports", SourcePorts.SEQUENTIAL)
    if ports not in SourcePorts.CHOICES:
        raise f.error("source_ports", f"{excerpt(ports)}: expected sequential or random")
    keepalive = f.seconds("keepalive", 0.0)
    if 0 < keepalive < MIN_KEEPALIVE:
        raise f.error("keepalive", f"{keepalive:g} s: 0 (none) or at least {MIN_KEEPALIVE:g} s")
    syn_retries = _retry_count(f, "syn_retries", TCP_SYN_RETRIES)
    udp_retries, udp_timeout = 0, 5.0
    if f.has("udp_retries"):
        u = f.sub("udp_retries")
        u.check_keys(["count", "timeout"])
        udp_retries = _retry_count(u, "count", 0)
        udp_timeout = u.seconds("timeout", 5.0, positive=True)
    return ClientGroup(
        name=f.text("name", f"clients[{index}]"),
        addresses=addresses,
        arrivals=arrivals,
        duration=duration,
        ends=ends,
        destinations=tuple(picked),
        egress_ips=f.ip_list("egress_ips"),
        keepalive=keepalive,
        source_ports=ports,
        syn_retries=syn_retries,
        udp_retries=udp_retries,
        udp_retry_timeout=udp_timeout,
    )


def _retry_count(f: _Fields, key: str, default: int) -> int:
    value = f.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise f.error(key, f"must be an integer from 0 to 255, got {excerpt(value)}")
    return value


def _parse_gateways(f: _Fields) -> dict[IPAddress, str]:
    owners: dict[IPAddress, str] = {}
    for node in f.data:
        if not isinstance(node, str) or len(node) > MAX_NAME_CHARS:
            raise InputError(f"{excerpt(node)}: a gateway node name must be a short string",
                             source=f.source, field=f.path)
        for ip in f.ip_list(node):
            if ip in owners:
                raise f.error(str(node), f"{ip} is already on gateway {owners[ip]}")
            owners[ip] = str(node)
    return owners


_TOP_KEYS = ["name", "duration", "egress_ips", "gateways", "destinations", "clients", "replay"]


def parse_workload(data: object, *, source: str, base_dir: Path | None = None) -> Workload:
    """Validate a loaded workload document; ``base_dir`` resolves a relative replay file."""
    f = _Fields(data, "", source)
    f.check_keys(_TOP_KEYS)
    destinations: list[Destination] = []
    if f.has("destinations"):
        items = f.required("destinations")
        if not isinstance(items, list):
            raise f.error("destinations", "must be a list")
        if len(items) > MAX_DESTINATIONS:
            raise f.error("destinations", f"{len(items):,} destinations: at most "
                          f"{MAX_DESTINATIONS:,}")
        destinations = [
            _parse_destination(_Fields(item, f"destinations[{i}]", source))
            for i, item in enumerate(items)
        ]
        names = [d.name for d in destinations]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise f.error(f"destinations[{i}].name", f"{excerpt(name)} is used twice")
    groups: list[ClientGroup] = []
    if f.has("clients"):
        items = f.required("clients")
        if not isinstance(items, list):
            raise f.error("clients", "must be a list")
        if not destinations:
            raise f.error("destinations", "is required when clients are given")
        if len(items) > MAX_GROUPS:
            raise f.error("clients", f"{len(items):,} client groups: at most {MAX_GROUPS:,}")
        groups = [
            _parse_group(_Fields(item, f"clients[{i}]", source), i, destinations)
            for i, item in enumerate(items)
        ]
        clients = sum(group.count for group in groups)
        if clients > MAX_CLIENTS:
            raise f.error("clients", f"{clients:,} client addresses: at most {MAX_CLIENTS:,}")
    replay = None
    if f.has("replay"):
        r = f.sub("replay")
        r.check_keys(["file", "egress_ips"])
        path = Path(r.text("file"))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        replay = ReplaySpec(path, r.ip_list("egress_ips"))
    if not groups and replay is None:
        raise InputError("needs clients or replay (or both)", source=source)
    gateways = _parse_gateways(f.sub("gateways")) if f.has("gateways") else {}
    return Workload(
        name=f.text("name", Path(source).stem),
        source=source,
        duration=f.seconds("duration", positive=True) if f.has("duration") else None,
        destinations=tuple(destinations),
        groups=tuple(groups),
        egress_ips=f.ip_list("egress_ips"),
        gateways=gateways,
        replay=replay,
    )


def load_workload(path: str | Path) -> Workload:
    """Read and validate a workload YAML file."""
    path = Path(path)
    source = str(path)
    documents = load_yaml_documents(read_text(path), source)
    if len(documents) > 1:
        raise InputError("expected one YAML document, found several", source=source)
    data = documents[0] if documents else None
    return parse_workload(data, source=source, base_dir=path.parent)

"""The lab's traffic generator: open N real connections from a pod address.

Run inside the client namespace (``ip netns exec NS python -m egressgw.lab.load``). A
connection counts as succeeded when a round trip through the gateway completed: for TCP
the server's greeting arrived, for UDP its answer, for ICMP the echo reply. The server
tells each client the address it saw, so the result shows behind which egress IP (or
the pod IP itself) the traffic arrived.

Prints one JSON line when every attempt is settled, then holds the connections open for
``--hold`` seconds (or until SIGTERM) so the gateway's conntrack table can be read.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import selectors
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from egressgw.lab.server import raise_nofile
from egressgw.net import Endpoint, format_addr

PROTOS = ("tcp", "udp", "icmp")


@dataclass(slots=True)
class LoadResult:
    """How many connections were attempted, succeeded and failed (and why)."""

    proto: str
    to: str
    source: str
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seen_as: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls(**json.loads(text))


@dataclass(slots=True)
class _Attempt:
    sock: socket.socket
    deadline: float
    connected: bool = False


def _error_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _open(proto: str, source: str, family: int) -> socket.socket:
    if proto == "tcp":
        sock = socket.socket(family, socket.SOCK_STREAM)
    elif proto == "udp":
        sock = socket.socket(family, socket.SOCK_DGRAM)
    else:
        icmp = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        sock = socket.socket(family, socket.SOCK_DGRAM, icmp)  # a ping socket
    sock.setblocking(False)
    sock.bind((source, 0))
    return sock


def _echo_request(family: int) -> bytes:
    # The kernel fills in the identifier and the checksum of a ping socket's echo.
    kind = 8 if family == socket.AF_INET else 128
    return struct.pack("!BBHHH", kind, 0, 0, 0, 1) + b"egressgw"


def run(
    proto: str,
    to: Endpoint,
    source: str,
    connections: int,
    *,
    timeout: float = 2.0,
    parallel: int = 256,
    keep: list[socket.socket] | None = None,
) -> LoadResult:
    """Attempt ``connections`` connections, at most ``parallel`` in flight at a time.

    Succeeded sockets are appended to ``keep`` (open) when given, closed otherwise.
    """
    family = socket.AF_INET if to.ip.version == 4 else socket.AF_INET6
    result = LoadResult(proto, format_addr(to.ip, to.port), source)
    errors: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    selector = selectors.DefaultSelector()
    inflight: dict[socket.socket, _Attempt] = {}
    started = time.monotonic()
    remaining = connections

    def settle(attempt: _Attempt, error: str | None, peer: str | None = None) -> None:
        selector.unregister(attempt.sock)
        del inflight[attempt.sock]
        if error is None:
            result.succeeded += 1
            if peer:
                seen[peer] += 1
            if keep is not None:
                keep.append(attempt.sock)
                return
        else:
            result.failed += 1
            errors[error] += 1
        attempt.sock.close()

    while remaining or inflight:
        while remaining and len(inflight) < max(1, parallel):
            remaining -= 1
            result.attempted += 1
            try:
                sock = _open(proto, source, family)
            except OSError as exc:
                result.failed += 1
                errors[_error_name(exc.errno or 0)] += 1
                continue
            attempt = _Attempt(sock, time.monotonic() + timeout)
            inflight[sock] = attempt
            target = (str(to.ip), to.port)
            if proto == "tcp":
                code = sock.connect_ex(target)
                if code not in (0, errno.EINPROGRESS):
                    selector.register(sock, selectors.EVENT_READ, attempt)
                    settle(attempt, _error_name(code))
                    continue
                selector.register(sock, selectors.EVENT_WRITE, attempt)
            else:
                try:
                    sock.connect(target)
                    sock.send(b"egressgw" if proto == "udp" else _echo_request(family))
                except OSError as exc:
                    selector.register(sock, selectors.EVENT_READ, attempt)
                    settle(attempt, _error_name(exc.errno or 0))
                    continue
                selector.register(sock, selectors.EVENT_READ, attempt)
        now = time.monotonic()
        wait = min((a.deadline for a in inflight.values()), default=now) - now
        for key, events in selector.select(timeout=max(0.0, min(wait, 0.5))):
            attempt = key.data
            _progress(attempt, events, proto, selector, settle)
        now = time.monotonic()
        for attempt in [a for a in inflight.values() if a.deadline <= now]:
            settle(attempt, "timeout")
    result.errors = dict(sorted(errors.items()))
    result.seen_as = dict(sorted(seen.items()))
    result.seconds = round(time.monotonic() - started, 3)
    selector.close()
    return result


def _progress(
    attempt: _Attempt,
    events: int,
    proto: str,
    selector: selectors.BaseSelector,
    settle: Callable[..., None],
) -> None:
    sock = attempt.sock
    if proto == "tcp" and not attempt.connected:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            settle(attempt, _error_name(code))
            return
        if events & selectors.EVENT_WRITE:
            attempt.connected = True
            selector.modify(sock, selectors.EVENT_READ, attempt)
            return
    try:
        data = sock.recv(4096)
    except (BlockingIOError, InterruptedError):
        return
    except OSError as exc:
        settle(attempt, _error_name(exc.errno or 0))
        return
    if proto == "icmp":
        kind = data[0] if data else -1
        settle(attempt, None if kind in (0, 129) else f"icmp-type-{kind}")
        return
    if not data:
        settle(attempt, "closed")
        return
    peer = data.split(b" ", 1)[0].decode(errors="replace")
    settle(attempt, None, peer)


# Bounds on a load run. One pod address to one server port has at most 64,512 source
# ports through a masquerading gateway (1024-65535), so more connections cannot succeed;
# each connection in flight holds a socket, and the hold and timeout bound how long the
# child lives.
MAX_CONNECTIONS = 65_536
MAX_PARALLEL = 4_096
MAX_HOLD = 86_400.0
MIN_TIMEOUT, MAX_TIMEOUT = 0.01, 600.0


def check_load(connections: int, parallel: int, hold: float, timeout: float) -> None:
    """Raise ValueError naming the flag when a load setting is out of its bounds."""
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"--connections: {connections}: must be 1..{MAX_CONNECTIONS}")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ValueError(f"--parallel: {parallel}: must be 1..{MAX_PARALLEL}")
    if not (math.isfinite(hold) and 0 <= hold <= MAX_HOLD):
        raise ValueError(f"--hold: {hold:g}: must be 0..{MAX_HOLD:g} seconds")
    if not (math.isfinite(timeout) and MIN_TIMEOUT <= timeout <= MAX_TIMEOUT):
        raise ValueError(f"--timeout: {timeout:g}: must be {MIN_TIMEOUT:g}..{MAX_TIMEOUT:g} s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m egressgw.lab.load")
    parser.add_argument("--to", required=True, help="server IP:PORT ([v6]:PORT; ICMP: IP)")
    parser.add_argument("--from", dest="source", required=True, help="pod address to use")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--proto", choices=PROTOS, default="tcp")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--parallel", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        check_load(args.connections, args.parallel, args.hold, args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    raise_nofile()
    to = Endpoint.parse(args.to)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    keep: list[socket.socket] = []
    result = run(args.proto, to, args.source, args.connections, timeout=args.timeout,
                 parallel=args.parallel, keep=keep)
    sys.stdout.write(result.to_json() + "\n")
    sys.stdout.flush()
    until = time.monotonic() + args.hold
    while not stopping and time.monotonic() < until:
        time.sleep(min(0.1, max(0.0, until - time.monotonic())))
    for sock in keep:
        sock.close()


if __name__ == "__main__":
    main()

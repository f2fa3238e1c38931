"""The lab's traffic generator: open N real connections from a pod address.

Run inside the client namespace (``ip netns exec NS python -m egressgw.lab.load``). A
connection counts as succeeded when a round trip through the gateway completed: for TCP
the server's greeting arrived, for UDP its answer, for ICMP the echo reply. The server
tells each client the address it saw, so the result shows behind which egress IP (or
the pod IP itself) the traffic arrived.

Prints one JSON line when every attempt is settled, then holds the connections open for
``--hold`` seconds (or until SIGTERM, SIGINT or SIGHUP) so the gateway's conntrack table
can be read, printing a progress line (JSON, ``{"progress": ...}``) every
``--progress`` seconds meanwhile. It stops early, closing its sockets, when its parent
dies (``--parent PID``): it asks the kernel for SIGTERM when its parent exits
(PR_SET_PDEATHSIG; ``ip netns exec`` execs it, so its parent is the process that ran
``ip``) and also watches its parent process id.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import math
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from egressgw.errors import ConfigError
from egressgw.lab.server import raise_nofile
from egressgw.net import Endpoint, format_addr

PROTOS = ("tcp", "udp", "icmp")
# Bounds of the flags: every held connection is an open file of the load process, and a
# hold or timeout past a day is a typo rather than an experiment.
MAX_CONNECTIONS = 100_000
MAX_PARALLEL = 10_000
MAX_TIMEOUT = 3600.0
MAX_HOLD = 86_400.0
PROGRESS_INTERVAL = 5.0


def check_load_flags(connections: int, parallel: int, timeout: float, hold: float) -> None:
    """Refuse flag values ``lab load`` cannot honour (ConfigError naming the flag)."""
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ConfigError(f"{connections}: expected 1..{MAX_CONNECTIONS}", field="--connections")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ConfigError(f"{parallel}: expected 1..{MAX_PARALLEL}", field="--parallel")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise ConfigError(f"{timeout}: expected seconds above 0, at most {MAX_TIMEOUT:g}",
                          field="--timeout")
    if not (math.isfinite(hold) and 0 <= hold <= MAX_HOLD):
        raise ConfigError(f"{hold}: expected 0..{MAX_HOLD:g} seconds", field="--hold")


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

    def to_json_object(self) -> dict[str, object]:
        return asdict(self)

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
    stopped: Callable[[], bool] = lambda: False,
) -> LoadResult:
    """Attempt ``connections`` connections, at most ``parallel`` in flight at a time.

    Succeeded sockets are appended to ``keep`` (open) when given, closed otherwise. When
    ``stopped()`` turns true no new attempt starts and the ones in flight are abandoned
    (closed, counted as failed with "stopped").
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
        if stopped():
            for attempt in list(inflight.values()):
                settle(attempt, "stopped")
            break
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


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM to this process when its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _count_open(keep: list[socket.socket]) -> int:
    """How many held sockets the peer has not closed (TCP); every socket otherwise."""
    open_ = 0
    for sock in keep:
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            open_ += 1  # nothing to read: still open
            continue
        except OSError:
            continue
        if data or sock.type != socket.SOCK_STREAM:
            open_ += 1
    return open_


def _emit(document: object) -> None:
    try:
        sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass  # nobody reads any more: holding goes on until a signal or the hold ends


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m egressgw.lab.load")
    parser.add_argument("--to", required=True, help="server IP:PORT ([v6]:PORT; ICMP: IP)")
    parser.add_argument("--from", dest="source", required=True, help="pod address to use")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--proto", choices=PROTOS, default="tcp")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--parallel", type=int, default=256)
    parser.add_argument("--progress", type=float, default=PROGRESS_INTERVAL,
                        help="seconds between progress lines while holding (0: none)")
    parser.add_argument("--parent", type=int, default=0,
                        help="die with this process (the one that started this one)")
    args = parser.parse_args(argv)
    parent = os.getppid()
    if args.parent:
        _die_with_parent()
        if parent != args.parent:  # it died before the kernel was asked to tell
            return
    try:
        check_load_flags(args.connections, args.parallel, args.timeout, args.hold)
        to = Endpoint.parse(args.to)
    except (ConfigError, ValueError) as exc:
        parser.exit(2, f"egressgw.lab.load: error: {exc}\n")
    raise_nofile()
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)

    def stopped() -> bool:
        return stopping or os.getppid() != parent

    keep: list[socket.socket] = []
    result = run(args.proto, to, args.source, args.connections, timeout=args.timeout,
                 parallel=args.parallel, keep=keep, stopped=stopped)
    _emit(result.to_json_object())
    started = time.monotonic()
    until = started + args.hold
    next_report = started + args.progress
    while not stopped() and time.monotonic() < until:
        now = time.monotonic()
        if args.progress > 0 and now >= next_report:
            _emit({"progress": {"held": _count_open(keep), "connections": len(keep),
                                "elapsed": round(now - started, 1), "hold": args.hold}})
            next_report += args.progress
        time.sleep(min(0.1, max(0.0, until - now)))
    for sock in keep:
        sock.close()


if __name__ == "__main__":
    main()

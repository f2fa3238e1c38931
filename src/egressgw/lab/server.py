"""The lab's servers: TCP and UDP on the given addresses of the server namespace.

Run inside the server namespace (``ip netns exec NS python -m egressgw.lab.server``).
Each TCP connection is greeted with the address the server sees it come from, then
held open and echoed until the client closes; each UDP datagram is answered with the
sender's address. So a client learns whether it was masqueraded, and behind which IP,
from the server's own point of view. ICMP echo is answered by the kernel.

One selectors loop holds thousands of connections; RLIMIT_NOFILE is raised to its hard
limit first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import signal
import socket
import sys
from collections.abc import Sequence

BACKLOG = 4096


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def greeting(address: tuple[str, int] | tuple[str, int, int, int]) -> bytes:
    """What a client is told: ``<ip> <port>\\n`` as the server sees it."""
    return f"{address[0]} {address[1]}\n".encode()


def _listeners(
    addresses: Sequence[str], tcp_ports: Sequence[int], udp_ports: Sequence[int]
) -> list[socket.socket]:
    """One socket per address and port: UDP answers then leave from the address asked."""
    sockets: list[socket.socket] = []
    for host in addresses:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for kind, ports in ((socket.SOCK_STREAM, tcp_ports), (socket.SOCK_DGRAM, udp_ports)):
            for port in ports:
                sock = socket.socket(family, kind)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(BACKLOG)
                sock.setblocking(False)
                sockets.append(sock)
    return sockets


def serve(
    addresses: Sequence[str],
    tcp_ports: Sequence[int],
    udp_ports: Sequence[int],
    *,
    ready: bool = True,
) -> None:
    """Serve until SIGTERM or SIGINT."""
    raise_nofile()
    selector = selectors.DefaultSelector()
    for sock in _listeners(addresses, tcp_ports, udp_ports):
        role = "accept" if sock.type == socket.SOCK_STREAM else "datagram"
        selector.register(sock, selectors.EVENT_READ, role)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready:
        # The parent waits for this line, then no longer listens: stdout goes to /dev/null.
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    while not stopping:
        for key, _ in selector.select(timeout=0.5):
            ready_sock = key.fileobj
            if not isinstance(ready_sock, socket.socket):
                continue
            if key.data == "accept":
                _accept(ready_sock, selector)
            elif key.data == "datagram":
                _answer(ready_sock)
            else:
                _echo(ready_sock, selector)


def _accept(listener: socket.socket, selector: selectors.BaseSelector) -> None:
    for _ in range(256):  # drain a burst of connections per wakeup
        try:
            conn, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # out of descriptors or the peer gave up: keep serving
            return
        conn.setblocking(False)
        try:
            conn.send(greeting(address))
        except OSError:
            conn.close()
            continue
        selector.register(conn, selectors.EVENT_READ, "conn")


def _echo(conn: socket.socket, selector: selectors.BaseSelector) -> None:
    try:
        data = conn.recv(65536)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        data = b""
    if not data:
        selector.unregister(conn)
        conn.close()
        return
    with contextlib.suppress(OSError):
        conn.send(data)


def _answer(sock: socket.socket) -> None:
    for _ in range(256):
        try:
            _data, address = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        with contextlib.suppress(OSError):
            sock.sendto(greeting(address), address)


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m egressgw.lab.server")
    parser.add_argument("--address", type=lambda t: t.split(","), required=True,
                        help="addresses to serve on, comma separated")
    parser.add_argument("--tcp", type=_ports, default=[80], help="TCP ports, comma separated")
    parser.add_argument("--udp", type=_ports, default=[53], help="UDP ports, comma separated")
    args = parser.parse_args(argv)
    serve(args.address, args.tcp, args.udp)


if __name__ == "__main__":
    main()

"""A bounded HTTP/1.0 server core: what keeps the agent's API standing under load.

The standard library's ThreadingHTTPServer listens with a backlog of 5, gives every
connection a thread for as long as the client likes (an idle connection holds one
forever) and prints a traceback when a client goes away. Here instead:

- the listen backlog is :data:`BACKLOG` (the kernel caps it at net.core.somaxconn);
- one selector thread accepts connections and reads request heads without blocking, so
  a slow or idle client costs a file descriptor and a small buffer, never a thread;
- a request head must arrive whole within :data:`HEADER_TIMEOUT` seconds and fit in
  :data:`MAX_HEAD_BYTES`, else the connection is closed;
- complete requests go to a fixed pool of worker threads, each answering one request per
  connection (HTTP/1.0: no keep-alive to hold a worker) with a send timeout;
- at most ``max_open`` connections are open at once, computed from the open-files limit
  minus :data:`RESERVED_FDS`, so held connections can never take the descriptors that a
  reconcile (nft, netlink) or a recount needs; at the cap the oldest connection still
  waiting for its head is closed to make room, so a new client (a health check) always
  gets in however many slow clients there are;
- a client that disconnects is logged at debug level in one line.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

BACKLOG = 1024
HEADER_TIMEOUT = 5.0
SEND_TIMEOUT = 5.0
MAX_HEAD_BYTES = 16 * 1024
WORKERS = 8
# Descriptors kept free for the rest of the agent: nft runs (pipes), netlink sockets,
# policy files, logging. A reconcile uses fewer than 20.
RESERVED_FDS = 256
MAX_CONNECTIONS = 4096
_END_OF_HEAD = b"\r\n\r\n"

# A worker's job: the connected socket, the client's address and its request head.
Handle = Callable[[socket.socket, tuple[str, int], bytes], None]


def connection_cap(reserved: int = RESERVED_FDS) -> int:
    """How many connections may be open: the open-files limit minus ``reserved``."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - reserved))


@dataclass(slots=True)
class _Pending:
    sock: socket.socket
    address: tuple[str, int]
    deadline: float
    head: bytearray


class BoundedHTTPServer:
    """Accepts on ``sock`` and hands each complete request head to ``handle`` in a pool."""

    def __init__(
        self,
        sock: socket.socket,
        handle: Handle,
        *,
        workers: int = WORKERS,
        max_open: int | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listener = sock
        self._listener.setblocking(False)
        self._handle = handle
        self._max_open = max_open if max_open is not None else connection_cap()
        self._header_timeout = header_timeout
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        # Insertion order is arrival order: the first entry is the oldest waiting client.
        self._pending: dict[socket.socket, _Pending] = {}
        self._jobs: queue.Queue[tuple[socket.socket, tuple[str, int], bytes] | None] = (
            queue.Queue()
        )
        self._open = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"egressgw-http-{i}", daemon=True)
            for i in range(workers)
        ]
        self._threads.append(
            threading.Thread(target=self._serve, name="egressgw-http", daemon=True)
        )
        self.dropped = 0  # connections closed to make room, or timed out

    @property
    def max_open(self) -> int:
        return self._max_open

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for _ in range(len(self._threads) - 1):
            self._jobs.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        for pending in list(self._pending.values()):
            self._close(pending.sock)
        self._pending.clear()
        self._selector.close()
        self._listener.close()

    # -- the selector thread -------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                events = self._selector.select(timeout=0.1)
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            for key, _mask in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._read(sock)
            self._expire()

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time; the selector comes back for the rest
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE: leave the rest in the backlog until descriptors free up.
                log.warning("cannot accept a connection: %s", exc.strerror or exc)
                return
            with self._lock:
                full = self._open >= self._max_open
            if full and not self._evict_oldest():
                # Every slot holds a complete request being answered: refuse this one.
                self.dropped += 1
                _close_quietly(sock)
                continue
            with self._lock:
                self._open += 1
            sock.setblocking(False)
            deadline = self._clock() + self._header_timeout
            self._pending[sock] = _Pending(sock, (str(address[0]), int(address[1])),
                                           deadline, bytearray())
            self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        pending = self._pending.get(sock)
        if pending is None:
            return
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(sock)
            return
        pending.head += data
        if _END_OF_HEAD in pending.head:
            self._selector.unregister(sock)
            del self._pending[sock]
            self._jobs.put((sock, pending.address, bytes(pending.head)))
        elif len(pending.head) > MAX_HEAD_BYTES:
            log.debug("%s: request head over %d bytes, closed", pending.address[0],
                      MAX_HEAD_BYTES)
            self.dropped += 1
            self._forget(sock)

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            log.debug("%s: no complete request in %g s, closed", oldest.address[0],
                      self._header_timeout)
            self.dropped += 1
            self._forget(oldest.sock)

    def _evict_oldest(self) -> bool:
        if not self._pending:
            return False
        oldest = next(iter(self._pending.values()))
        log.debug("%s: closed to make room for a new connection", oldest.address[0])
        self.dropped += 1
        self._forget(oldest.sock)
        return True

    def _forget(self, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        _close_quietly(sock)
        with self._lock:
            self._open -= 1

    # -- the workers ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            sock, address, head = job
            try:
                sock.setblocking(True)
                sock.settimeout(SEND_TIMEOUT)
                self._handle(sock, address, head)
            except (ConnectionError, TimeoutError) as exc:
                # The client went away or stopped reading: nothing to answer.
                log.debug("%s: %s", address[0], exc.strerror or type(exc).__name__)
            except Exception:
                log.exception("answering %s failed", address[0])
            finally:
                self._close(sock)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()

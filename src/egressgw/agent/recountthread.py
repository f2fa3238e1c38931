"""The nat-stats pass on a thread of its own, so a reconcile never waits for one.

A pass over a big NAT table takes seconds (524,288 entries: docs/agent.md); run on the
loop, it held back every reconcile that came meanwhile. Here the loop only begins a pass
when one is due (the counter's snapshot, agent/counting.py) and hands the rest to this
thread, which publishes an immutable snapshot to the agent state when it is done. Every
datapath's pass goes through here. At most one pass runs at a time: while one runs,
``request`` returns False and the loop counts that period as skipped instead of
queueing passes behind a slow one. The thread spends most of a conntrack or BPF pass in
the kernel (recv, bpf(2)) and in numpy, all without the GIL, so the loop and the HTTP
workers keep running; the model's pass counts in Python, sharing the GIL in turns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class RecountThread:
    """Runs the rest of a pass on a daemon thread each time :meth:`request` finds it idle."""

    def __init__(self, *, name: str = "egressgw-recount") -> None:
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._job: Callable[[], object] | None = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Whether a pass was asked for and has not finished yet."""
        with self._lock:
            return self._busy

    def request(self, begin: Callable[[], Callable[[], object] | None]) -> bool:
        """Begin a pass now and run its rest here; False (``begin`` not called) while
        the previous one still runs.

        ``begin`` runs on the caller's thread (the loop): it takes what the pass needs of
        what that thread changes, and returns the rest, or None when there is nothing
        left to run (it failed and said so).
        """
        with self._lock:
            if self._busy or self._stopping:
                return False
            self._busy = True
        job: Callable[[], object] | None = None
        try:
            job = begin()
        finally:
            if job is None:
                with self._lock:
                    self._busy = False
        with self._lock:
            self._job = job
        self._wanted.set()
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Let the thread end after the pass it runs (if any); whether it ended in time.

        A pass stuck in the kernel is left behind (a daemon thread: it does not hold up
        the process's exit); the rules and the datapath are not the pass's to change.
        """
        with self._lock:
            self._stopping = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._lock:
                if self._stopping:
                    return
                job, self._job = self._job, None
            if job is None:
                continue
            try:
                job()
            except Exception:
                # The pass reports its own errors; this is the last line of defence so
                # that the thread, and with it every later pass, does not die.
                log.exception("nat-stats pass failed unexpectedly")
            finally:
                with self._lock:
                    self._busy = False

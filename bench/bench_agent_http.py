"""The agent's HTTP API under load: many clients, then thousands of slow ones.

Starts ``egressgw agent --datapath model`` on 127.0.0.1 (port chosen by the kernel) with
the bundled example policies, its open-files limit lowered to 1,024 (the common default,
with which held connections used to make reconciles fail), then:

1. **idle**: one client, sequential requests: the baseline latency;
2. **load**: ``--clients`` concurrent clients for ``--seconds``, each sending a request
   every ``--period`` seconds over a new connection (``/metrics``,
   ``/v1/statedb/nat-stats`` and ``/healthz`` in turn); counts failures (refused, reset,
   timed out after 5 s, or not HTTP 200) and prints latency percentiles and the ratio of
   the p99 to the idle p99;
3. **slow**: ``--slow`` clients connect and send a request head one byte a second,
   never finishing it, while a probe asks ``/healthz`` every 0.2 s and the policy file
   is touched every 2 s; prints the probe's latencies and failures, how many reconciles
   succeeded meanwhile (from /healthz's last_reconcile_success) and whether the agent
   logged "Too many open files".

Traffic goes to 127.0.0.1 only; every phase is bounded in time and the agent is stopped
at the end.

    .venv/bin/python bench/bench_agent_http.py [--clients 200] [--seconds 30]
        [--period 1.0] [--slow 2000] [--slow-seconds 20] [--quick]

``--quick`` (a smoke run): 4 clients for 1 s, 8 slow clients for 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchutil import egressgw_command, format_load, load_average

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "egressgw" / "examples"
PATHS = ("/metrics", "/v1/statedb/nat-stats", "/healthz")
TIMEOUT = 5.0
OPEN_FILES = 1024


class Agent:
    """The agent as a child process with a fixed open-files limit; its log kept in memory."""

    def __init__(self, policies: Path, open_files: int) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.process = subprocess.Popen(
            [*egressgw_command(), "agent", "--datapath", "model", "--policies", str(policies),
             "--inventory", str(EXAMPLES / "inventory.yaml"), "--node", "gateway-1",
             "--listen", "127.0.0.1:0", "--nat-map-stats-interval", "1s",
             "--poll-interval", "0.5s"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, preexec_fn=limit,  # noqa: PLW1509 (no other thread runs yet)
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(120):
            self.stop()
            sys.exit("the agent did not start:\n" + "\n".join(self.lines))
        match = re.search(r"on http://([\d.]+):(\d+)", "\n".join(self.lines))
        assert match, self.lines
        self.host, self.port = match[1], int(match[2])

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if "serving /metrics" in line:
                self._ready.set()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+)", status)
        return int(match[1]) if match else 0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def request(host: str, port: int, path: str) -> tuple[float, str | None, bytes]:
    """One GET over a new connection: (seconds, error or None, body)."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
    except TimeoutError:
        return time.perf_counter() - start, "timeout", b""
    except OSError as exc:
        return time.perf_counter() - start, type(exc).__name__, b""
    elapsed = time.perf_counter() - start
    status = data.split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        return elapsed, f"status {status[:40]!r}", b""
    return elapsed, None, data.partition(b"\r\n\r\n")[2]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def summary(name: str, latencies: list[float], errors: dict[str, int]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies]
    row = {"requests": len(ms) + sum(errors.values()), "failures": sum(errors.values()),
           "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
           "max_ms": max(ms, default=0.0)}
    print(f"{name:>6}: {row['requests']:,} requests, {row['failures']} failures "
          f"{dict(errors) or ''}, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
          f"max {row['max_ms']:.1f} ms", flush=True)
    return row


async def idle_phase(agent: Agent, n: int = 300) -> dict[str, float]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for i in range(n):
        elapsed, error, _ = await request(agent.host, agent.port, PATHS[i % len(PATHS)])
        if error:
            errors[error] = errors.get(error, 0) + 1
        else:
            latencies.append(elapsed)
    return summary("idle", latencies, errors)


async def load_phase(agent: Agent, clients: int, seconds: float,
                     period: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def client(index: int) -> None:
        # Spread the clients' first requests over one period.
        await asyncio.sleep(period * index / clients)
        i = index
        while time.monotonic() < end:
            due = time.monotonic() + period
            elapsed, error, _ = await request(agent.host, agent.port, PATHS[i % len(PATHS)])
            i += 1
            if error:
                errors[error] = errors.get(error, 0) + 1
            else:
                latencies.append(elapsed)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    await asyncio.gather(*(client(i) for i in range(clients)))
    return summary("load", latencies, errors)


async def slow_clients(host: str, port: int, slow: int, seconds: float) -> None:
    """``slow`` clients sending a request head one byte a second, reconnecting when closed;
    run in a process of its own so that their churn does not delay the probe's clock."""
    end = time.monotonic() + seconds
    opened = closed_by_agent = 0

    async def slow_client() -> None:
        nonlocal opened, closed_by_agent
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            opened += 1
            try:
                writer.write(b"GET /healthz HTTP/1.0\r\n")
                while time.monotonic() < end:
                    writer.write(b"X")
                    await writer.drain()
                    try:
                        async with asyncio.timeout(1.0):
                            if await reader.read(1) == b"":
                                closed_by_agent += 1
                                break
                    except TimeoutError:
                        pass
            except OSError:
                closed_by_agent += 1
            finally:
                writer.close()

    await asyncio.gather(*(slow_client() for _ in range(slow)), return_exceptions=True)
    print(json.dumps({"opened": opened, "closed_by_agent": closed_by_agent}), flush=True)


def get(host: str, port: int, path: str) -> tuple[float, str | None, bytes]:
    """One blocking GET over a new connection (the probe): (seconds, error, body)."""
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except TimeoutError:
        return time.perf_counter() - start, "timeout", b""
    except OSError as exc:
        return time.perf_counter() - start, type(exc).__name__, b""
    data = b"".join(chunks)
    elapsed = time.perf_counter() - start
    if b" 200 " not in data.split(b"\r\n", 1)[0]:
        return elapsed, f"status {data[:40]!r}", b""
    return elapsed, None, data.partition(b"\r\n\r\n")[2]


def slow_phase(agent: Agent, policies: Path, slow: int, seconds: float) -> dict[str, float]:
    """The probe and the file edits here; the slow clients in a child process."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--slow-worker", agent.host, str(agent.port), str(slow),
         str(seconds + 3.0)], stdout=subprocess.PIPE, text=True)
    time.sleep(3.0)  # let them all connect
    latencies: list[float] = []
    errors: dict[str, int] = {}
    reconciles: set[float] = set()
    end = time.monotonic() + seconds
    next_touch = time.monotonic() + 2.0
    while time.monotonic() < end:
        if time.monotonic() >= next_touch:
            with policies.open("a") as file:  # a new version of the file
                file.write(f"# edited at {time.time()}\n")
            next_touch += 2.0
        elapsed, error, body = get(agent.host, agent.port, "/healthz")
        if error:
            errors[error] = errors.get(error, 0) + 1
        else:
            latencies.append(elapsed)
            reconciles.add(json.loads(body)["last_reconcile_success"])
        time.sleep(0.2)
    out, _ = child.communicate(timeout=60)
    counts = json.loads(out.strip().splitlines()[-1])
    row = summary("slow", latencies, errors)
    row["reconciles"] = len(reconciles) - 1
    print(f"        {slow} slow clients opened {counts['opened']:,} connections, the agent "
          f"closed {counts['closed_by_agent']:,}; reconciles seen by /healthz meanwhile: "
          f"{row['reconciles']} (the policy file edited every 2 s)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--slow", type=int, default=2000)
    parser.add_argument("--slow-seconds", type=float, default=20.0)
    parser.add_argument("--open-files", type=int, default=OPEN_FILES,
                        help="the agent's open-files limit (soft and hard)")
    parser.add_argument("--slow-worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="4 clients for 1 s, 8 slow clients for 1 s (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.slow, args.slow_seconds = 4, 1.0, 8, 1.0
    if args.slow_worker:
        host, port, slow, seconds = args.slow_worker
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(slow_clients(host, int(port), int(slow), float(seconds)))
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        shutil.copytree(EXAMPLES / "policies", policies)
        agent = Agent(policies / "shop-clients.yaml", args.open_files)
        try:
            idle = asyncio.run(idle_phase(agent))
            load = asyncio.run(load_phase(agent, args.clients, args.seconds, args.period))
            print(f"        {args.clients} clients, one request each every {args.period} s; "
                  f"p99 loaded / idle: {load['p99_ms'] / max(idle['p99_ms'], 1e-9):.1f}x",
                  flush=True)
            slow = slow_phase(agent, policies / "shop-clients.yaml", args.slow,
                              args.slow_seconds)
            print(f"        /healthz p99 with slow clients / idle p99: "
                  f"{slow['p99_ms'] / max(idle['p99_ms'], 1e-9):.1f}x", flush=True)
            emfile = [line for line in agent.lines if "Too many open files" in line]
            print(f"agent RSS {agent.rss_kib() / 1024:.0f} MiB; 'Too many open files' in its "
                  f"log: {len(emfile)}", flush=True)
            print(format_load(load_before, load_average()), flush=True)
        finally:
            agent.stop()


if __name__ == "__main__":
    main()

"""The agent under hostile input and load: an alias bomb leaves its memory and health as
they were; its HTTP core bounds slow clients, held connections and disconnects."""

from __future__ import annotations

import logging
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_support import GATEWAY, AgentProcess, copy_examples, get, get_json, poll_until
from egressgw.agent import ListenAddress
from egressgw.agent.httpcore import BoundedHTTPServer, connection_cap
from egressgw.errors import ConfigError

# 9 levels of 9 aliases each in apiVersion: 9^9 (387 million) strings once expanded.
BOMB = "\n".join(
    ["kind: CiliumEgressGatewayPolicy",
     'metadata: {name: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]}']
    + [f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    + ["apiVersion: *a8"]
) + "\n"


def status_kib(pid: int, field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match, field
    return int(match[1])


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[AgentProcess, Path]]:
    policies, inventory = copy_examples(tmp_path)
    process = AgentProcess([
        "--policies", str(policies), "--inventory", str(inventory), "--node", GATEWAY,
        "--datapath", "model", "--listen", "127.0.0.1:0", "--nat-map-stats-interval", "1s",
        "--poll-interval", "0.1s",
    ], argv_prefix=["prlimit", "--nofile=1024:1024", "--"])
    try:
        process.wait_for_log("applied ")
        yield process, policies
    finally:
        process.kill()


def test_an_alias_bomb_is_rejected_without_growing_the_agent(
        agent: tuple[AgentProcess, Path]) -> None:
    process, policies = agent
    assert len(BOMB) < 1024
    pid = process.process.pid
    get(process.url + "/metrics")  # everything the API needs is loaded before measuring
    before = status_kib(pid, "VmHWM")
    mark = len(process.lines)
    staged = policies / "zz-bomb.tmp"  # not *.yaml: the agent reads the bomb whole
    staged.write_text(BOMB)
    staged.rename(policies / "zz-bomb.yaml")
    line = process.wait_for_log("reconcile rejected", after=mark)
    assert "zz-bomb.yaml:3: YAML aliases (*name) are not accepted" in line
    assert len(line) < 300
    # The error is logged just before it is recorded: wait for /healthz to show it.
    def failing() -> dict[str, object] | None:
        body = get_json(process.url + "/healthz")
        return body if body["reconcile_failing"] else None

    health = poll_until(failing, what="reconcile_failing")
    assert health["status"] == "ok"
    assert len(str(health["last_error"])) < 200
    # The peak resident memory moved by less than 20 MiB (the bomb would take gigabytes).
    assert status_kib(pid, "VmHWM") - before < 20 * 1024


def test_held_connections_cannot_starve_a_reconcile(agent: tuple[AgentProcess, Path]) -> None:
    """With 1,024 open files, 1,500 idle connections: reconciles and /healthz still work."""
    process, _policies = agent
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = re.findall(r"http://([\d.]+):(\d+)", process.url)[0]
    held = []
    try:
        for _ in range(1500):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.0\r\n")  # never finished
            held.append(sock)
        assert get(process.url + "/healthz")[0] == 200
        mark = len(process.lines)
        process.signal(signal.SIGHUP)  # re-reads the files and re-applies the rules
        process.wait_for_log("applied ", after=mark)
        assert get(process.url + "/healthz")[0] == 200
    finally:
        for sock in held:
            sock.close()
    assert not [line for line in process.lines if "Too many open files" in line]
    assert not [line for line in process.lines if "Traceback" in line]


# -- the bounded core, in process ---------------------------------------------------------


def serve(**kwargs: object) -> tuple[BoundedHTTPServer, int, list[bytes]]:
    heads: list[bytes] = []

    def handle(sock: socket.socket, address: tuple[str, int], head: bytes) -> None:
        heads.append(head)
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    server = BoundedHTTPServer(listener, handle, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server, listener.getsockname()[1], heads


def ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return sock.recv(100)


def test_a_request_head_must_arrive_within_the_timeout() -> None:
    server, port, _ = serve(header_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            start = time.monotonic()
            slow.sendall(b"GET / HTTP/1.0\r\n")
            for _ in range(3):
                time.sleep(0.2)
                try:
                    slow.sendall(b"X")  # one byte at a time does not extend the deadline
                except OSError:
                    break
            assert slow.recv(100) == b""  # closed by the server
            assert 0.4 < time.monotonic() - start < 3.0
        assert ask(port).endswith(b"ok")
    finally:
        server.stop()


def test_at_the_cap_the_oldest_waiting_connection_makes_room() -> None:
    server, port, heads = serve(max_open=4, header_timeout=30.0)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)
        assert ask(port).endswith(b"ok")  # a fifth client is answered
        assert held[0].recv(100) == b""  # the oldest idle one was closed for it
        assert heads == [b"GET / HTTP/1.0\r\n\r\n"]
        assert server.dropped >= 1
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_an_oversized_head_is_closed_not_buffered() -> None:
    server, port, heads = serve()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(b"GET / HTTP/1.0\r\n" + b"X-A: " + b"a" * 100_000)
                answer = sock.recv(100)
            except ConnectionResetError:
                answer = b""  # closed while the rest was still arriving
            assert answer == b""
        assert heads == []
    finally:
        server.stop()


def test_a_client_that_goes_away_leaves_one_quiet_line(caplog: pytest.LogCaptureFixture) -> None:
    started = threading.Event()

    def handle(sock: socket.socket, address: tuple[str, int], head: bytes) -> None:
        started.set()
        time.sleep(0.3)  # the client resets meanwhile
        for _ in range(50):
            sock.sendall(b"x" * 65536)

    listener = socket.create_server(("127.0.0.1", 0))
    server = BoundedHTTPServer(listener, handle)
    server.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="egressgw.agent.httpcore"):
            client = socket.create_connection(listener.getsockname(), timeout=5)
            linger_zero = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # close() sends a RST
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert started.wait(5)
            client.close()  # RST
            time.sleep(1.0)
    finally:
        server.stop()
    records = [r for r in caplog.records if r.name == "egressgw.agent.httpcore"]
    assert records and all(r.levelno == logging.DEBUG and r.exc_info is None for r in records)


def test_the_connection_cap_keeps_descriptors_for_the_agent() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = max(16, min(4096, soft - 256))
    assert connection_cap() == expected
    done = subprocess.run(
        ["prlimit", "--nofile=1024:1024", "--", shutil.which("python3") or "python3", "-c",
         "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"],
        capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1024"  # what the agent tests above run with: cap 768


def test_the_listen_backlog_is_real() -> None:
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2), which scripts/test.sh installs as root")
    from egressgw.agent import AgentHTTPServer  # noqa: PLC0415

    class Api:  # the server core never calls the API before a request
        pass

    server = AgentHTTPServer(ListenAddress("127.0.0.1", 0), Api())  # type: ignore[arg-type]
    try:
        port = server.address.port
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True, check=True).stdout.split()
        # ss shows a listener's backlog as Send-Q; the kernel caps it at somaxconn.
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(out[2]) == min(1024, somaxconn)
    finally:
        server.stop()


@pytest.mark.parametrize("text", ["0:9964", "0x0:9964", "localhost:9964", "::1:9964",
                                  "[fe80::1%eth0]:9964", "127.0.0.1:99999",
                                  "127.0.0.1:\u0661"])
def test_listen_takes_only_ip_literals(text: str) -> None:
    with pytest.raises(ConfigError, match="--listen"):
        ListenAddress.parse(text)


def test_listen_knows_loopback_from_the_rest() -> None:
    assert ListenAddress.parse("127.0.0.1:9964").is_loopback
    assert ListenAddress.parse("[::1]:9964").is_loopback
    assert not ListenAddress.parse("0.0.0.0:9964").is_loopback
    assert not ListenAddress.parse("[::]:9964").is_loopback
    assert ListenAddress.parse("[::]:9964").url() == "http://[::]:9964"

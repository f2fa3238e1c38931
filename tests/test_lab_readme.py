"""The README's lab commands, run as written (a unique lab name substituted), and
``lab load``'s flags, hold, progress and process handling."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egressgw.lab import remove_lab
from netns import unique_name

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def egressgw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "egressgw"), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=ROOT)


@pytest.mark.parametrize(("flags", "why"), [
    (["--connections", "-1"], "--connections: -1: expected 1..100000"),
    (["--connections", "0"], "--connections: 0: expected"),
    (["--parallel", "0"], "--parallel: 0: expected"),
    (["--timeout", "0"], "--timeout: 0.0: expected"),
    (["--timeout", "inf"], "--timeout: inf: expected"),
    (["--hold", "-1"], "--hold: -1.0: expected"),
    (["--hold", "nan"], "--hold: nan: expected"),
])
def test_bad_load_flags_are_one_line_and_exit_2(flags: list[str], why: str) -> None:
    done = egressgw("lab", "load", "--name", "nosuchlab", "--to", "198.51.100.10:443", *flags)
    assert done.returncode == 2
    assert done.stderr.strip() == f"egressgw: error: {why}" or (
        done.stderr.count("\n") == 1 and why in done.stderr)
    assert "Traceback" not in done.stderr


def readme_lab_commands() -> list[str]:
    """The shell commands of the README's "real gateway" block, continuations joined."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(egressgw lab up.*?)```", text, re.S)
    assert block is not None, "the README's lab block moved"
    joined = block[1].replace("\\\n", " ")
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.strip()]


def named(command: str, name: str) -> str:
    """The command for lab ``name`` instead of the default lab ``lab``."""
    command = command.replace("egw-lab-", f"egw-{name}-")
    return re.sub(r"\begressgw lab (\w+)", rf"egressgw lab \1 --name {name}", command)


def wait_for_rules(netns: str, agent: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet",
                                 "egressgw"], capture_output=True, text=True, check=False)
        if listed.returncode == 0 and "chain snat4_" in listed.stdout:
            return
        assert agent.poll() is None, f"the agent ended: {agent.communicate()[1]}"
        time.sleep(0.5)
    raise AssertionError("the agent applied no rules")


@pytest.mark.kernel
def test_the_readme_lab_commands_run_as_written() -> None:
    name = unique_name()
    commands = [named(c, name) for c in readme_lab_commands()]
    assert [c.split()[0] for c in commands][:2] == ["egressgw", "ip"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    background: list[subprocess.Popen[str]] = []
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            if command.endswith("&"):
                background.append(subprocess.Popen(
                    ["bash", "-c", command[:-1]], cwd=ROOT, env=env, text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
                if " agent " in command:
                    # As a reader would: go on once the agent has put its rules in place
                    # (connections opened before would not be masqueraded).
                    wait_for_rules(f"egw-{name}-gw", background[-1])
                continue
            if "lab down" in command:
                break
            deadline = time.monotonic() + 60
            while True:  # the agent recounts every 5 s and the load takes a few seconds
                done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT,
                                      env=env, capture_output=True, text=True, timeout=60,
                                      check=False)
                settled = done.returncode == 0 and (
                    "statedb nat-stats" not in command or re.search(r"\s64\n", done.stdout))
                if settled or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert done.returncode == 0, f"{command}: {done.stderr}"
            outputs[command] = done.stdout
        stats = next(out for c, out in outputs.items() if "statedb nat-stats" in c)
        assert re.search(r"TCP\s+203\.0\.113\.\d+\s+198\.51\.100\.10:443\s+64\n", stats), stats
        metrics = next(out for c, out in outputs.items() if "metrics" in c)
        assert "nat_endpoint_max_connection" in metrics
        down = subprocess.run(["bash", "-c", commands[-1]], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert down.returncode == 0, down.stderr
        ended = [process.communicate(timeout=30) for process in background]
        for _out, err in ended:  # the agent and the load end with the lab, quietly
            assert "Traceback" not in err, err
        load_out = next(out for out, _err in ended if "attempted" in out)
        # lab down may stop it before the last attempts timed out: those are "stopped".
        assert re.search(r"tcp 192\.0\.2\.10 -> 198\.51\.100\.10:443: \d+ attempted, "
                         r"64 succeeded", load_out), load_out
    finally:
        for process in background:
            if process.poll() is None:
                process.kill()
                process.wait()
        remove_lab(name)


@pytest.mark.kernel
def test_load_holds_reports_progress_and_dies_with_its_command() -> None:
    name = unique_name()
    try:
        assert egressgw("lab", "up", "--name", name, "--pods", "1").returncode == 0
        started = time.monotonic()
        held = egressgw("lab", "load", "--name", name, "--to", "198.51.100.10:443",
                        "--connections", "5", "--hold", "6")
        assert held.returncode == 0, held.stderr
        assert time.monotonic() - started >= 6
        assert "5 attempted, 5 succeeded, 0 failed" in held.stdout
        assert "holding: 5 of 5 connections open, 5 s of 6 s" in held.stderr

        def load_processes() -> list[str]:
            pids = subprocess.run(["ip", "netns", "pids", f"egw-{name}-client"],
                                  capture_output=True, text=True, check=False).stdout.split()
            return [p for p in pids
                    if b"egressgw.lab.load" in Path(f"/proc/{p}/cmdline").read_bytes()]

        for signum, status in ((signal.SIGKILL, -9), (signal.SIGINT, 130)):
            cli = subprocess.Popen(
                [str(BIN / "egressgw"), "lab", "load", "--name", name,
                 "--to", "198.51.100.10:443", "--connections", "3", "--hold", "600"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            assert cli.stdout is not None
            assert "3 succeeded" in cli.stdout.readline()
            assert len(load_processes()) == 1
            cli.send_signal(signum)
            _, err = cli.communicate(timeout=20)
            assert cli.returncode == status
            assert "Traceback" not in err
            deadline = time.monotonic() + 10
            while load_processes() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert load_processes() == [], signum
    finally:
        remove_lab(name)

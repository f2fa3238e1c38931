"""``kill -9`` of the agent in the middle of reconciles: the ruleset is always old or new.

In a network namespace of its own (removed at the end), the agent applies version A of a
policy (one destination) or version B (``--cidrs`` destinations, so an apply takes a
while). Each round starts the agent on one version, waits for its rules, swaps the file
to the other version, sends SIGHUP (a forced reconcile), waits a random 0-``--max-delay``
ms and kills the agent with SIGKILL. Then ``nft list table inet egressgw`` must be
exactly version A's or version B's table, never a mix, an empty table or none.
Prints how many rounds ended on the old version, on the new one, and on neither
(the requirement: 0), with the time an apply of version B takes.

Root only (network namespaces, nftables); no traffic is sent.

    .venv/bin/python bench/bench_agent_kill9.py [--rounds 100] [--cidrs 2000] [--quick]

``--quick`` (a smoke run): 2 rounds, 50 destinations, kills within 200 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchutil import egressgw_command, format_load, load_average

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata:
  name: kill9
spec:
  selectors:
    - podSelector:
        matchLabels:
          app: client
  destinationCIDRs: [{cidrs}]
  egressGateway:
    nodeSelector:
      matchLabels:
        egress-gateway: "true"
    egressIP: {egress_ip}
"""

INVENTORY = """\
nodes:
  - name: gw
    internalIP: 192.0.2.1
    labels: {egress-gateway: "true"}
    interfaces:
      - name: ext0
        addresses: [203.0.113.10/24, 203.0.113.11/24]
  - name: worker
    internalIP: 192.0.2.2
endpoints:
  - name: client
    labels: {app: client}
    ips: [192.0.2.10, 192.0.2.11, 192.0.2.12, 192.0.2.13]
    node: worker
"""


def table(netns: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet",
                           "egressgw"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else f"<no table: {done.stderr.strip()}>"


class Agent:
    def __init__(self, netns: str, policies: Path, inventory: Path) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, *egressgw_command(), "agent",
             "--policies", str(policies),
             "--inventory", str(inventory), "--node", "gw", "--listen", "127.0.0.1:0",
             "--nat-map-stats-interval", "0", "--poll-interval", "10s"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, after: int = 0, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines[after:]):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"no {text!r} from the agent:\n" + "".join(self.lines))
                self._changed.wait(0.1)

    def kill(self) -> None:
        # ip netns exec execs the agent in place: the pid is the agent's.
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--cidrs", type=int, default=2000)
    parser.add_argument("--max-delay", type=float, default=1500.0, help="milliseconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, 50 destinations, kills within 200 ms (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.cidrs, args.max_delay = 2, 50, 200.0
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, nftables)")
    rng = random.Random(args.seed)
    load_before = load_average()
    netns = f"egw-kill9-{os.getpid()}{secrets.token_hex(2)}"
    work = Path(f"/tmp/{netns}")
    work.mkdir()
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        policies = work / "policies"
        policies.mkdir()
        inventory = work / "inventory.yaml"
        inventory.write_text(INVENTORY)
        many = ", ".join(f"198.18.{i // 256}.{i % 256}/32" for i in range(args.cidrs))
        versions = {
            "A": POLICY.format(cidrs="198.51.100.0/24", egress_ip="203.0.113.10"),
            "B": POLICY.format(cidrs=many, egress_ip="203.0.113.11"),
        }
        expected: dict[str, str] = {}
        applies: list[float] = []
        for name, text in versions.items():  # each version's table, applied to completion
            (policies / "p.yaml").write_text(text)
            agent = Agent(netns, policies, inventory)
            agent.wait_for("applied ")
            start = time.monotonic()
            mark = len(agent.lines)
            agent.process.send_signal(signal.SIGHUP)
            agent.wait_for("applied ", after=mark)
            applies.append(time.monotonic() - start)
            agent.kill()
            expected[name] = table(netns)
        print(f"version B: {args.cidrs} destinations x 4 pods; a forced reconcile takes "
              f"{applies[1]:.2f} s (A: {applies[0]:.2f} s)", flush=True)
        outcome = {"old": 0, "new": 0, "neither": 0}
        current = "A"
        for round_ in range(args.rounds):
            other = "B" if current == "A" else "A"
            (policies / "p.yaml").write_text(versions[current])
            agent = Agent(netns, policies, inventory)
            agent.wait_for("applied ")
            staged = policies / "p.tmp"
            staged.write_text(versions[other])
            staged.rename(policies / "p.yaml")
            agent.process.send_signal(signal.SIGHUP)
            time.sleep(rng.uniform(0, args.max_delay) / 1000)
            agent.kill()
            found = table(netns)
            if found == expected[current]:
                outcome["old"] += 1
            elif found == expected[other]:
                outcome["new"] += 1
                current = other
            else:
                outcome["neither"] += 1
                print(f"round {round_}: neither version:\n{found[:2000]}", flush=True)
        print(f"{args.rounds} kill -9 rounds: {outcome['old']} old ruleset, {outcome['new']} "
              f"new, {outcome['neither']} neither", flush=True)
        print(format_load(load_before, load_average()), flush=True)
        sys.exit(1 if outcome["neither"] else 0)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

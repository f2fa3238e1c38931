"""Hostile input: every case of issue 13 ends in one short line and exit 2, never a
traceback, a hang or a gigabyte; no input text reaches the nft script."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from egressgw.config import NodePortRange
from egressgw.datapath.kernel.ruleset import render_ruleset
from egressgw.errors import InputError, excerpt
from egressgw.net import parse_cidr, parse_ip, parse_ip_interface
from egressgw.policy import load_inventory, load_policies
from egressgw.policy.rules import EgressRule, RuleKind
from egressgw.sim.workload import load_workload, parse_workload
from egressgw.yamlload import load_yaml_documents

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "src" / "egressgw" / "examples"
POLICY = (EXAMPLES / "policies" / "shop-clients.yaml").read_text()
INVENTORY = EXAMPLES / "inventory.yaml"
SEED_WORKLOAD = EXAMPLES / "workloads" / "seed-scenario.yaml"
NAT_LIST = EXAMPLES / "seed-node-nat-list.txt"
EGRESSGW = str(Path(sys.executable).with_name("egressgw"))
# A billion laughs in 1 KB: 9^9 strings once expanded.
LAUGHS = "\n".join(
    ['apiVersion: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    + ["kind: CiliumEgressGatewayPolicy"]
) + "\n"
MAX_LINE = 400  # the CLI's backstop; the messages tested here are far shorter


def run(*argv: str, stdin: int | None = subprocess.DEVNULL, stdout: int | None = None,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EGRESSGW, *argv], stdin=stdin,
                          stdout=subprocess.PIPE if stdout is None else stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120, check=False,
                          **kwargs)  # type: ignore[call-overload]


def assert_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("egressgw: error: "), lines[0]
    assert len(lines[0]) <= 300, len(lines[0])
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- YAML: aliases, duplicate keys, depth, numbers, encoding ----------------------------


def test_a_billion_laughs_is_refused_at_its_first_alias_quickly(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS) < 1024
    start = time.process_time()
    with pytest.raises(InputError) as caught:
        load_policies(path)
    assert time.process_time() - start < 1.0
    message = str(caught.value)
    assert message == (f"{path}:2: YAML aliases (*name) are not accepted: write out the "
                       "value anchored at line 1")
    # The same file for every YAML reader.
    with pytest.raises(InputError, match="aliases"):
        load_workload(path)
    with pytest.raises(InputError, match="aliases"):
        load_inventory(path)


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(InputError, match=r"w.yaml:1: YAML aliases"):
        load_yaml_documents("name: &r [*r]\n", "w.yaml")


def test_an_alias_to_a_scalar_is_refused_too() -> None:
    with pytest.raises(InputError, match=r"p.yaml:2: YAML aliases .* anchored at line 1"):
        load_yaml_documents("a: &x 1\nb: *x\n", "p.yaml")


def test_duplicate_keys_are_an_error_naming_the_second(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("kind: CiliumEgressGatewayPolicy",
                                   "kind: CiliumEgressGatewayPolicy\nkind: Other"))
    line = POLICY.splitlines().index("kind: CiliumEgressGatewayPolicy") + 2
    with pytest.raises(InputError) as caught:
        load_policies(path)
    assert str(caught.value) == (f"{path}:{line}: duplicate key 'kind' (kubectl's strict "
                                 "validation refuses it too)")


def test_nesting_1000_deep_is_an_error_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("clients:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(999))
                    + "  " * 1000 + "v\n")
    with pytest.raises(InputError, match=r"w.yaml(:\d+)?: (nested deeper than 64 levels|"
                                         r"invalid YAML.*nesting depth)"):
        load_workload(path)
    flow = tmp_path / "flow.yaml"
    flow.write_text("a: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(InputError):
        load_workload(flow)


@pytest.mark.parametrize("number", ["9" * 5000, "-" + "1" * 40, "0x" + "f" * 40])
def test_long_integers_are_refused_with_their_line(number: str) -> None:
    with pytest.raises(InputError) as caught:
        load_yaml_documents(f"a: 1\nb: {number}\n", "n.yaml")
    assert str(caught.value).startswith("n.yaml:2: a number of ")
    assert len(str(caught.value)) < 100


def test_an_impossible_date_is_an_error_not_a_value_error() -> None:
    with pytest.raises(InputError, match=r"d.yaml:1: invalid YAML: invalid date '2026-13-45'"):
        load_yaml_documents("creationTimestamp: 2026-13-45\n", "d.yaml")


def test_invalid_utf8_names_its_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(b"name: x\nclients: \xff\n")
    with pytest.raises(InputError) as caught:
        load_workload(path)
    assert str(caught.value) == f"{path}:2: not valid UTF-8 (byte 0xff at offset 17)"


def test_error_excerpts_are_short_and_escaped() -> None:
    assert excerpt("x" * 10_000) == repr("x" * 40) + "..."
    assert excerpt("a\nb}; flush ruleset") == repr("a\nb}; flush ruleset")
    assert excerpt(10**5000 - 1) == "a number of about 5000 digits"
    assert excerpt([[1]] * 9) == "a list of 9 items"


def test_a_huge_string_value_is_quoted_short(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("name: shop-clients", "name: " + "A" * 500_000))
    with pytest.raises(InputError) as caught:
        load_policies(path)
    assert len(str(caught.value)) < len(str(path)) + 200


# -- addresses: one parser, zones refused -----------------------------------------------

ZONED = ["fe80::1%eth0", "fe80::1%x } } ; flush ruleset ; table ip t {", "2001:db8::1%0"]


@pytest.mark.parametrize("text", ZONED)
def test_the_one_parser_refuses_zones(text: str) -> None:
    with pytest.raises(ValueError, match=r"zones|too long"):
        parse_ip(text)
    with pytest.raises(ValueError, match=r"zones|too long"):
        parse_cidr(text.replace("%", "/64%", 1) if "/" not in text else text)
    with pytest.raises(ValueError):
        parse_ip_interface(text)


@pytest.mark.parametrize(("old", "new"), [
    ("egressIP: 203.0.113.10", "egressIP: 'fe80::1%eth0'"),
    ("- 198.51.100.0/24", "- 'fe80::/64%x } ; flush ruleset'"),
    ("- 198.51.100.200/32", "- '2001:db8::%lo/128'"),
])
def test_policies_refuse_zones_everywhere(tmp_path: Path, old: str, new: str) -> None:
    path = tmp_path / "p.yaml"
    assert old in POLICY
    path.write_text(POLICY.replace(old, new))
    with pytest.raises(InputError, match="IPv6 zone"):
        load_policies(path)


@pytest.mark.parametrize(("old", "new"), [
    ("internalIP: 192.0.2.1", "internalIP: 'fe80::1%eth0'"),
    ("ips: [192.0.2.10", "ips: ['2001:db8::10%eth0'"),
    ("203.0.113.10/24", "'fe80::1%eth0/64'"),
])
def test_inventories_refuse_zones_everywhere(tmp_path: Path, old: str, new: str) -> None:
    text = INVENTORY.read_text()
    assert old in text, old
    path = tmp_path / "inventory.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(InputError, match="IPv6 zones"):
        load_inventory(path)


def test_ruleset_refuses_text_and_zoned_addresses_and_prints_from_integers() -> None:
    source = ipaddress.IPv6Address("2001:db8:1::10")
    network = ipaddress.IPv6Network("2001:db8:100::/64")
    egress = ipaddress.IPv6Address("2001:db8:203::10")
    good = EgressRule(source, network, RuleKind.MASQUERADE, egress, "gw", policy="p")
    script = render_ruleset([good], NodePortRange())
    hostile = "x } } ; flush ruleset ; table ip t {"
    zoned = ipaddress.IPv6Address(f"2001:db8:203::10%{hostile}")
    assert str(zoned).endswith(hostile)  # what ipaddress would print into the script
    bad_rules = [
        EgressRule(source, network, RuleKind.MASQUERADE, zoned, "gw", policy="p"),
        EgressRule(ipaddress.IPv6Address(f"2001:db8:1::10%{hostile}"), network,
                   RuleKind.MASQUERADE, egress, "gw", policy="p"),
        EgressRule(source, ipaddress.IPv6Network(f"2001:db8:100::%{hostile}/64"),
                   RuleKind.MASQUERADE, egress, "gw", policy="p"),
    ]
    for rule in bad_rules:
        with pytest.raises(InputError, match="IPv6 zone"):
            render_ruleset([rule], NodePortRange())
    text_rule = object.__new__(EgressRule)
    for name, value in (("source_ip", f"192.0.2.1 . 0.0.0.0/0 : accept ; {hostile}"),
                        ("destination", network), ("kind", RuleKind.NO_GATEWAY),
                        ("egress_ip", None), ("gateway_node", None), ("gateway_ip", None),
                        ("policy", "p")):
        object.__setattr__(text_rule, name, value)
    with pytest.raises(InputError, match="address object"):
        render_ruleset([text_rule], NodePortRange())
    # The good script: every element line holds only address characters.
    elements = [line.strip() for line in script.splitlines() if ": goto" in line]
    assert elements == ["2001:db8:1::10 . 2001:db8:100::/64 : goto snat6_2001_db8_203__10,"]
    assert hostile not in script and "%" not in script


# -- workloads, flows, snapshots: bounds with clear errors ------------------------------


def workload(**client: object) -> dict[str, object]:
    group: dict[str, object] = {"count": 10, "cidr": "10.244.0.0/24",
                                "arrivals": {"rate": 10}, "duration": "30s"}
    group.update(client)
    return {"egress_ips": ["10.1.0.0"],
            "destinations": [{"name": "b", "address": "10.2.0.0:8080"}],
            "clients": [group]}


@pytest.mark.parametrize(("client", "message"), [
    ({"duration": {"distribution": "lognormal", "median": "1m", "sigma": 1000}},
     "clients[0].duration.sigma: 1000: at most 5"),
    ({"duration": {"distribution": "lognormal", "median": "1m", "sigma": -0.0}},
     "clients[0].duration.sigma: must be a positive number"),
    ({"arrivals": {"ramp": {"from": 1, "to": 1e308, "over": "1m"}}},
     "clients[0].arrivals.ramp.to: 1e+308/s: at most 100,000/s"),
    ({"arrivals": {"rate": 1e9}}, "clients[0].arrivals.rate: 1e+09/s: at most 100,000/s"),
    ({"arrivals": {"rate": "1e12/s"}}, "clients[0].arrivals.rate: must be a rate"),
    ({"count": 10**9, "cidr": "10.0.0.0/1"}, "clients[0].count: 1000000000: at most 1,000,000"),
    ({"keepalive": 1e-9}, "clients[0].keepalive: 1e-09 s: 0 (none) or at least 1 s"),
    ({"duration": 1e308}, "clients[0].duration: 1e+308 s: at most 31622400 s"),
    ({"name": {"a": 1}}, "clients[0].name: must be a string"),
    ({"cidr": "10.244.0.0/24%eth0"}, "clients[0].cidr: invalid CIDR"),
])
def test_workload_values_that_would_hang_or_blow_up_are_refused(
        client: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_workload(workload(**client), source="w.yaml")
    assert str(caught.value).startswith(f"w.yaml: {message}"), str(caught.value)


def test_too_many_client_groups_are_refused() -> None:
    doc = workload()
    doc["clients"] = [dict(doc["clients"][0]) for _ in range(1001)]  # type: ignore[index]
    with pytest.raises(InputError, match="clients: 1,001 client groups: at most 1,000"):
        parse_workload(doc, source="w.yaml")


def test_a_yaml_5000_digit_number_in_a_workload_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(workload()).replace("rate: 10", "rate: " + "9" * 5000))
    with pytest.raises(InputError, match=r"w.yaml:\d+: a number of 5000 characters"):
        load_workload(path)


# -- the CLI: one line, exit 2 ---------------------------------------------------------


@pytest.mark.parametrize(("argv", "needles"), [
    (["nat-stats", "--from", str(NAT_LIST), "--node-port-range", "9" * 5000 + ",2"],
     ["--node-port-range", "..."]),
    (["nat-stats", "--from", str(NAT_LIST), "--nat-map-stats-entries", "9" * 5000],
     ["--nat-map-stats-entries", "..."]),
    (["statedb", "nat-stats", "--server", ""], ["--server"]),
    (["statedb", "nat-stats", "--server", "http://[::1"], ["--server", "not a URL"]),
    (["simulate", str(SEED_WORKLOAD), "--seed", "-1"], ["--seed"]),
    (["simulate", str(SEED_WORKLOAD), "--nat-map-stats-interval", "0.0000000001"],
     ["--nat-map-stats-interval"]),
    (["simulate", str(SEED_WORKLOAD), "--duration", "9" * 5000 + "s"], ["--duration"]),
    (["lab", "apply", "--egress-ip", "abc"], ["--egress-ip", "'abc'"]),
    (["lab", "apply", "--exclude", "10.0.0.0/33"], ["--exclude", "netmask"]),
    (["lab", "load", "--to", "198.51.100.10:443", "--connections", "-1"], ["--connections"]),
    (["agent", "--listen", "0:9964", "--policies", "p", "--inventory", "i", "--node", "n",
      "--datapath", "model"], ["--listen"]),
    (["agent", "--listen", "0x0:9964", "--policies", "p", "--inventory", "i", "--node", "n",
      "--datapath", "model"], ["--listen"]),
    (["agent", "--nat-map-stats-interval", "0.0000000001", "--policies", "p",
      "--inventory", "i", "--node", "n", "--datapath", "model"],
     ["--nat-map-stats-interval", "at least 1 s"]),
    (["nat-stats", "-o", "xml"], ["--output", "see 'egressgw nat-stats --help'"]),
    (["demo", "--seed", "-1"], ["--seed"]),
    (["plan", str(SEED_WORKLOAD), "--max-egress-ips", "0"], ["--max-egress-ips"]),
    (["no-such-command"], ["No such command"]),
    (["egress", "list", "--policies"], ["requires an argument"]),
])
def test_bad_flags_are_one_line_and_exit_2(argv: list[str], needles: list[str]) -> None:
    assert_one_line(run(*argv), *needles)


def test_hostile_files_are_one_line_and_exit_2(tmp_path: Path) -> None:
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(LAUGHS)
    assert_one_line(run("egress", "list", "--policies", str(laughs), "--inventory",
                        str(INVENTORY)), "aliases")
    assert_one_line(run("simulate", str(laughs)), "aliases")
    bad_utf8 = tmp_path / "w.yaml"
    bad_utf8.write_bytes(SEED_WORKLOAD.read_bytes().replace(b"backend", b"back\xffend", 1))
    assert_one_line(run("simulate", str(bad_utf8)), "not valid UTF-8")
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "{b: " * 1000 + "1" + "}" * 1000 + "\n")
    assert_one_line(run("simulate", str(deep)))
    csv = tmp_path / "flows.csv"
    csv.write_bytes(b"start,duration,source,destination,port,protocol\n0,1,10.0.0.\xff,"
                    b"10.2.0.0,80,tcp\n")
    replay = tmp_path / "replay.yaml"
    replay.write_text("duration: 1m\nreplay:\n  file: flows.csv\n  egress_ips: [10.1.0.0]\n")
    assert_one_line(run("simulate", str(replay)), "flows.csv:2: not valid UTF-8")
    csv.write_text("start,duration,source,destination,port,protocol\n0,1,10.0.0.1,"
                   "10.2.0.0,\u0661\u0662,tcp\n")
    assert_one_line(run("simulate", str(replay)), "port: '١٢' is not a port number")
    snapshot = tmp_path / "s.txt"
    snapshot.write_text("# IPFamily Proto EgressIP RemoteAddr Count\n"
                        "ipv4 TCP 10.1.0.0 10.2.0.0:8080 100\n")
    assert_one_line(run("forecast", f"{snapshot}@0", f"{snapshot}@99999999999999"),
                    "year 9999")
    assert_one_line(run("forecast", f"{snapshot}@0", f"{snapshot}@1e308"), "year 9999")
    assert_one_line(run("forecast", f"{snapshot}@0", f"{snapshot}@" + "9" * 5000), "...")


def test_closed_stdin_and_a_full_disk_are_one_line() -> None:
    closed = run("nat-stats", "--from", "-", stdin=None, pass_fds=(),
                 preexec_fn=lambda: os.close(0))
    assert_one_line(closed, "standard input is closed")
    with open("/dev/full", "w") as full:
        done = run("nat-stats", "--from", str(NAT_LIST), stdout=full.fileno())
    assert_one_line(done, "No space left on device")


def test_a_closed_pipe_on_stdout_is_quiet() -> None:
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = run("nat-stats", "--from", str(NAT_LIST), stdout=writer)
    finally:
        os.close(writer)
    assert done.returncode in (0, 1)  # click exits 1 on EPIPE, quietly
    assert done.stderr == ""


def test_usage_errors_never_print_more_than_one_line() -> None:
    done = run("simulate")
    line = assert_one_line(done, "Missing argument")
    assert re.search(r"see 'egressgw simulate --help'", line)


def test_plan_refuses_more_client_groups_than_it_can_estimate() -> None:
    from egressgw.sim.plan import MAX_PLAN_FLOWS, estimate  # noqa: PLC0415
    from egressgw.sim.simulate import SimSettings  # noqa: PLC0415

    doc = workload()
    doc["clients"] = [dict(doc["clients"][0], cidr=f"10.{i // 256}.{i % 256}.0/24")  # type: ignore[index]
                      for i in range(MAX_PLAN_FLOWS + 1)]
    parsed = parse_workload(doc, source="w.yaml")
    with pytest.raises(InputError, match=r"w.yaml: clients: 201 \(client group, destination\) "
                                         r"pairs: plan estimates at most 200"):
        estimate(parsed, SimSettings(duration=60.0))


def test_a_lab_child_dies_with_the_cli_even_after_kill_9() -> None:
    """lab load's generator asks for PR_SET_PDEATHSIG: it outlives no killed CLI."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         # lab load's generator as the lab starts it (--parent), on loopback only: one
         # refused connection to 127.0.0.1:1, then a 60 s hold.
         "import os, subprocess, sys, time\n"
         "child = subprocess.Popen([sys.executable, '-m', 'egressgw.lab.load', '--to',\n"
         "    '127.0.0.1:1', '--from', '127.0.0.1', '--hold', '60', '--progress', '0',\n"
         "    '--parent', str(os.getpid())], stdout=subprocess.DEVNULL)\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # its connection refused, the child is holding
    os.kill(child, 0)  # alive
    assert Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] != "Z"
    parent.kill()  # SIGKILL: no handler of the parent runs
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        try:
            status = Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return
        if status == "Z":  # dead, waiting for init to reap it
            return
        time.sleep(0.05)
    os.kill(child, 9)
    pytest.fail("the child outlived its killed parent")

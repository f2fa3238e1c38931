"""--cilium-version is Cilium's port search; a Linux gateway's nf_nat has none.

Given explicitly where the search is netfilter's (--datapath-model netfilter, or
conntrack snapshots in forecast), limits, alerts, forecast and simulate stop with one
line naming the flag and exit 2, before any output; plan still uses the version for the
form of the policy YAML it prints, and says so on stderr. Left out, or with the Cilium
model, nothing changes.
"""

from __future__ import annotations

import json

import pytest

from cli_support import run_cli

WORKLOAD = "src/egressgw/examples/workloads/web-and-dns.yaml"
TABLE = "tests/golden/conntrack-L.txt"
NETFILTER = ("--datapath-model", "netfilter")


@pytest.mark.parametrize("args", [
    ("limits", *NETFILTER, "--cilium-version", "1.18"),
    ("limits", *NETFILTER, "--cilium-version", "1.16", "-o", "json"),
    ("alerts", *NETFILTER, "--cilium-version", "1.17"),
    ("forecast", f"{TABLE}@0", f"{TABLE}@60", *NETFILTER, "--cilium-version", "1.18"),
    # conntrack -L snapshots: netfilter's limit and search without the flag saying so
    ("forecast", f"{TABLE}@0", f"{TABLE}@60", "--cilium-version", "1.16"),
    ("simulate", WORKLOAD, *NETFILTER, "--cilium-version", "1.18", "--duration", "1m"),
], ids=["limits", "limits-json", "alerts", "forecast", "forecast-conntrack", "simulate"])
def test_an_explicit_cilium_version_with_netfilter_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "--cilium-version" in lines[0] and "nf_nat" in lines[0]
    assert "Traceback" not in err


def test_plan_keeps_the_version_for_the_policy_form_and_says_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plan", WORKLOAD, *NETFILTER, "--cilium-version",
                             "1.18", "--estimate-only")
    assert code == 0, err
    assert out.startswith("Limit:")
    assert "note: --cilium-version 1.18 sets only the form of the policy YAML" in err


@pytest.mark.parametrize("args", [
    ("limits", *NETFILTER, "--nat-port-range", "65280-65535"),
    ("limits", "--datapath-model", "cilium", "--cilium-version", "1.18",
     "--node-port-range", "30000,65279"),
    ("forecast", f"{TABLE}@0", f"{TABLE}@60", "--datapath-model", "cilium",
     "--cilium-version", "1.18"),
], ids=["netfilter-without-flag", "cilium-limits", "cilium-forecast"])
def test_without_the_flag_or_with_cilium_nothing_changes(
        capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    code, _out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "--cilium-version" not in err


# Cilium's NAT map, LRU and CT GC flags: netfilter.py reads none of them (it takes the
# SNAT rule's range and Linux's nf_conntrack limits; no LRU, no Cilium GC), nor does the
# agent's kernel datapath (nftables + nf_nat), which also has no BPF program's uplink.
# Each value is a valid one, so only the datapath can refuse it; ``--nat-lru exact`` is
# the default, given explicitly.
CILIUM_ONLY = [
    ("--nat-lru", "kernel"),
    ("--nat-lru", "exact"),
    ("--possible-cpus", "4"),
    ("--flow-cpus", "one"),
    ("--bpf-distributed-lru",),
    ("--bpf-nat-global-max", "65536"),
    ("--conntrack-gc-interval", "30s"),
    ("--bpf-ct-global-tcp-max", "65536"),
    ("--bpf-ct-global-any-max", "65536"),
]
AGENT_CILIUM_ONLY = [
    ("--cilium-version", "1.18"),
    ("--nat-lru", "kernel"),
    ("--possible-cpus", "4"),
    ("--flow-cpus", "one"),
    ("--bpf-distributed-lru",),
    ("--bpf-nat-global-max", "65536"),
    ("--bpf-device", "ext0"),
]


def _assert_one_line_error(code: int, out: str, err: str, flag: str) -> None:
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"egressgw: error: {flag}: ")
    assert "nf_nat" in lines[0]


@pytest.mark.parametrize("command", [
    ("simulate", WORKLOAD, "--duration", "1m"),
    ("plan", WORKLOAD, "--estimate-only"),
], ids=["simulate", "plan"])
@pytest.mark.parametrize("flag", CILIUM_ONLY, ids=" ".join)
def test_a_cilium_only_flag_with_netfilter_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str], command: tuple[str, ...],
        flag: tuple[str, ...]) -> None:
    code, out, err = run_cli(capsys, *command, *NETFILTER, *flag)
    _assert_one_line_error(code, out, err, flag[0])


def test_plan_names_the_flag_and_no_note_when_cilium_version_comes_with_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plan", WORKLOAD, *NETFILTER, "--cilium-version", "1.18",
                             "--possible-cpus", "4", "--estimate-only")
    _assert_one_line_error(code, out, err, "--possible-cpus")


@pytest.mark.parametrize("datapath", [(), ("--datapath", "kernel")], ids=["default", "kernel"])
@pytest.mark.parametrize("flag", AGENT_CILIUM_ONLY, ids=" ".join)
def test_a_cilium_only_flag_with_the_agents_kernel_datapath_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str], datapath: tuple[str, ...],
        flag: tuple[str, ...]) -> None:
    # The flags are refused first. Were they not, the bad --listen would stop the agent
    # before it builds its datapath: nothing is installed in this namespace either way.
    code, out, err = run_cli(capsys, "agent", *datapath, *flag, "--policies", "none",
                             "--inventory", "none", "--node", "gw", "--listen", "nowhere")
    _assert_one_line_error(code, out, err, flag[0])
    # The way out it names must take the flag: only the BPF program has an uplink.
    instead = "--datapath bpf" if flag[0] == "--bpf-device" else "--datapath model or bpf"
    assert err.rstrip().endswith(f"or use {instead}"), err
    assert "--datapath kernel" in err


@pytest.mark.parametrize("datapath", ["model", "bpf"])
def test_the_agents_cilium_datapaths_take_the_flags(
        capsys: pytest.CaptureFixture[str], datapath: str) -> None:
    # Past the flag check, the agent stops at the next one: the missing files.
    code, out, err = run_cli(capsys, "agent", "--datapath", datapath, "--cilium-version",
                             "1.18", "--nat-lru", "kernel", "--possible-cpus", "4",
                             "--flow-cpus", "one", "--bpf-distributed-lru")
    assert code == 2
    assert out == ""
    assert "missing --policies, --inventory, --node" in err
    assert "nf_nat" not in err


def test_netfilter_keeps_the_flags_that_apply_to_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The ranges, the nat-stats passes, the seed and the duration are netfilter's too.
    code, out, err = run_cli(capsys, "simulate", WORKLOAD, *NETFILTER, "--duration", "1m",
                             "--seed", "3", "--node-port-range", "30000,65000",
                             "--nat-map-stats-interval", "10s", "--nat-map-stats-entries",
                             "8", "-o", "json")
    assert code == 0, err
    assert out.startswith("{")
    code, out, err = run_cli(capsys, "simulate", WORKLOAD, *NETFILTER, "--duration", "1m",
                             "--nat-port-range", "1024-65535")
    assert code == 0, err


def test_the_cilium_model_takes_every_cilium_only_flag(
        capsys: pytest.CaptureFixture[str]) -> None:
    flags = [part for flag in CILIUM_ONLY if flag != ("--nat-lru", "exact") for part in flag]
    code, out, err = run_cli(capsys, "simulate", WORKLOAD, "--duration", "1m",
                             "--cilium-version", "1.18", *flags, "-o", "json")
    assert code == 0, err
    settings = json.loads(out)["settings"]
    assert (settings["natLru"], settings["possibleCPUs"], settings["flowCPUs"]) == (
        "kernel", 4, "one")
    assert (settings["bpfNatGlobalMax"], settings["conntrackGCInterval"]) == (65536, 30)

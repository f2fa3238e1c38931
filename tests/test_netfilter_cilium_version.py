"""--cilium-version is Cilium's port search; a Linux gateway's nf_nat has none.

Given explicitly where the search is netfilter's (--datapath-model netfilter, or
conntrack snapshots in forecast), limits, alerts, forecast and simulate stop with one
line naming the flag and exit 2, before any output; plan still uses the version for the
form of the policy YAML it prints, and says so on stderr. Left out, or with the Cilium
model, nothing changes.
"""

from __future__ import annotations

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

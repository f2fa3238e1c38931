"""``egress list`` and the nft rendering at 10,000 and 100,000 destination CIDRs.

Writes one policy with N destination CIDRs (/24s) and N/10 excluded /25s inside them for
the example inventory's shop clients, then times, in this process: loading the policy,
compiling it, ``egress list``'s rows and text, and rendering the gateway's nft script.
Prints seconds per stage for each N and the ratio of the time per CIDR at the largest N to
the time per CIDR at the smallest: about 1 means linear (it was about 5 from 5,000 to
20,000 CIDRs when a list membership test deduplicated the CIDRs).

    .venv/bin/python bench/bench_egress_scale.py [--sizes 10000 100000] [--repeat 1] [--quick]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import tempfile
import time
from pathlib import Path

from benchutil import format_load, load_average, spread
from egressgw.config import NodePortRange
from egressgw.datapath.kernel.ruleset import render_ruleset
from egressgw.policy import compile_policies, load_inventory, load_policies, rules_for_gateway
from egressgw.policy.listing import egress_list, format_egress_list

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "egressgw" / "examples"


def write_policy(path: Path, n: int) -> None:
    base = int(ipaddress.ip_address("10.0.0.0"))
    lines = [
        "apiVersion: cilium.io/v2", "kind: CiliumEgressGatewayPolicy", "metadata: {name: many}",
        "spec:",
        "  selectors: [{podSelector: {matchLabels: {app: client}}, "
        "namespaceSelector: {matchLabels: {team: web}}}]",
        "  destinationCIDRs:",
        *(f"    - {ipaddress.ip_address(base + i * 256)}/24" for i in range(n)),
        "  excludedCIDRs:",
        *(f"    - {ipaddress.ip_address(base + i * 256 + 128)}/25" for i in range(0, n, 10)),
        "  egressGateway:",
        '    nodeSelector: {matchLabels: {egress-gateway: "true"}}',
        "    egressIP: 203.0.113.10",
    ]
    path.write_text("\n".join(lines) + "\n")


def run(n: int, directory: Path) -> dict[str, float]:
    policy = directory / f"many-{n}.yaml"
    write_policy(policy, n)
    times: dict[str, float] = {}
    start = time.perf_counter()
    policies = load_policies(policy)
    times["load"] = time.perf_counter() - start
    inventory = load_inventory(EXAMPLES / "inventory.yaml")
    start = time.perf_counter()
    compiled = compile_policies(policies, inventory)
    times["compile"] = time.perf_counter() - start
    start = time.perf_counter()
    text = format_egress_list(egress_list(compiled.rules, None))
    times["egress list"] = time.perf_counter() - start
    start = time.perf_counter()
    script = render_ruleset(rules_for_gateway(compiled.rules, "gateway-1"), NodePortRange())
    times["nft script"] = time.perf_counter() - start
    times["total"] = sum(times.values())
    print(f"{n:>7,} CIDRs, {len(compiled.rules):,} rules, {text.count(chr(10)):,} rows, "
          f"{script.count(chr(10)):,} script lines: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()), flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the sizes")
    parser.add_argument("--quick", action="store_true", help="200 and 2,000 CIDRs, once")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeat = [200, 2_000], 1
    load_before = load_average()
    results: dict[int, list[dict[str, float]]] = {n: [] for n in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):  # sizes alternate their order
            for n in args.sizes if round_ % 2 == 0 else reversed(args.sizes):
                results[n].append(run(n, Path(tmp)))
    small, large = min(results), max(results)
    for n, runs in results.items():
        for stage in runs[0]:
            print(f"{n:>7,} CIDRs, {stage}: {spread([r[stage] for r in runs], '.2f', ' s')}")
    for stage in results[small][0]:
        per_small = statistics.median(r[stage] for r in results[small]) / small
        per_large = statistics.median(r[stage] for r in results[large]) / large
        print(f"{stage:>12}: time per CIDR at {large:,} / at {small:,} = "
              f"{per_large / per_small:.2f} (medians)")
    print(format_load(load_before, load_average()))


if __name__ == "__main__":
    main()

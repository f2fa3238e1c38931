"""The measured effect of the model's remaining assumptions, on the demo's act 1.

docs/model.md lists what the model does not know from Cilium's source; this prints how
much each one moves the demo's figures (full scale, seeds 0-2), so the table there
carries measured numbers:

1. ``gc_pass_seconds``: how long a CT GC pass mutes nat_fill_up (0, 1 and 5 s);
2. the CT maps are unbounded in the model: the most CT entries any run could hold
   (every connection attempted) against ``--bpf-ct-global-tcp-max``;
3. the model before Cilium's CT state and GC pacing (commit 5cf04a8), for comparison,
   is measured by running this script on that commit's tree (figures in docs/model.md).

    .venv/bin/python bench/model_effects.py [--seeds 3] [--quick]

``--quick``: one seed, gc_pass_seconds 0 and 1 only, the demo scaled to a tenth (its
rates, ports and maps: ``demo_settings``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from benchutil import format_load, load_average
from egressgw.sim.demo import demo_settings, demo_workload
from egressgw.sim.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run (see above)")
    args = parser.parse_args()
    scale, passes, seeds = (0.1, (0.0, 1.0), 1) if args.quick else (1.0, (0.0, 1.0, 5.0),
                                                                     args.seeds)
    load_before = load_average()
    workload = demo_workload(scale)
    print("gc_pass_seconds  seed  refused  never  dropped  evicted  broken  gc_runs  signals")
    for gc_pass in passes:
        for seed in range(seeds):
            settings = replace(demo_settings(scale, seed), gc_pass_seconds=gc_pass)
            t = simulate(workload, settings, progress=False).totals
            print(f"{gc_pass:15.0f}  {seed:4d}  {t.refused:7d}  {t.connect_failed:5d}  "
                  f"{t.dropped:7d}  {t.evictions:7d}  {t.broken:6d}  {t.gc_runs:7d}  "
                  f"{t.signals:7d}")
    settings = demo_settings(scale, 0)
    t = simulate(workload, settings, progress=False).totals
    print(f"CT entries at most (connections attempted): {t.attempted} of "
          f"--bpf-ct-global-tcp-max {settings.bpf_ct_global_tcp_max}")
    print(format_load(load_before, load_average()))


if __name__ == "__main__":
    main()

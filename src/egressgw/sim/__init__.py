"""Simulation: workloads, a virtual-clock run of the model datapath, forecasts and plans.

Modules, one concept each:

- ``workload``: the workload document (YAML) parsed and validated into value types.
- ``arrivals``: arrival-rate profiles and their cumulative intensity.
- ``replay``: recorded flows read from CSV.
- ``generate``: connections generated into numpy columns, window by window.
- ``routing``: which egress IP each client uses for each destination.
- ``simulate``: the model datapath driven on a virtual clock, nat-stats every interval.
- ``report`` / ``plot``: results as a table, JSON/YAML, markdown and a PNG.
- ``plan``: the fewest egress IPs for a target saturation, estimated then simulated.
- ``forecast``: time until each tuple reaches its limit, from nat-stats snapshots.
- ``demo``: the seed document's scenario, its failure and its remedy.
"""

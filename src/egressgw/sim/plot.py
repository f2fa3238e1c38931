"""Plots: saturation over time per tuple with refusals, evictions and breaks; refusal curves.

matplotlib is imported here only, with the Agg backend: no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from egressgw.errors import InputError
from egressgw.net import NatEndpoint, format_ip
from egressgw.sim.report import first_refusal, per_interval
from egressgw.sim.simulate import THRESHOLDS, SimulationResult


def plot_saturation(
    results: SimulationResult | Sequence[tuple[str, SimulationResult]],
    path: str | Path,
    *,
    top: int = 5,
    title: str | None = None,
) -> Path:
    """Write a PNG: one panel per run (label, result), each tuple's saturation in %.

    A tuple keeps its colour in every panel; the 80% and 95% marks and the limit are
    labelled; the first interval with refused connections is marked with the busiest
    tuple's saturation then; bars count refused connections, NAT evictions and broken
    connections per nat-stats interval (its length is in the legend).
    """
    import matplotlib  # noqa: PLC0415 - heavy; only plotting commands pay for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    runs = [("", results)] if isinstance(results, SimulationResult) else list(results)
    figure, axes = plt.subplots(
        len(runs), 1, figsize=(13, 4.6 * len(runs)), squeeze=False, sharex=True
    )
    # One scale for the bars across panels, so a handful does not look huge.
    events_max = max(
        [1, *(max(_per_interval(r, name).max(initial=0) for name in _EVENTS)
              for _, r in runs)]
    )
    colours = _tuple_colours([r for _, r in runs], top)
    for (label, result), ax in zip(runs, axes[:, 0], strict=True):
        _panel(ax, label, result, top=top, events_max=events_max * 1.15, colours=colours)
    axes[-1, 0].set_xlabel("virtual time (minutes)")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# Counter per interval -> (legend text, colour).
_EVENTS = {
    "refused": ("connections refused", "tab:red"),
    "evictions": ("NAT entries evicted", "tab:purple"),
    "broken": ("connections broken", "tab:brown"),
}


def _save(figure: Any, path: str | Path) -> Path:
    """Write ``figure`` as a PNG and close it; a write error names the file."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - only when a plot is drawn

    figure.tight_layout()
    out = Path(path)
    try:
        figure.savefig(out, dpi=100)
    except OSError as exc:
        raise InputError(f"cannot write the plot: {exc.strerror}", source=str(out)) from None
    finally:
        plt.close(figure)
    return out


def _tuple_colours(results: Sequence[SimulationResult], top: int) -> dict[NatEndpoint, Any]:
    """One colour per tuple, the same in every panel, in order of appearance.

    From matplotlib's default cycle without red, purple and brown, which the limit line
    and the bars use.
    """
    palette = ["C0", "C1", "C2", "C6", "C7", "C8", "C9"]
    colours: dict[NatEndpoint, Any] = {}
    for result in results:
        for endpoint in result.top_endpoints(top):
            if endpoint not in colours:
                colours[endpoint] = palette[len(colours) % len(palette)]
    return colours


def _per_interval(result: SimulationResult, counter: str) -> np.ndarray:
    return per_interval(result, counter)


def _panel(ax: Any, label: str, result: SimulationResult, *, top: int, events_max: float,
           colours: dict[NatEndpoint, Any]) -> None:
    from egressgw.sim.report import format_seconds  # noqa: PLC0415

    times = np.array(result.times) / 60.0
    divisor = result.settings.divisor
    for endpoint in result.top_endpoints(top):
        series = np.array(result.series[endpoint]) / divisor * 100
        name = f"{format_ip(endpoint.egress_ip)} -> {endpoint.remote_addr} {endpoint.proto.label}"
        ax.plot(times, series, label=name, color=colours.get(endpoint), linewidth=1.8)
    ax.axhline(100, color="red", linestyle="--", linewidth=1)
    ax.annotate(f"limit: {divisor} ports", (0.005, 100), xycoords=("axes fraction", "data"),
                xytext=(0, 2), textcoords="offset points", fontsize=8, color="red")
    for mark in THRESHOLDS[:-1]:
        ax.axhline(mark * 100, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(f"{mark:.0%}", (0.005, mark * 100), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", fontsize=8, color="grey")
    first = first_refusal(result)
    if first is not None:
        when, saturation, count = first
        ax.axvline(when / 60.0, color="tab:red", linestyle="-.", linewidth=1)
        ax.plot([when / 60.0], [saturation * 100], marker="o", color="tab:red")
        ax.annotate(f"first refused: {count} by {format_seconds(when)},\n"
                    f"busiest tuple at {saturation:.1%}",
                    (when / 60.0, saturation * 100), xytext=(-8, -28),
                    textcoords="offset points", ha="right", fontsize=8, color="tab:red")
    ax.set_ylabel("saturation (%)")
    ax.set_ylim(0, max(112.0, result.peak_saturation * 107))
    ax.set_title(label or result.name)
    events = ax.twinx()
    interval = format_seconds(result.settings.stats_interval)
    step = (times[1] - times[0]) if len(times) > 1 else 0.5
    width = step * 0.28
    for i, (counter, (text, colour)) in enumerate(_EVENTS.items()):
        events.bar(times - step / 2 + (i + 0.5) * width + step * 0.08,
                   _per_interval(result, counter), width=width, color=colour, alpha=0.4,
                   label=f"{text} per {interval} interval")
    events.set_ylabel(f"count per {interval} interval")
    events.set_ylim(0, events_max)
    # Bars behind the lines; one legend for both axes.
    ax.set_zorder(events.get_zorder() + 1)
    ax.patch.set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = events.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize=8,
              bbox_to_anchor=(1.09, 1.0), borderaxespad=0)


def plot_refusal(curves: Any, path: str | Path) -> Path:
    """Write a PNG of the refusal curves: share of new connections refused (log) against
    saturation, with the 0.01%..10% rates marked."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from egressgw.sim.refusal import CURVE_TEXT, RATES, search_text  # noqa: PLC0415

    figure, ax = plt.subplots(figsize=(10, 5.5))
    colours = {"growth": "tab:red", "steady": "tab:orange", "uniform": "tab:blue"}
    for name, curve in curves.by_name().items():
        sat = curve.saturation * 100
        shown = curve.refused > 0
        # The uniform curve is exact only where nf_nat's offsets are uniform; its kind
        # says how it was computed ("ring approximation", "sampled") otherwise.
        text = CURVE_TEXT[name].replace("(exact)", f"({curve.kind.partition('(')[2]}")
        ax.plot(sat[shown], curve.refused[shown] * 100, color=colours[name],
                label=f"{name}: {text}")
        if curve.kind.endswith("(measured)"):
            ax.fill_between(sat, np.maximum(curve.low, 1e-7) * 100, curve.high * 100,
                            color=colours[name], alpha=0.15, linewidth=0)
    for rate in RATES:
        ax.axhline(rate * 100, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(f"{rate * 100:g}%", (1, rate * 100), xycoords=("axes fraction", "data"),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 100)
    ax.set_xlim(30, 101)
    ax.set_xlabel(f"saturation (% of {curves.growth.divisor} ports)")
    ax.set_ylabel("new connections refused (%)")
    g = curves.growth
    ax.set_title(f"{search_text(g.search)}\nclients' source ports {g.sources}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return _save(figure, path)

"""Saturation over time for the top tuples, against the limit, with drops and evictions.

matplotlib is imported here only, with the Agg backend: no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from egressgw.errors import InputError
from egressgw.net import format_ip
from egressgw.sim.simulate import THRESHOLDS, SimulationResult


def plot_saturation(
    results: SimulationResult | Sequence[tuple[str, SimulationResult]],
    path: str | Path,
    *,
    top: int = 5,
    title: str | None = None,
) -> Path:
    """Write a PNG: one panel per run (label, result), each tuple's saturation in %."""
    import matplotlib  # noqa: PLC0415 - heavy; only plotting commands pay for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    runs = [("", results)] if isinstance(results, SimulationResult) else list(results)
    figure, axes = plt.subplots(
        len(runs), 1, figsize=(10, 4.2 * len(runs)), squeeze=False, sharex=True
    )
    # One scale for drops and evictions across panels, so a handful does not look huge.
    events_max = max(
        [1, *(max(_per_interval(r, "dropped").max(initial=0),
                  _per_interval(r, "evictions").max(initial=0)) for _, r in runs)]
    )
    for (label, result), ax in zip(runs, axes[:, 0], strict=True):
        _panel(ax, label, result, top, events_max * 1.1)
    axes[-1, 0].set_xlabel("virtual time (minutes)")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out = Path(path)
    try:
        figure.savefig(out, dpi=100)
    except OSError as exc:
        raise InputError(f"cannot write the plot: {exc.strerror}", source=str(out)) from None
    finally:
        plt.close(figure)
    return out


def _per_interval(result: SimulationResult, counter: str) -> np.ndarray:
    cumulative = [0] + [getattr(r.totals, counter) for r in result.intervals]
    return np.diff(np.array(cumulative, dtype=np.int64))


def _panel(ax: Any, label: str, result: SimulationResult, top: int, events_max: float) -> None:
    times = np.array(result.times) / 60.0
    divisor = result.settings.divisor
    for endpoint in result.top_endpoints(top):
        series = np.array(result.series[endpoint]) / divisor * 100
        name = f"{format_ip(endpoint.egress_ip)} -> {endpoint.remote_addr} {endpoint.proto.label}"
        ax.plot(times, series, label=name)
    ax.axhline(100, color="red", linestyle="--", linewidth=1,
               label=f"limit ({divisor} ports)")
    for mark in THRESHOLDS[:-1]:
        ax.axhline(mark * 100, color="grey", linestyle=":", linewidth=0.8)
    ax.set_ylabel("saturation (%)")
    ax.set_ylim(0, max(110.0, result.peak_saturation * 105))
    ax.set_title(label or result.name)
    events = ax.twinx()
    drops = _per_interval(result, "dropped")
    evictions = _per_interval(result, "evictions")
    width = (times[1] - times[0]) * 0.4 if len(times) > 1 else 0.2
    events.bar(times - width / 2, drops, width=width, color="tab:red", alpha=0.35,
               label="drops (167) per interval")
    events.bar(times + width / 2, evictions, width=width, color="tab:purple", alpha=0.35,
               label="NAT evictions per interval")
    events.set_ylabel("drops / evictions per interval")
    events.set_ylim(0, events_max)
    # Bars behind the lines; one legend for both axes.
    ax.set_zorder(events.get_zorder() + 1)
    ax.patch.set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = events.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize=8)


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
        ax.plot(sat[shown], curve.refused[shown] * 100, color=colours[name],
                label=f"{name}: {CURVE_TEXT[name]}")
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
    figure.tight_layout()
    out = Path(path)
    try:
        figure.savefig(out, dpi=100)
    except OSError as exc:
        raise InputError(f"cannot write the plot: {exc.strerror}", source=str(out)) from None
    finally:
        plt.close(figure)
    return out

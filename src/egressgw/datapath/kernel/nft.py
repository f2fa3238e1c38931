"""The subprocess edge to nft: one script, one transaction, errors as DatapathError."""

from __future__ import annotations

import json
import subprocess

from egressgw.datapath.kernel.netns import netns_argv
from egressgw.errors import DatapathError


def run_nft(script: str, *, netns: str | None = None, timeout: float = 30.0) -> None:
    """Load ``script`` with ``nft -f -``: nft applies the whole script or none of it."""
    _run(["nft", "-f", "-"], script, netns=netns, timeout=timeout)


def list_table(table: str, *, netns: str | None = None, family: str = "inet") -> str:
    """The table as nft lists it (raises DatapathError when it does not exist)."""
    return _run(["nft", "list", "table", family, table], "", netns=netns, timeout=30.0)


def list_counters(table: str, *, netns: str | None = None, family: str = "inet"
                  ) -> dict[str, int]:
    """The packets each named counter of the table has counted, by counter name."""
    out = _run(["nft", "-j", "list", "counters", "table", family, table], "", netns=netns,
               timeout=30.0)
    try:
        items = json.loads(out)["nftables"]
        return {c["counter"]["name"]: int(c["counter"]["packets"])
                for c in items if "counter" in c}
    except (ValueError, KeyError, TypeError) as exc:
        raise DatapathError(f"nft -j list counters: unexpected output ({exc})") from None


def _run(argv: list[str], stdin: str, *, netns: str | None, timeout: float) -> str:
    command = netns_argv(netns, argv)
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise DatapathError(f"{exc.filename}: not installed (apt-get install nftables)") from None
    except subprocess.TimeoutExpired:
        raise DatapathError(f"{' '.join(argv)}: no answer within {timeout:g} s") from None
    if done.returncode != 0:
        message = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
        where = f" in netns {netns}" if netns else ""
        raise DatapathError(f"nft{where} refused the transaction: {message or 'no message'}")
    return done.stdout

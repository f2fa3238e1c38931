"""Shared test configuration.

Kernel tests (marker ``kernel``) need root, network namespaces, nft and conntrack. In CI
(``CI`` set) they always run: a missing prerequisite fails them, it never skips them.
Elsewhere they skip and say why.
"""

from __future__ import annotations

import os
import shutil

import pytest

KERNEL_TOOLS = ("ip", "nft", "conntrack")


def kernel_unavailable_reason() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces, nftables, conntrack)"
    missing = [tool for tool in KERNEL_TOOLS if shutil.which(tool) is None]
    if missing:
        tools = ", ".join(missing)
        return f"kernel tests need {tools} (apt-get install nftables conntrack iproute2)"
    return None


@pytest.fixture(autouse=True)
def _kernel_prerequisites(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run kernel tests, but {reason}")
    pytest.skip(f"{reason}; CI runs them")

"""The public API: the exported names, their cost to import, and docs/api.md's examples."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import egressgw

ROOT = Path(__file__).resolve().parent.parent

# The API as documented in docs/api.md. Changing it is a decision: update the docs, this
# list and CHANGELOG.md together.
DOCUMENTED = {
    "AgentError", "ConfigError", "DatapathError", "EgressgwError", "InputError",
    "Direction", "Family", "NatEndpoint", "NatEntry", "NodePortRange", "Proto",
    "NatPortRange", "PortLimit", "datapath_limit", "dump_limit",
    "DumpCounts", "count_endpoints", "count_file", "iter_entries",
    "NatStats", "NatStatsRow", "compute_nat_stats", "render_saturation", "render_table",
    "stats_document",
    "EgressRule", "compile_policies", "compile_rules", "load_inventory", "load_policies",
    "ModelConfig", "ModelDatapath", "SimSettings", "SimulationResult", "Workload",
    "load_workload", "simulate",
}


def test_exports_are_the_documented_names() -> None:
    assert set(egressgw.__all__) == DOCUMENTED
    assert list(egressgw.__all__) == sorted(egressgw.__all__)


def test_every_name_is_listed_in_the_docs_table() -> None:
    table = (ROOT / "docs" / "api.md").read_text().split("## ", 1)[0]
    listed = set(re.findall(r"`([A-Za-z_]+)[(`]", table))
    assert listed >= DOCUMENTED, sorted(DOCUMENTED - listed)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_name_resolves_to_a_project_object(name: str) -> None:
    value = getattr(egressgw, name)
    assert value.__module__.startswith("egressgw."), value
    assert name in dir(egressgw)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'count_dump'"):
        egressgw.count_dump  # noqa: B018
    assert not hasattr(egressgw, "_EXPORT")


def test_errors_form_one_tree() -> None:
    for name in ("InputError", "ConfigError", "DatapathError", "AgentError"):
        assert issubclass(getattr(egressgw, name), egressgw.EgressgwError)


def test_import_is_cheap() -> None:
    """A script that imports egressgw pays for nothing it has not used yet."""
    heavy = ["numpy", "numba", "yaml", "click", "matplotlib", "prometheus_client"]
    code = (
        "import json, sys, egressgw; "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == []


def _examples() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_docs_have_examples() -> None:
    assert len(_examples()) >= 4


@pytest.mark.parametrize("index", range(len(_examples())))
def test_docs_example_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_examples()[index], f"docs/api.md example {index + 1}", "exec"), {})
    assert out.getvalue().strip(), "every example prints what it shows"

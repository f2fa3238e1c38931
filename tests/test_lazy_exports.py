"""Packages whose names are imported on first use (egressgw.lazy): egressgw.agent and
egressgw.datapath.bpf. The top-level package is pinned by test_public_api.py.

Each check runs in a fresh interpreter, so what a plain import loads is what a user gets.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# package -> (a name it exports, the module that defines it, a module a plain import of the
# package must not load)
PACKAGES = {
    "egressgw.agent": ("Agent", "egressgw.agent.loop", "egressgw.agent.loop"),
    "egressgw.datapath.bpf": ("BpfSettings", "egressgw.datapath.bpf.datapath",
                              "egressgw.datapath.bpf.datapath"),
}


def _probe(code: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_names_load_on_first_use_and_stay_bound(package: str) -> None:
    name, defined_in, heavy = PACKAGES[package]
    got = _probe(
        "import importlib, json, sys\n"
        f"p = importlib.import_module({package!r})\n"
        f"before = {heavy!r} in sys.modules\n"
        f"value = getattr(p, {name!r})\n"
        "print(json.dumps({'loaded_before': before,\n"
        f"    'loaded_after': {heavy!r} in sys.modules,\n"
        "    'module': value.__module__,\n"
        f"    'bound': vars(p).get({name!r}) is value,\n"
        f"    'same_again': getattr(p, {name!r}) is value,\n"
        "    'missing_from_dir': sorted(set(p.__all__) - set(dir(p)))}))\n"
    )
    assert got == {"loaded_before": False, "loaded_after": True, "module": defined_in,
                   "bound": True, "same_again": True, "missing_from_dir": []}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_exported_name_resolves_inside_the_package(package: str) -> None:
    got = _probe(
        "import importlib, json\n"
        f"p = importlib.import_module({package!r})\n"
        "print(json.dumps({n: getattr(getattr(p, n), '__module__', None) or 'constant'\n"
        "                  for n in p.__all__}))\n"
    )
    outside = {n: m for n, m in got.items()
               if m != "constant" and not str(m).startswith(package + ".")}
    assert outside == {}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_unknown_names_are_attribute_errors_naming_the_package(package: str) -> None:
    import importlib  # noqa: PLC0415

    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_exported_build_is_the_function_whichever_module_loads_first() -> None:
    """``build`` is the function that compiles snat.bpf.c, even after the loader (which
    imports the module defining it) was imported first: no submodule shares its name, so
    importing one cannot rebind the package attribute to a module."""
    got = _probe(
        "import json, types\n"
        "import egressgw.datapath.bpf.loader\n"
        "import egressgw.datapath.bpf as bpf\n"
        "first, second = bpf.build, bpf.build\n"
        "print(json.dumps([callable(first), not isinstance(first, types.ModuleType),\n"
        "                  first is second]))\n"
    )
    assert got == [True, True, True]

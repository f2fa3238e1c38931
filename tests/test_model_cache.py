"""numba's on-disk cache of the kernel is invalidated by a change to any of its sources.

numba keys a cached function on its own file: a constant or a compiled helper taken from
another module is frozen into the cache. kernel_cache.register keys the functions of the
listed files on all of them. Checked in fresh interpreters (as a user's next run would
be) on a two-module program, against the same program unregistered as the control.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from numba.core.dispatcher import Dispatcher

from egressgw.datapath.model import kernel, kernel_cache, kernel_jit

MAIN = """\
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from numba import njit

import helper
from egressgw.datapath.model import kernel_cache

if sys.argv[1] == "keyed":
    kernel_cache.register((Path(__file__), Path(helper.__file__)))

value = njit(cache=True)(helper.value)


@njit(cache=True)
def total():
    return value() + helper.CONST * 10


print(total(), total.stats.cache_hits.get(total.signatures[0], 0))
"""

HELPER = "CONST = {const}\n\n\ndef value():\n    return {value}\n"


def run(directory: Path, mode: str) -> tuple[int, int]:
    """(result, cache hits) of one fresh interpreter run."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_")}
    out = subprocess.run([sys.executable, str(directory / "main.py"), mode], env=env,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return int(out[0]), int(out[1])


def program(directory: Path) -> Path:
    directory.mkdir()
    (directory / "main.py").write_text(MAIN)
    helper = directory / "helper.py"
    helper.write_text(HELPER.format(const=1, value=1))
    return helper


def test_changing_a_helper_module_recompiles_the_keyed_functions(tmp_path: Path) -> None:
    keyed, control = program(tmp_path / "keyed"), program(tmp_path / "control")
    for helper, mode in ((keyed, "keyed"), (control, "plain")):
        assert run(helper.parent, mode) == (11, 0)  # compiled and written
        assert run(helper.parent, mode) == (11, 1)  # loaded from the cache
        helper.write_text(HELPER.format(const=3, value=2))
    # The keyed program sees the change; numba's own key does not (the control).
    assert run(keyed.parent, "keyed") == (32, 0)
    assert run(control.parent, "plain") == (11, 1)
    assert run(keyed.parent, "keyed") == (32, 1)  # and caches the new code


def _imports_from_the_project(path: Path) -> set[str]:
    """Module names (last component) a file imports from egressgw."""
    tree = ast.parse(path.read_text())
    return {
        alias.name if node.module == "egressgw.datapath.model" else node.module.rsplit(".")[-1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        and node.module.startswith("egressgw")
        for alias in node.names
    }  # fmt: skip


def test_the_kernel_is_keyed_on_every_module_it_takes_code_from() -> None:
    # Every module a kernel source imports from is a source itself (kernel_cache only
    # registers the key: nothing of it is compiled), and every source is reached.
    sources = {path.stem for path in kernel.SOURCES}
    imported = set().union(*(_imports_from_the_project(path) for path in kernel.SOURCES))
    imported.discard("kernel_cache")
    assert {"kernel_gc", "kernel_nat", "kernel_heap", "gcpacing"} <= imported
    assert imported <= sources
    # Listed without being imported: kernel_state defines the State the entry points are
    # called with (its fields are part of every signature).
    assert sources - imported == {"kernel", "kernel_state"}
    # The kernel's own modules are all listed.
    on_disk = {path.stem for path in Path(kernel.__file__).parent.glob("kernel*.py")}
    assert on_disk - {"kernel_api", "kernel_cache"} <= sources


def _dispatchers(module: ModuleType) -> list[Any]:
    return [
        value for value in vars(module).values()
        if isinstance(value, Dispatcher)
        and Path(value.py_func.__code__.co_filename).resolve() == Path(module.__file__).resolve()
    ]  # fmt: skip


def test_every_compiled_function_is_stamped_with_all_kernel_sources(tmp_path: Path) -> None:
    # Each compiled function of each kernel module looks its cache up under one digest
    # over every source, so an edit to any source (the two-module program above shows
    # that a changed stamp recompiles) is a cache miss for all of them.
    digest = kernel_cache.sources_digest(kernel.SOURCES)
    files = frozenset(str(path.resolve()) for path in kernel.SOURCES)
    checked = 0
    for path in kernel.SOURCES:
        module = importlib.import_module(f"egressgw.datapath.model.{path.stem}")
        for dispatcher in _dispatchers(module):
            locator = dispatcher._cache._impl._locator
            assert type(locator).kernel_files == files, dispatcher.py_func.__qualname__
            assert locator.get_source_stamp() == digest, dispatcher.py_func.__qualname__
            checked += 1
    assert checked >= 40  # the walk found the kernel's functions
    # Editing any one source changes the digest.
    copies = []
    for path in kernel.SOURCES:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    assert kernel_cache.sources_digest(tuple(copies)) == digest
    for copy in copies:
        original = copy.read_bytes()
        copy.write_bytes(original + b"# edited\n")
        assert kernel_cache.sources_digest(tuple(copies)) != digest, copy.name
        copy.write_bytes(original)


def test_a_kernel_function_outside_the_sources_is_refused() -> None:
    def stray() -> int:
        return 1

    with pytest.raises(RuntimeError, match=r"not in kernel_jit\.SOURCES"):
        kernel_jit.jit()(stray)

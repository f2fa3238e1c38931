"""numba's on-disk cache of the kernel is invalidated by a change to any of its sources.

numba keys a cached function on its own file: a constant or a compiled helper taken from
another module is frozen into the cache. kernel_cache.register keys the functions of the
listed files on all of them. Checked in fresh interpreters (as a user's next run would
be) on a two-module program, against the same program unregistered as the control.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from egressgw.datapath.model import kernel, kernel_cache

MAIN = """\
import sys
from pathlib import Path

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


def test_the_kernel_is_keyed_on_every_module_it_takes_code_from() -> None:
    tree = ast.parse(Path(kernel.__file__).read_text())
    imported = {
        alias.name if node.module == "egressgw.datapath.model" else node.module.rsplit(".")[-1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        and node.module.startswith("egressgw")
        for alias in node.names
    }  # fmt: skip
    imported.discard("kernel_cache")  # registers the key; nothing of it is compiled
    assert imported  # the walk found the imports
    assert {path.stem for path in kernel.SOURCES} == imported | {"kernel"}
    digest = kernel_cache.sources_digest(kernel.SOURCES)
    assert digest == kernel_cache.sources_digest(kernel.SOURCES)
    assert digest != kernel_cache.sources_digest(kernel.SOURCES[:-1])

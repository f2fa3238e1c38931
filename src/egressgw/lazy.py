"""A package's public names, imported on first use (PEP 562's module ``__getattr__``).

A package that re-exports names from its modules would import them all, and what they
import, when the package is imported; a script that uses one name, or a client of the
package that needs none, would pay for all. Instead the package lists its names in a
table, name -> defining module, and this builds the module-level ``__getattr__`` and
``__dir__`` that import a module when one of its names is first asked for::

    __getattr__, __dir__ = lazy_exports(__name__, {"Agent": ".loop", "NatEntry": "egressgw.net"})

Type checkers do not see through ``__getattr__``: the package imports the same names
under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` for ``package`` (its ``__name__``).

    ``exports`` maps each public name to the module that defines it, absolute or relative
    to ``package`` (``".loop"``). A resolved name is stored in the package's namespace, so
    later lookups do not come back here. Any other name is an AttributeError, as usual.
    """
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__

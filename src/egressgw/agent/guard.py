"""Run a periodic step so that a datapath hiccup is logged, never fatal.

The same error repeating every period is logged once (and its end once), so a lasting
problem does not bury the rest of the log. One Guard per step and per thread: its memory
of the last error is not shared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from egressgw.errors import EgressgwError

T = TypeVar("T")

log = logging.getLogger("egressgw.agent.loop")


class Guard:
    """Runs one named step; returns its result, or None after logging its failure."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._failing: str | None = None

    def run(self, step: Callable[[], T], *, on_error: Callable[[str], object] | None = None
            ) -> T | None:
        """``step()``; on an error, log it (once while it repeats) and ``on_error(text)``."""
        try:
            result = step()
        except (EgressgwError, OSError) as exc:
            if self._failing != str(exc):
                log.error("%s failed: %s", self.what, exc)
            self._failing = str(exc)
            if on_error is not None:
                on_error(str(exc))
            return None
        except Exception as exc:
            if self._failing != repr(exc):
                log.exception("%s failed unexpectedly", self.what)
            self._failing = repr(exc)
            if on_error is not None:
                on_error(f"internal error: {exc!r}")
            return None
        if self._failing is not None:
            self._failing = None
            log.info("%s works again", self.what)
        return result

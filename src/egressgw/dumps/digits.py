"""The digits of ``bpf nat list`` lines of the common shapes, checked with numpy.

The bulk path proves a chunk's shapes with its digits deleted (see
:mod:`egressgw.dumps.cilium`); this module proves where the digits are and what they say,
without a Python loop over lines. Kept apart so that numpy is loaded only when a dump
needs it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# A line of a common shape has 17 digit runs, always in the same places: three addresses
# of four octets and a port, then Created and NeedsCT (any number). Per run: the character
# before it, the one after it, and its longest length.
_RUNS = [(" ", ".", 3), (".", ".", 3), (".", ".", 3), (".", ":", 3), (":", " ", 5)] * 3 + [
    ("=", "s", 1 << 30), ("=", "\n", 1 << 30)]
_ZERO = ord("0")
_BEFORE = np.array([ord(before) for before, _, _ in _RUNS], dtype=np.uint8)
_AFTER = np.array([ord(after) for _, after, _ in _RUNS], dtype=np.uint8)
_LONGEST = np.array([longest for _, _, longest in _RUNS], dtype=np.int64)
_NUMBERED = (_LONGEST == 3) | (_LONGEST == 5)
_OCTETS = np.flatnonzero(_LONGEST == 3)
_PORTS = np.flatnonzero(_LONGEST == 5)


def common_digits_are_valid(chunk: bytes, end: int, lines: int) -> bool:
    """The digits of a chunk whose lines all have a common shape: 17 runs per line, each
    where the shape puts it, octets 0..255 and ports 0..65535 without leading zeros.

    A run in the wrong place has neighbours no field has (a digit inside ``TCP IN`` or
    ``->``), and an empty field shifts the line's later runs onto neighbours that are not
    theirs, up to the last one, the only run before a newline: so with 17 runs per line
    and every run's neighbours those of its field, every field has exactly one run.
    numpy on the runs' edges, no Python loop over lines.
    """
    text = np.frombuffer(chunk, dtype=np.uint8, count=end)
    digit = (text - _ZERO) < 10  # uint8 arithmetic wraps below "0"
    if digit[0]:
        return False
    edges = np.flatnonzero(digit[1:] != digit[:-1]) + 1  # run starts and ends, alternating
    if len(edges) != 2 * len(_RUNS) * lines:
        return False
    starts = np.ascontiguousarray(edges[0::2]).reshape(lines, len(_RUNS))
    ends = np.ascontiguousarray(edges[1::2]).reshape(lines, len(_RUNS))
    if not ((np.take(text, starts - 1) == _BEFORE).all()
            and (np.take(text, ends) == _AFTER).all()):
        return False
    length = ends - starts
    if (length > _LONGEST).any():
        return False
    first = np.take(text, starts)
    if ((first == _ZERO) & (length > 1) & _NUMBERED).any():  # a leading zero
        return False
    # Octets of three digits above 255, ports of five above 65535: digit by digit.
    return not (_above(text, starts[:, _OCTETS], first[:, _OCTETS], b"255")
                & (length[:, _OCTETS] == 3)).any() and not (
        _above(text, starts[:, _PORTS], first[:, _PORTS], b"65535")
        & (length[:, _PORTS] == 5)).any()


def _above(text: npt.NDArray[np.uint8], starts: npt.NDArray[np.intp],
           first: npt.NDArray[np.uint8], limit: bytes) -> npt.NDArray[np.bool_]:
    """Whether the number of ``len(limit)`` digits at each of ``starts`` (whose first
    digits are ``first``) is above ``limit``, compared as strings of equal length."""
    digits = [first, *(np.take(text, starts + offset) for offset in range(1, len(limit)))]
    above = digits[-1] > limit[-1]
    for digit, highest in zip(digits[-2::-1], limit[-2::-1], strict=True):
        above = (digit > highest) | ((digit == highest) & above)
    return above

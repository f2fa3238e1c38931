"""The digits of ``bpf nat list`` lines of the common shapes, checked with numpy.

The bulk path proves a chunk's shapes with its digits deleted (see
:mod:`egressgw.dumps.cilium`); this module proves where the digits are and what they say,
without a Python loop over lines. Kept apart so that numpy is loaded only when a dump
needs it.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

# A line of a common shape has 17 digit runs, always in the same places: three addresses
# of four octets and a port, then Created and NeedsCT (any number). Per run: the longest
# it may be, and how many characters the shape puts between it and the run before it
# (the first run of a line follows the line's protocol and direction, of varying length).
_RUNS = [(3, 1), (3, 1), (3, 1), (3, 1), (5, 1),  # ' ' 10 . 244 . 1 . 5 : 51234
         (3, 4), (3, 1), (3, 1), (3, 1), (5, 1),  # ' -> ' 104 . 198 . 14 . 52 : 443
         (3, 11), (3, 1), (3, 1), (3, 1), (5, 1),  # ' XLATE_SRC ' ... : 40000
         (1 << 30, 9), (1 << 30, 16)]  # ' Created=' 12 'sec ago NeedsCT=' 1
_LONGEST = np.array([longest for longest, _ in _RUNS], dtype=np.int64)
_GAPS = np.array([gap for _, gap in _RUNS[1:]], dtype=np.int64)
_OCTET = _LONGEST == 3
_PORT = _LONGEST == 5
_NUMBERED = _OCTET | _PORT
_ZERO, _TWO, _SIX = ord("0"), ord("2"), ord("6")


def common_digits_are_valid(chunk: bytes, end: int, lines: int) -> bool:
    """The digits of a chunk whose lines all have a common shape (proved with the digits
    deleted): 17 runs per line, each where the shape puts it, octets 0..255 and ports
    0..65535 without leading zeros. numpy on the runs' edges, no Python loop over lines.

    Why this proves every field has exactly one run: with 17 runs per line, each line's
    first run right after a space and its last run right before the newline, and exactly
    the shape's characters between consecutive runs, the runs sit at the shape's 17 digit
    places; a digit anywhere else (inside ``TCP IN``, ``->`` or a keyword) or an empty field
    breaks a distance, the count, or an anchor. The fuzz tests check it against a
    reference parser.
    """
    text = np.frombuffer(chunk, dtype=np.uint8, count=end)
    shifted, digit, change = (buffer[:end] for buffer in _scratch(end))
    np.subtract(text, _ZERO, out=shifted)  # uint8 arithmetic wraps below "0"
    np.less(shifted, 10, out=digit)
    if digit[0]:
        return False
    np.not_equal(digit[1:], digit[:-1], out=change[: end - 1])
    # Index i: a run starts (or ends) at i + 1; starts and ends alternate.
    edges = np.flatnonzero(change[: end - 1])
    if len(edges) != 2 * len(_RUNS) * lines:
        return False
    runs = edges.reshape(lines, len(_RUNS), 2)
    before_start, before_end = runs[:, :, 0], runs[:, :, 1]
    if not (before_start[:, 1:] - before_end[:, :-1] == _GAPS).all():
        return False
    if not ((text[before_start[:, 0]] == ord(" ")).all()
            and (text[before_end[:, -1] + 1] == ord("\n")).all()):
        return False
    length = before_end - before_start
    if (length > _LONGEST).any():
        return False
    starts = before_start + 1
    first = text[starts]
    if ((first == _ZERO) & (length > 1) & _NUMBERED).any():  # a leading zero
        return False
    # Only three-digit octets from 2 on and five-digit ports from 6 on can be too big.
    octets = (length == 3) & _OCTET & (first >= _TWO)
    ports = (length == 5) & _PORT & (first >= _SIX)
    return (_at_most(text, starts[octets], first[octets], b"255")
            and _at_most(text, starts[ports], first[ports], b"65535"))


_SCRATCH = threading.local()


def _scratch(size: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_],
                                 npt.NDArray[np.bool_]]:
    """Work arrays of at least ``size`` bytes, kept per thread: allocating them for every
    chunk cost more system time (fresh pages) than the checks themselves."""
    buffers: tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None or len(buffers[0]) < size:
        buffers = (np.empty(size, dtype=np.uint8), np.empty(size, dtype=np.bool_),
                   np.empty(size, dtype=np.bool_))
        _SCRATCH.buffers = buffers
    return buffers


def _at_most(text: npt.NDArray[np.uint8], starts: npt.NDArray[np.intp],
             first: npt.NDArray[np.uint8], limit: bytes) -> bool:
    """Whether the numbers of ``len(limit)`` digits at ``starts`` (first digits ``first``)
    are at most ``limit``, compared digit by digit on fewer and fewer candidates."""
    digits = first
    for offset, highest in enumerate(limit):
        if offset:
            if not len(starts):
                return True
            digits = text[starts + offset]
        if (digits > highest).any():
            return False
        starts = starts[digits == highest]
    return True

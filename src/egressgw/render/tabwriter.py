"""Column alignment exactly like Go's text/tabwriter, as cilium-dbg uses it.

cilium-dbg builds its tables with ``tabwriter.NewWriter(out, 6, 4, 3, ' ', 0)``: minwidth
6, tabwidth 4 (unused with a space pad character), padding 3. A column is as wide as its
widest cell plus the padding, and at least minwidth. Text after the last tab of a line is
not a column cell and is written as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

CILIUM_MINWIDTH = 6
CILIUM_PADDING = 3


def tabwrite(
    rows: Iterable[Sequence[str]],
    *,
    minwidth: int = CILIUM_MINWIDTH,
    padding: int = CILIUM_PADDING,
) -> str:
    """Align ``rows`` (each a list of cells) and return the text, one line per row.

    Like Go's tabwriter, a column block spans consecutive rows that have a cell in that
    column; a row with fewer cells ends the block for the columns it lacks.
    """
    lines = [list(row) for row in rows]
    widths: list[list[int]] = [[0] * max(len(cells) - 1, 0) for cells in lines]
    for column in range(max((len(cells) - 1 for cells in lines), default=0)):
        start = 0
        while start < len(lines):
            if len(lines[start]) - 1 <= column:
                start += 1
                continue
            end = start
            while end < len(lines) and len(lines[end]) - 1 > column:
                end += 1
            width = max(minwidth, max(len(lines[i][column]) for i in range(start, end)) + padding)
            for i in range(start, end):
                widths[i][column] = width
            start = end
    out = []
    for cells, cell_widths in zip(lines, widths, strict=True):
        aligned = "".join(cell.ljust(w) for cell, w in zip(cells, cell_widths, strict=False))
        out.append(aligned + (cells[-1] if cells else "") + "\n")
    return "".join(out)

"""Running the egressgw command in-process, as a test sees it: exit code and output."""

from __future__ import annotations

import pytest

from egressgw.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``egressgw ARGS...``: its exit code (0 when it returns), standard output and error."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err

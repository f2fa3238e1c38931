"""The ``egressgw`` command line: a thin layer, each command calling one library function.

Subcommands are imported only when invoked, so ``egressgw nat-stats`` does not pay for
loading the compiled model datapath or the plotting stack.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys

import click

from egressgw import __version__
from egressgw.errors import EgressgwError

# command name -> "module:attribute" of its click command.
COMMANDS: dict[str, str] = {
    "nat-stats": "egressgw.cli.natstats:nat_stats",
    "egress": "egressgw.cli.egress:egress",
    "agent": "egressgw.cli.agent:agent",
    "statedb": "egressgw.cli.statedb:statedb",
    "lab": "egressgw.cli.lab:lab",
    "bpf": "egressgw.cli.bpf:bpf",
    "simulate": "egressgw.cli.simulate:simulate_command",
    "demo": "egressgw.cli.demo:demo",
    "plan": "egressgw.cli.plan:plan_command",
    "forecast": "egressgw.cli.forecast:forecast_command",
    "limits": "egressgw.cli.limits:limits_command",
    "alerts": "egressgw.cli.alerts:alerts_command",
    "assets": "egressgw.cli.assets:assets",
}

# Modules of the simulation extra: a command that needs one says how to install it.
SIM_MODULES = frozenset({"numba", "llvmlite", "matplotlib", "tqdm"})
SIM_HINT = "needs the simulation extra: pip install 'egressgw[sim]'"


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="egressgw")
def cli() -> None:
    """egressgw: an egress gateway that sees SNAT port exhaustion coming.

    \b
    Examples:
      egressgw demo
      egressgw nat-stats --from nat-list.txt
      egressgw <command> --help

    \b
    Shell completion (bash; zsh and fish likewise):
      eval "$(_EGRESSGW_COMPLETE=bash_source egressgw)"
    """


# Longest error line printed; messages quote short excerpts, this is the backstop.
MAX_ERROR_CHARS = 400
USAGE_EXIT = 2


def one_line(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``message`` on one line (newlines and control characters escaped), at most ``limit``."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message[: limit * 2])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str, code: int) -> None:
    try:
        sys.stderr.write(f"egressgw: error: {one_line(message)}\n")
        sys.stderr.flush()
    except (OSError, AttributeError, ValueError):
        pass  # stderr is closed or full too: the exit code is all that is left
    sys.exit(code)


_LONG_QUOTED = re.compile(r"'([^']{40})[^']+'")


def _usage_message(exc: click.ClickException) -> str:
    # click quotes the whole offending value; keep its first 40 characters.
    message = _LONG_QUOTED.sub(r"'\1'...", exc.format_message())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def _quiet_stdout() -> None:
    """After stdout failed, point it at /dev/null so the interpreter's own flush at exit
    does not fail again with an "Exception ignored" trace (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; every failure ends in one line on stderr and an exit code.

    Usage errors and bad input exit 2, Ctrl-C 130, any failure to write the output (a
    full disk) 2; a pipe on stdout closed by its reader (``| head``) ends quietly, with
    click's exit 1 (or 0 when the pipe breaks only at the final flush).
    """
    try:
        status = cli.main(args=argv, prog_name="egressgw", standalone_mode=False)
        if sys.stdout is not None:
            sys.stdout.flush()
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        code = exc.exit_code if isinstance(exc, click.UsageError) else USAGE_EXIT
        _fail(_usage_message(exc), code)
    except EgressgwError as exc:
        _fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SIM_MODULES:
            raise
        command = next((a for a in (argv or sys.argv[1:]) if a in COMMANDS), "this command")
        _fail(f"{command} {SIM_HINT} ({exc.name} is not installed)", USAGE_EXIT)
    except OSError as exc:
        if exc.filename is None and exc.errno in (
            errno.ENOSPC, errno.EIO, errno.EBADF, errno.EDQUOT, errno.EFBIG
        ):
            _quiet_stdout()
            _fail(f"cannot write the output: {exc.strerror or exc}", USAGE_EXIT)
        raise
    if isinstance(status, int) and status:
        sys.exit(status)

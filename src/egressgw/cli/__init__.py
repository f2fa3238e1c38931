"""The ``egressgw`` command line: a thin layer, each command calling one library function.

Subcommands are imported only when invoked, so ``egressgw nat-stats`` does not pay for
loading the compiled model datapath or the plotting stack.
"""

from __future__ import annotations

import importlib
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


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning egressgw errors into one line and an exit code."""
    try:
        status = cli.main(args=argv, prog_name="egressgw", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EgressgwError as exc:
        click.echo(f"egressgw: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SIM_MODULES:
            raise
        command = next((a for a in (argv or sys.argv[1:]) if a in COMMANDS), "this command")
        click.echo(f"egressgw: error: {command} {SIM_HINT} ({exc.name} is not installed)",
                   err=True)
        sys.exit(2)
    if isinstance(status, int) and status:
        sys.exit(status)

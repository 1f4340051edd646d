"""The ``cimstack`` command: the whole flow from a chip config and a model to a placement map,
an accuracy report, a run on the simulated SoC and a bitstream on a board.

``cimstack --help`` lists the commands, ``cimstack COMMAND --help`` their options and
examples; ``docs/tutorial.md`` walks through them. :func:`main` is the console script.
"""
from __future__ import annotations

import sys

import click

from cimstack.cli.common import EXIT_INTERRUPTED, Run, exit_code, setup_logging
from cimstack.errors import CimstackError

__all__ = ["cli", "main"]


class _FlowOrder(click.Group):
    """Lists the commands in the order of the flow, not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=_FlowOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog="""\b
A first session (every step writes under build/):
  cimstack train -o build/mlp.pt              # the digits MLP
  cimstack place build/mlp.pt                 # placement map: build/reports/place-mlp-default/
  cimstack eval build/mlp.pt --sweep          # accuracy, and against read noise and drift
  cimstack eval build/mlp.pt -b sim -c ulx3s-85f --samples 100  # on the Verilated SoC

\b
Exit codes:
  0  success
  1  the job ran but failed a check you asked for (--min-accuracy, --strict, a benchmark)
  2  bad command line or input: unknown option, missing file, invalid config or model
  3  the hardware side failed: link, device, simulation build, FPGA tools, flashing
  130 interrupted""")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.option("-q", "--quiet", is_flag=True, help="no status lines or progress bars, only results and errors")
@click.version_option(package_name="cimstack", prog_name="cimstack")
@click.pass_context
def cli(ctx, verbose, quiet):
    """cimstack: a memristor computation-in-memory chip as gateware, simulation and host stack."""
    run = ctx.ensure_object(Run)
    run.verbose, run.quiet = verbose, quiet
    setup_logging(verbose)


def _register() -> None:
    from cimstack.cli import flow, hardware
    for command in hardware.COMMANDS[:1] + flow.COMMANDS + hardware.COMMANDS[1:]:
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (documented in ``cimstack --help``)."""
    try:
        rv = cli.main(args=argv, prog_name="cimstack", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("cimstack: interrupted", err=True)
        return EXIT_INTERRUPTED
    except CimstackError as exc:
        click.echo(f"cimstack: error: {exc}", err=True)
        return exit_code(exc)
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())

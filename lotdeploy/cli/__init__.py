"""The `lotdeploy` command line: every click command lives in this package, nowhere else.

Thin: parse options, call the domain (spec, compiler, pki, lab...), print, exit. Exit statuses
are `lotdeploy.exitstatus.ExitStatus`; every error a user can cause is one line
`lotdeploy: error: ...` (a spec error: one `file:line:col` line per problem), never a
traceback. Command modules are imported only when their command runs (`lazy.LazyGroup`), so
`lotdeploy --help` imports neither the lab, nor cryptography, nor pydantic.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from lotdeploy.cli.app import cli
from lotdeploy.errors import LotdeployError, SpecError
from lotdeploy.exitstatus import ExitStatus

__all__ = ["cli", "main"]

PROG = "lotdeploy"


def error_line(message: str) -> str:
    """The one shape of an error message, whatever the command."""
    from lotdeploy.secret import scrub

    return f"{PROG}: error: {scrub(message)}"


def _show_usage_error(exc: click.UsageError) -> None:
    if exc.ctx is not None:
        click.echo(exc.ctx.get_usage(), err=True)
        help_option = exc.ctx.help_option_names[0] if exc.ctx.help_option_names else "--help"
        click.echo(f"Try '{exc.ctx.command_path} {help_option}' for help.", err=True)
    click.echo(error_line(exc.format_message()), err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: turns every user-caused error into one clean line and its ExitStatus."""
    try:
        # Without standalone mode, click *returns* a command's ctx.exit(code) (certs list: 2).
        code = cli.main(
            args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False
        )
    except SpecError as exc:
        from lotdeploy.secret import scrub

        for diagnostic in exc.diagnostics:
            click.echo(scrub(str(diagnostic)), err=True)
        sys.exit(ExitStatus.ERROR)
    except LotdeployError as exc:
        click.echo(error_line(str(exc)), err=True)
        sys.exit(ExitStatus.ERROR)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        sys.exit(ExitStatus.INTERRUPTED)
    except click.UsageError as exc:
        # Usage errors exit 1, not click's 2: `plan --detailed-exitcode` and `certs list`
        # use 2 to mean "changes / action needed", which a typo must never fake.
        _show_usage_error(exc)
        sys.exit(ExitStatus.ERROR)
    except click.ClickException as exc:
        click.echo(error_line(exc.format_message()), err=True)
        sys.exit(ExitStatus.ERROR)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        sys.exit(ExitStatus.ERROR)
    except Exception as exc:  # a bug: say so plainly, still without secrets
        import traceback

        from lotdeploy.secret import scrub

        click.echo(
            f"{PROG}: internal error: {type(exc).__name__}: {scrub(str(exc))}", err=True
        )
        if os.environ.get("LOTDEPLOY_DEBUG"):
            click.echo(scrub(traceback.format_exc()), err=True)
        else:
            click.echo("(set LOTDEPLOY_DEBUG=1 for a traceback; please report it)", err=True)
        sys.exit(ExitStatus.INTERNAL)
    if isinstance(code, int) and code:
        sys.exit(code)

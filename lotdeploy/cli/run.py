"""Run the command line through click, and report every failure in the one style.

Exit statuses are `lotdeploy.exitstatus.ExitStatus`; every error a user can cause is one line
`lotdeploy: error: ...` (a spec error: one `file:line:col` line per problem), never a
traceback. Everything printed goes through `lotdeploy.terminal`'s guard (secrets scrubbed,
control characters shown as escapes), installed first thing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Sequence

import click

from lotdeploy.cli.app import cli
from lotdeploy.exitstatus import ExitStatus

__all__ = ["cli", "error_line", "main", "report"]

PROG = "lotdeploy"


def error_line(message: str) -> str:
    """The one shape of an error message, whatever the command: one line, even when the
    message quotes something from outside (a name in a damaged file) that holds a line
    break; the break is shown as `\\n` (the terminal guard shows other controls)."""
    from lotdeploy.secret import scrub

    return f"{PROG}: error: {one_line(scrub(message))}"


def one_line(text: str) -> str:
    """`text` with its line breaks shown, not made."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _show_usage_error(exc: click.UsageError) -> None:
    no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2
    if isinstance(exc, no_args_is_help):  # a bare group: its help, not an error line
        exc.show()
        return
    if exc.ctx is not None:
        click.echo(exc.ctx.get_usage(), err=True)
        help_option = exc.ctx.help_option_names[0] if exc.ctx.help_option_names else "--help"
        click.echo(f"Try '{exc.ctx.command_path} {help_option}' for help.", err=True)
    click.echo(error_line(exc.format_message()), err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: turns every user-caused error into one clean line and its ExitStatus.

    With `--json`, an error is also one JSON document on stdout, so a machine reading the
    output never gets an empty stream. Output that cannot be written (a full disk, a closed
    pipe) is an error too: a truncated `plan --json` must not exit 0.
    """
    from lotdeploy import terminal

    terminal.install()  # every print path from here on: secrets scrubbed, escapes shown
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    if args[:1] != ["lab"]:
        # A command builds tens of thousands of acyclic objects (routes, changes) and ends:
        # collect young objects a hundredth as often (the lab's long-running broker keeps
        # the default). bench/ measures what it buys; peak memory stays bounded.
        gc.set_threshold(70_000, 10, 10)
    try:
        # Without standalone mode, click *returns* a command's ctx.exit(code) (certs list: 2).
        code = cli.main(args=args, prog_name=PROG, standalone_mode=False)
        sys.stdout.flush()
    except (Exception, KeyboardInterrupt) as exc:  # a command's sys.exit passes through
        status = report(exc)
        if as_json and status != ExitStatus.OK and not isinstance(exc, OSError):
            _json_error(exc, status)
        sys.exit(status)
    if isinstance(code, int) and code:
        sys.exit(code)


def _json_error(exc: BaseException, status: int) -> None:
    """The error as JSON on stdout: {"error": {...}, "diagnostics": [...]}."""
    from lotdeploy.errors import SpecError
    from lotdeploy.secret import dumps

    diagnostics = []
    if isinstance(exc, SpecError):
        diagnostics = [
            {
                "file": d.file,
                "line": d.line,
                "column": d.column,
                "severity": d.severity,
                "message": d.message,
            }
            for d in exc.diagnostics
        ]
    message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    doc = {
        "error": {"kind": type(exc).__name__, "message": message, "exit_status": int(status)},
        "diagnostics": diagnostics,
    }
    try:
        sys.stdout.write(dumps(doc) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # stdout itself is what failed; the stderr line stands


def report(exc: BaseException) -> int:
    """Print what went wrong, in the one style; the exit status it means.

    Called only on failure, so the error types (and their imports) cost a good run nothing.
    """
    from lotdeploy.errors import LotdeployError, SpecError
    from lotdeploy.secret import scrub

    if isinstance(exc, SpecError):
        for diagnostic in exc.diagnostics:
            click.echo(one_line(scrub(str(diagnostic))), err=True)
        return ExitStatus.ERROR
    if isinstance(exc, LotdeployError):
        click.echo(error_line(str(exc)), err=True)
        return ExitStatus.ERROR
    if isinstance(exc, click.exceptions.Abort):
        click.echo(f"{PROG}: aborted", err=True)
        return ExitStatus.INTERRUPTED
    if isinstance(exc, click.UsageError):
        # Usage errors exit 1, not click's 2: `plan --detailed-exitcode` and `certs list`
        # use 2 to mean "changes / action needed", which a typo must never fake.
        _show_usage_error(exc)
        return ExitStatus.ERROR
    if isinstance(exc, click.ClickException):
        click.echo(error_line(exc.format_message()), err=True)
        return ExitStatus.ERROR
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        click.echo(f"{PROG}: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return ExitStatus.ERROR
    if isinstance(exc, OSError) and exc.filename is None:
        # Writing our own output failed (stdout on a full disk, a closed terminal).
        with contextlib.suppress(OSError):
            sys.stderr.write(error_line(f"cannot write the output: {exc.strerror or exc}") + "\n")
        return ExitStatus.ERROR
    if isinstance(exc, OSError):
        # A file or directory the user's environment refused (permissions, a missing
        # directory, a full disk) that no layer put into words: name it, exit 1.
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        click.echo(error_line(f"{where}: {exc.strerror or exc}"), err=True)
        return ExitStatus.ERROR
    # Anything else is a bug: say so plainly, still without secrets.
    click.echo(f"{PROG}: internal error: {type(exc).__name__}: {scrub(str(exc))}", err=True)
    if os.environ.get("LOTDEPLOY_DEBUG"):
        import traceback

        click.echo(scrub("".join(traceback.format_exception(exc))), err=True)
    else:
        click.echo("(set LOTDEPLOY_DEBUG=1 for a traceback; please report it)", err=True)
    return ExitStatus.INTERNAL

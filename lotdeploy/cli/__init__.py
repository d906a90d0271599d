"""The `lotdeploy` command line: every click command lives in this package, nowhere else.

Thin: parse options, call the domain (spec, compiler, pki, lab...), print, exit. Command
modules are imported only when their command runs (`lazy.LazyGroup`), and the top-level
`--help` and `--version` are answered before click is even imported (`fasthelp`): an
operator's shell completion, CI step or wrapper script pays ~15 ms, not ~60 ms.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself is not imported: it is a third of --help's start-up
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["cli", "main", "report"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the fast answers first, then click (lotdeploy.cli.run)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1 and args[0] in ("--help", "-h", "--version"):
        from lotdeploy.cli.fasthelp import fast_answer

        text = fast_answer(args[0])
        if text is not None:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except BrokenPipeError:
                sys.exit(1)
            return
    from lotdeploy.cli.run import main as run

    run(argv)


def __getattr__(name: str) -> Any:
    """`cli` (the click group) and `report` without importing click at start-up."""
    if name == "cli":
        from lotdeploy.cli.app import cli

        return cli
    if name == "report":
        from lotdeploy.cli.run import report

        return report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

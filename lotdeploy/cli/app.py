"""The root `lotdeploy` group: which commands exist, their one-line help, where they live.

Importing this module imports click and nothing heavy; a command's module is imported only
when that command runs (see `lazy.py`).
"""

from __future__ import annotations

import click

from lotdeploy import __version__
from lotdeploy.cli.lazy import LazyGroup
from lotdeploy.cli.table import COMMANDS, ROOT_HELP


def scrub_all_logging() -> None:
    """Put the ScrubFilter on every root handler, so no log line of any layer shows a secret.

    Run when a command runs (not for --help/--version, which log nothing and must start fast).
    Without a handler, Python would print warnings through its filterless `lastResort`; this
    installs the same (stderr, WARNING, bare message) with the filter on it.
    """
    import logging
    import sys

    from lotdeploy.secret import ScrubFilter

    root = logging.getLogger()
    if not root.handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.WARNING)
        root.addHandler(stderr)
    for handler in root.handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="lotdeploy")
def cli() -> None:
    scrub_all_logging()


cli.help = ROOT_HELP

"""The root `lotdeploy` group: which commands exist, their one-line help, where they live.

Importing this module imports click and nothing heavy; a command's module is imported only
when that command runs (see `lazy.py`).
"""

from __future__ import annotations

import click

from lotdeploy import __version__
from lotdeploy.cli.lazy import LazyCommand, LazyGroup

COMMANDS = {
    "init": LazyCommand(
        "lotdeploy.cli.core:init",
        "Write a commented example site.yaml (two regions, TLS on) into DIRECTORY.",
    ),
    "validate": LazyCommand(
        "lotdeploy.cli.core:validate",
        "Check a site spec; print a one-line summary or every error (file:line:col).",
    ),
    "render": LazyCommand(
        "lotdeploy.cli.core:render",
        "Write each node's bundle to OUT/<node>/: routes.lot, TLS files, manifest.json.",
    ),
    "plan": LazyCommand(
        "lotdeploy.cli.core:plan",
        "Show what deploying the site would change: grouped site → region → node, + ~ - markers.",
    ),
    "lint": LazyCommand(
        "lotdeploy.cli.core:lint",
        "Parse LOT files and check their routes; errors as FILE:LINE:COL: message.",
    ),
    "schema": LazyCommand(
        "lotdeploy.cli.core:schema", "Print the site spec's JSON Schema (for editors and CI)."
    ),
    "graph": LazyCommand(
        "lotdeploy.cli.core:graph",
        "Print the topology: nodes grouped by region, links labelled with their validity.",
    ),
    "certs": LazyCommand(
        "lotdeploy.cli.pki:certs", "Cluster PKI: the site CA and one certificate per TLS node."
    ),
    "creds": LazyCommand(
        "lotdeploy.cli.pki:creds",
        "The shared cluster credential (user and password the routes carry).",
    ),
    "lab": LazyCommand(
        "lotdeploy.cli.lab:lab",
        "A real multi-region Coreflux-compatible cluster on this machine, to rehearse on.",
    ),
}


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
    """Compile, plan and deploy Coreflux MQTT_CLUSTER meshes from one site spec.

    \b
    Example:
      lotdeploy init mysite && lotdeploy plan mysite/site.yaml
    """
    scrub_all_logging()

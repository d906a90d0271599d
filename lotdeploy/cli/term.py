"""Terminal output shared by every command: tables.

On a terminal, tables are drawn by rich with status words coloured; piped or in CI they are
plain aligned columns (stable, grep- and awk-friendly). rich is imported only to draw on a
terminal, through `lotdeploy.terminal.rich_console` (every cell's text cleaned of escape
sequences). Nothing here ever sees a secret.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

STATUS_STYLES = {
    "ok": "green",
    "up": "green",
    "no": "green",
    "renew soon": "yellow",
    "missing": "yellow",
    "expired": "red",
    "down": "red",
    "cut": "red",
    "SAN mismatch": "red",
    "wrong CA": "red",
}


def interactive() -> bool:
    """Colour and tables only for a person at a capable terminal (not NO_COLOR, TERM=dumb)."""
    return (
        sys.stdout.isatty()
        and "NO_COLOR" not in os.environ
        and os.environ.get("TERM", "") not in ("dumb", "")
    )


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if interactive():
        _rich_table(header, rows)
        return
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _rich_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.table import Table
    from rich.text import Text

    from lotdeploy.terminal import rich_console

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in header:
        table.add_column(column)
    for row in rows:  # Text, not markup: a cell from a broker cannot pick its own style
        table.add_row(*(Text(str(c), style=STATUS_STYLES.get(str(c), "")) for c in row))
    rich_console().print(table)

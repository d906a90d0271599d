"""`lotdeploy --help` and `--version` without importing click (~45 ms of a ~60 ms start).

The text is laid out exactly as click would lay it out (same width rule, same wrapping:
tests/test_cli_structure.py compares the two at many terminal widths). Anything this
cannot answer as click would returns None, and click answers instead.
"""

from __future__ import annotations

import os
import sys

from lotdeploy import __version__
from lotdeploy.cli.table import COMMANDS, ROOT_HELP

PROG = "lotdeploy"
#: the root group's context_settings["max_content_width"] (app.py)
MAX_CONTENT_WIDTH = 100
OPTIONS = (
    ("--version", "Show the version and exit."),
    ("-h, --help", "Show this message and exit."),
)


def fast_answer(option: str) -> str | None:
    if option == "--version":
        return f"{PROG}, version {__version__}\n"
    return root_help(_width())


def _columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil: COLUMNS, else the
    terminal's width, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _width() -> int:
    """click's rule: the terminal's columns, at most max_content_width, minus 2, at least 50."""
    return max(min(_columns(), MAX_CONTENT_WIDTH) - 2, 50)


def _definitions(rows: tuple[tuple[str, str], ...], width: int) -> list[str]:
    """click's HelpFormatter.write_dl at indent 2 (col_max 30, col_spacing 2)."""
    import textwrap

    first_col = min(max(len(term) for term, _ in rows), 30) + 2
    text_width = max(width - first_col - 2, 10)
    lines = []
    for term, text in rows:
        wrapped = textwrap.wrap(text, text_width, replace_whitespace=False) or [""]
        if len(term) <= first_col - 2:
            lines.append(f"  {term}{' ' * (first_col - len(term))}{wrapped[0]}")
        else:
            lines += [f"  {term}", f"{' ' * (first_col + 2)}{wrapped[0]}"]
        lines += [f"{' ' * (first_col + 2)}{rest}" for rest in wrapped[1:]]
    return lines


def _help_text(width: int) -> list[str]:
    """The group's help at indent 2: plain paragraphs rewrapped, `\\b` ones kept as written."""
    import textwrap

    lines: list[str] = []
    for paragraph in ROOT_HELP.strip("\n").split("\n\n"):
        if lines:
            lines.append("")
        if paragraph.startswith("\b\n"):
            lines += [f"  {line}" for line in paragraph[2:].split("\n")]
        else:
            lines += textwrap.wrap(
                " ".join(paragraph.split()), width, initial_indent="  ", subsequent_indent="  "
            )
    return lines


def root_help(width: int) -> str:
    commands = tuple((name, COMMANDS[name].short_help) for name in sorted(COMMANDS))
    lines = [
        f"Usage: {PROG} [OPTIONS] COMMAND [ARGS]...",
        "",
        *_help_text(width),
        "",
        "Options:",
        *_definitions(OPTIONS, width),
        "",
        "Commands:",
        *_definitions(commands, width),
    ]
    return "\n".join(lines) + "\n"

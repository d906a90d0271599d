"""Render the AST in the vendor's canonical layout, and clean text for sending/comparing.

Canonical form (docs/coreflux-interface.md §1): DEFINE at column 0, 4 spaces per level, strings
double-quoted, ints single-quoted ('1883') when the AST says so, bare `true`, routes separated
by one blank line, a final newline. `parse(format_routes(rs)) == rs` for every AST whose
strings are representable: a string that cannot be written (a double quote or line break,
there is no escape) raises CompileError rather than producing a route that means something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lotdeploy.errors import CompileError
from lotdeploy.lot.ast import Block, Bool, EnvRef, Int, Route, SecretRef, Str, Value

__all__ = ["format_route", "format_routes", "normalize", "strip_comments"]

_INDENT = "    "
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UPPER = re.compile(r"[A-Z][A-Z0-9_]*")


def _quoted(text: str, what: str) -> str:
    """Double-quote `text`; LOT has no escapes, so some strings cannot be written at all."""
    if '"' in text or "\n" in text or "\r" in text:
        raise CompileError(f"{what}: a double quote or line break cannot be written in LOT")
    return f'"{text}"'


def _value(value: Value, key: str) -> str:
    if isinstance(value, Str):
        return _quoted(value.value, f"value of {key}")
    if isinstance(value, Bool):
        word = "true" if value.value else "false"
        return f'"{word}"' if value.quoted else word
    if isinstance(value, Int):
        return f"'{value.value}'" if value.quoted else str(value.value)
    if isinstance(value, SecretRef):
        return "GET SECRET " + _quoted(value.name, f"secret name of {key}")
    if isinstance(value, EnvRef):
        return "GET ENV " + _quoted(value.name, f"environment name of {key}")
    raise CompileError(f"value of {key}: not a LOT value: {type(value).__name__}")


def _word(text: str, pattern: re.Pattern[str], what: str) -> str:
    """Keys, kinds, names and types are bare words: refuse anything else."""
    if not pattern.fullmatch(text):
        raise CompileError(f"{what} {text!r} is not a valid LOT identifier")
    return text


def _block(block: Block, depth: int, out: list[str]) -> None:
    pad = _INDENT * depth
    head = f"{pad}ADD {_word(block.kind, _UPPER, 'block kind')}"
    if block.name is not None:
        head += " " + _word(block.name, _NAME, "block name")
    out.append(head)
    for setting in block.settings:
        key = _word(setting.key, _UPPER, "key")
        out.append(f"{pad}{_INDENT}WITH {key} {_value(setting.value, key)}")
    for child in block.children:
        _block(child, depth + 1, out)


def format_route(route: Route) -> str:
    """One route in canonical form, ending with a newline."""
    out = [
        f"DEFINE ROUTE {_word(route.name, _NAME, 'route name')}"
        f" WITH TYPE {_word(route.type, _UPPER, 'route type')}"
    ]
    for block in route.blocks:
        _block(block, 1, out)
    return "\n".join(out) + "\n"


def format_routes(routes: Iterable[Route]) -> str:
    """Routes separated by one blank line; "" for no routes, else ends with a newline."""
    return "\n".join(format_route(route) for route in routes)


def _strip_line(line: str) -> str:
    """One line without its `//` comment (outside double quotes) and trailing whitespace."""
    if "//" in line:
        in_string = False
        for i, char in enumerate(line):
            if char == '"':
                in_string = not in_string
            elif char == "/" and not in_string and line.startswith("//", i):
                line = line[:i]
                break
    return line.rstrip(" \t\r")


def strip_comments(text: str) -> str:
    """Remove `//` comments and trailing whitespace; what is sent to a broker never has them.

    Line structure is kept (a whole-line comment leaves an empty line) so line numbers in a
    broker's error still match the file; CRLF becomes LF. A `//` inside a double-quoted
    string is text, not a comment.
    """
    return "\n".join(_strip_line(line) for line in text.split("\n"))


def normalize(text: str) -> str:
    """Text for comparing LOT code (docs/coreflux-interface.md §3: normalised text, not bytes).

    Comments stripped, each line trimmed, blank lines dropped, lines joined by "\\n" with no
    final newline.
    """
    lines = (_strip_line(line).strip(" \t") for line in text.split("\n"))
    return "\n".join(line for line in lines if line)

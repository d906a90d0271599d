"""Route templates as a broker answers `-routeCode <TYPE>`: LOT with placeholders.

A template is LOT whose values (and route name) are `#name,type,description,regex,env#`
placeholders, bare (`WITH IP #IP,string,PLC address,,true#`, the vendor's form) or inside
the value's quotes (`WITH BROKER_PORT '#port,int,...#'`), plus a template-only
`ADD METADATA` block (docs/coreflux-interface.md §1). The grammar has no placeholder token,
and should not: a placeholder must never reach a broker. So `mask_placeholders` rewrites each
one in place into something the grammar reads (a double-quoted string, or the placeholder's
name where the route name goes), keeping every other position, and the ordinary parser and
linter do the rest: `lint` on a template reports "looks like a template placeholder" and
"ADD METADATA is template-only" instead of a syntax error.

Each placeholder is read by `protocol.parse_placeholder` (five fields; description and regex
may be empty; the fifth a boolean): one reader for doctor and for files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lotdeploy.errors import LotSyntaxError
from lotdeploy.lot.ast import Route
from lotdeploy.protocol import Placeholder, parse_placeholder

#: A placeholder, with the quotes around it when it has the same on both sides.
_SPOT = re.compile(r"""(?P<q>["']?)#(?P<body>[^#\n]*,[^#\n]*)#(?P=q)""")
_ROUTE_NAME_SLOT = re.compile(r"\s*DEFINE\s+ROUTE\s+$")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class PlaceholderAt:
    """A placeholder and where it stands in the template text (1-based line and column)."""

    line: int
    column: int
    placeholder: Placeholder
    #: True where the route name goes (`DEFINE ROUTE #...# WITH TYPE ...`)
    is_route_name: bool = False


@dataclass(frozen=True)
class Template:
    """A parsed template: its routes (placeholders read as strings) and its placeholders."""

    routes: tuple[Route, ...]
    placeholders: tuple[PlaceholderAt, ...]


def mask_placeholders(text: str, filename: str = "<string>") -> tuple[str, list[PlaceholderAt]]:
    """The text with every placeholder made parseable, and the placeholders found.

    A malformed placeholder is a LotSyntaxError at its position, saying what is wrong.
    """
    lines = text.split("\n")
    found: list[PlaceholderAt] = []
    for index, line in enumerate(lines):
        if "#" not in line:
            continue
        pieces: list[str] = []
        last = 0
        for match in _SPOT.finditer(line):
            try:
                placeholder = parse_placeholder(match.group("body"))
            except ValueError as exc:
                raise LotSyntaxError(filename, index + 1, match.start() + 1, str(exc)) from None
            is_name = _ROUTE_NAME_SLOT.match(line[: match.start()]) is not None
            found.append(PlaceholderAt(index + 1, match.start() + 1, placeholder, is_name))
            pieces.append(line[last : match.start()])
            pieces.append(_replacement(match, is_name, placeholder))
            last = match.end()
        if pieces:
            lines[index] = "".join(pieces) + line[last:]
    return "\n".join(lines), found


def _replacement(match: re.Match[str], is_route_name: bool, placeholder: Placeholder) -> str:
    """Where the route name goes: the placeholder's name (padded to the same width, so the
    rest of the line keeps its columns); anywhere else: the placeholder as a "string"."""
    spot = match.group(0)
    if is_route_name:
        name = placeholder.name if _IDENTIFIER.fullmatch(placeholder.name) else "RouteName"
        return name.ljust(len(spot))
    return '"' + f"#{match.group('body')}#" + '"'


def has_placeholders(text: str) -> bool:
    """Whether the text holds anything in placeholder form (cheap: no parsing)."""
    return "#" in text and _SPOT.search(text) is not None


def parse_template(text: str, filename: str = "<string>") -> Template:
    """Parse a `-routeCode` template; LotSyntaxError for malformed LOT or placeholders."""
    from lotdeploy.lot.parser import parse

    masked, found = mask_placeholders(text, filename)
    return Template(parse(masked, filename), tuple(found))

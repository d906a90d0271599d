"""Render each node's route file and prove it: the text is parsed back with the LOT parser
and must equal the intended routes, or nothing is written (a template bug never ships)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from lotdeploy.compiler.routes import canonical_route_text, node_route_settings, route_tree
from lotdeploy.compiler.templates import render_template
from lotdeploy.errors import CompileError, LotSyntaxError
from lotdeploy.lot.ast import Route
from lotdeploy.model import Node, Site
from lotdeploy.routesecret import broker_secret_name
from lotdeploy.secret import Secret, scrub
from lotdeploy.values import (
    ADDRESS_MAX_BYTES,
    NAME_MAX_BYTES,
    VALUE_MAX_BYTES,
    Role,
    check_command_token,
    problem,
)


@dataclass(frozen=True)
class NodeArtifact:
    """One node's route file, verified. The LOT trees are made only when asked for: render
    keeps just the text (at 1,000 nodes the trees would be most of its memory)."""

    node: str
    #: holds the cluster password: write it 0600, never print it (hidden from repr)
    text: str = field(repr=False)
    settings: tuple[dict[str, Any], ...] = field(repr=False, compare=False)
    password: Secret = field(repr=False, compare=False)

    @cached_property
    def routes(self) -> tuple[Route, ...]:
        """The intended routes as LOT trees (what the text parses to)."""
        return tuple(route_tree(s, self.password) for s in self.settings)


def compile_node(
    site: Site,
    node: Node,
    password: Secret,
    credential_version: int = 1,
    password_secret: str | None = None,
) -> NodeArtifact:
    """Render the node's route file and prove it equals the intended routes.

    `password_secret`: the routes read the password from this broker secret
    (`GET SECRET`, lotdeploy.routesecret); the file then holds no password, and a template
    is not even given it.

    The proof is cheap when the text has the canonical layout (the built-in template): it
    must be, line for line, the canonical text of the intended routes. Any other layout (a
    site's own template) is parsed back and compared as LOT trees.
    """
    settings = node_route_settings(site, node, credential_version, password_secret)
    _check_values(node, settings, password, client_ids_proven=site.client_ids_plain)
    shown = "" if password_secret else password.reveal()
    context = {
        "site": {"name": site.name},
        "node": {"name": node.name, "region": node.region, "address": node.address},
        # Objects, not dicts: Jinja looks an attribute up first (a dict would raise
        # AttributeError on every `route.x`, a third of render's time); `route["x"]` works too.
        "routes": [SimpleNamespace(**s, password=shown) for s in settings],
    }
    text = render_template(site.templates_dir, context)
    artifact = NodeArtifact(node.name, text, tuple(settings), password)
    if matches_canonical_pieces(text, [canonical_route_text(s, password) for s in settings]):
        return artifact
    # Only a site's own template layout gets here: the parser (and lark) load on demand.
    from lotdeploy.lot.parser import parse

    intended = artifact.routes
    filename = f"{node.name}/routes.lot"
    try:
        parsed = parse(text, filename)
    except LotSyntaxError as exc:
        raise CompileError(
            f"template output for node {node.name} does not parse: {scrub(str(exc))}"
        ) from None
    if parsed != intended:
        hint = (
            " (its routes read the password from the broker's secret store: the template "
            'must write `WITH PASSWORD GET SECRET "{{ route.password_secret }}"` when '
            "route.password_secret is set, as the built-in one does)"
            if password_secret
            else ""
        )
        raise CompileError(
            f"template output for node {node.name} differs from the intended routes "
            f"({_first_difference(intended, parsed)}); nothing was written{hint}"
        )
    return artifact


#: Trailing spaces, and runs of lines that are blank or hold only a comment: what the
#: parser skips.
_TRAILING_SPACES = re.compile(r" +$", re.MULTILINE)
_SKIPPED_RUNS = re.compile(r"\n(?: *(?://[^\n]*)?\n)+")


def matches_canonical(text: str, canonical: str) -> bool:
    """The cheap proof: `text`, less blank and whole-line comment lines (and trailing
    spaces), is exactly `canonical`, the canonical text of the intended routes with their
    blank lines left out.

    Sound because `parse(format_routes(rs)) == rs` (tests/test_lot.py checks it with
    hypothesis), canonical_route_text equals format_route (tests/test_compiler.py), and the
    parser ignores blank and comment-only lines and trailing spaces. Anything else (another
    layout, a trailing comment, CRLF) is not refused here: it gets the full parse-back.
    """
    if " \n" in text or text.endswith(" "):
        text = _TRAILING_SPACES.sub("", text)
    return _SKIPPED_RUNS.sub("\n", f"\n{text}\n") == (f"\n{canonical}\n" if canonical else "\n")


def _skip_lines(text: str, pos: int) -> int:
    """Where the first line from `pos` on that the parser does not skip (blank, only
    spaces, a whole-line comment) starts; len(text) if there is none."""
    size = len(text)
    while pos < size:
        char = text[pos]
        if char == "\n":
            pos += 1
        elif char in "/ ":
            end = text.find("\n", pos)
            line = text[pos : end if end >= 0 else size].lstrip(" ")
            if line and not line.startswith("//"):
                return pos
            if end < 0:
                return size
            pos = end + 1
        else:
            return pos
    return size


def matches_canonical_pieces(text: str, pieces: list[str]) -> bool:
    """`matches_canonical(text, "\n".join(pieces))` (render's hot path; the whole-text
    regex cost ~4 µs a route): each route's canonical text must follow, from the start of
    a line, the skipped lines before it. True only if `matches_canonical` is; it may say
    False where that says True (a comment inside a route), which only sends the text to
    the full parse-back (tests/test_compiler.py checks both)."""
    if " \n" in text or text.endswith(" "):
        text = _TRAILING_SPACES.sub("", text)
    pos = 0
    for piece in pieces:
        pos = _skip_lines(text, pos)
        if not text.startswith(piece, pos):
            return False
        pos += len(piece)
        if pos < len(text):
            if text[pos] != "\n":
                return False
            pos += 1
    return _skip_lines(text, pos) == len(text)


#: Route setting -> (role, cap): the same rule the spec applied, checked again on what is
#: actually emitted (a Site built in code, or a username with a rotation suffix).
_ROLES = {
    "name": (Role.IDENTIFIER, VALUE_MAX_BYTES),
    "broker_address": (Role.LOT_STRING, ADDRESS_MAX_BYTES + 1),
    "client_id": (Role.LOT_STRING, NAME_MAX_BYTES),
    "username": (Role.COMMAND_TOKEN, VALUE_MAX_BYTES),
}


#: Route names, addresses and user names repeat across nodes (each peer's appear on every
#: other node): each is checked once, then found in its key's set of values known safe (a
#: set lookup, where a cached call hashed the Role enum in Python for every route). Client
#: ids are unique per link, so never kept.
_KNOWN_SAFE: dict[str, set[str]] = {key: set() for key in _ROLES if key != "client_id"}


def _check_values(
    node: Node, settings: list[dict[str, Any]], password: Secret, client_ids_proven: bool = False
) -> None:
    """Refuse to emit a value that LOT or the command line cannot carry (never shown).
    `client_ids_proven`: the site proved every client id plain (Site.client_ids_plain)."""
    roles = [(k, v) for k, v in _ROLES.items() if not (client_ids_proven and k == "client_id")]
    for key, (role, cap) in roles:
        known = _KNOWN_SAFE.get(key)
        for route in settings:
            value = str(route[key])
            if known is not None and value in known:
                continue
            if problem(value, role, cap):
                _refuse_first(node, settings, roles)
            if known is not None:
                known.add(value)
    if not settings:
        return  # no route carries the password (a one-node site has none)
    found_password = check_command_token(password.reveal())
    if found_password:
        raise CompileError(f"the cluster password {found_password}; it cannot be used")


def _refuse_first(
    node: Node, settings: list[dict[str, Any]], roles: list[tuple[str, tuple[Role, int]]]
) -> None:
    """Raise for the first unsafe value in route order, then key order (the one reported)."""
    for route in settings:
        for key, (role, cap) in roles:
            found = problem(str(route[key]), role, cap)
            if found:
                raise CompileError(
                    f"node {node.name}: {key} of route {route['name']!r} {found}"
                    if key != "name"
                    else f"node {node.name}: a route name {found}"
                )
    raise CompileError(f"node {node.name}: a route value cannot be carried")  # not reached


def compile_site(
    site: Site,
    password: Secret,
    credential_version: int = 1,
    stored: frozenset[str] = frozenset(),
) -> list[NodeArtifact]:
    """Every node's artifact; the nodes in `stored` read the password from their broker's
    secret store (lotdeploy.routesecret)."""
    secret = broker_secret_name(credential_version)
    return [
        compile_node(
            site, node, password, credential_version, secret if node.name in stored else None
        )
        for node in site.nodes
    ]


def _first_difference(intended: tuple[Route, ...], parsed: tuple[Route, ...]) -> str:
    if len(intended) != len(parsed):
        return f"{len(parsed)} routes instead of {len(intended)}"
    for want, got in zip(intended, parsed, strict=True):
        if want != got:
            return f"route {want.name} at line {got.line}"
    return "unknown"

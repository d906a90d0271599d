"""Render each node's route file and prove it: the text is parsed back with the LOT parser
and must equal the intended routes, or nothing is written (a template bug never ships)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lotdeploy.compiler.routes import node_route_settings, route_tree
from lotdeploy.compiler.templates import render_template
from lotdeploy.errors import CompileError, LotSyntaxError
from lotdeploy.lot import format_routes, parse
from lotdeploy.lot.ast import Route
from lotdeploy.model import Node, Site
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
    node: str
    #: holds the cluster password: write it 0600, never print it (hidden from repr)
    text: str = field(repr=False)
    routes: tuple[Route, ...] = field(repr=False)


def compile_node(
    site: Site, node: Node, password: Secret, credential_version: int = 1
) -> NodeArtifact:
    settings = node_route_settings(site, node, credential_version)
    _check_values(node, settings, password)
    intended = tuple(route_tree(s, password) for s in settings)
    context = {
        "site": {"name": site.name},
        "node": {"name": node.name, "region": node.region, "address": node.address},
        "routes": [{**s, "password": password.reveal()} for s in settings],
    }
    text = render_template(site.templates_dir, context)
    if matches_canonical(text, intended):
        return NodeArtifact(node.name, text, intended)
    filename = f"{node.name}/routes.lot"
    try:
        parsed = parse(text, filename)
    except LotSyntaxError as exc:
        raise CompileError(
            f"template output for node {node.name} does not parse: {scrub(str(exc))}"
        ) from None
    if parsed != intended:
        raise CompileError(
            f"template output for node {node.name} differs from the intended routes "
            f"({_first_difference(intended, parsed)}); nothing was written"
        )
    return NodeArtifact(node.name, text, intended)


def matches_canonical(text: str, intended: tuple[Route, ...]) -> bool:
    """The cheap proof: `text`, less blank and whole-line comment lines, is line for line
    the emitter's canonical text of `intended` (less its blank lines).

    Sound because `parse(format_routes(rs)) == rs` (tests/test_lot.py checks it with
    hypothesis) and the parser ignores blank and comment-only lines and trailing spaces.
    Anything else (a site template with another layout, a trailing comment) is not
    rejected here: it goes through the full parse-back comparison.
    """
    canonical = [line for line in format_routes(intended).split("\n") if line]
    candidate = [
        line.rstrip(" ")
        for line in text.split("\n")
        if line.strip(" ") and not line.lstrip(" ").startswith("//")
    ]
    return candidate == canonical


#: Route setting -> (role, cap): the same rule the spec applied, checked again on what is
#: actually emitted (a Site built in code, or a username with a rotation suffix).
_ROLES = {
    "name": (Role.IDENTIFIER, VALUE_MAX_BYTES),
    "broker_address": (Role.LOT_STRING, ADDRESS_MAX_BYTES + 1),
    "client_id": (Role.LOT_STRING, NAME_MAX_BYTES),
    "username": (Role.COMMAND_TOKEN, VALUE_MAX_BYTES),
}


def _check_values(node: Node, settings: list[dict[str, Any]], password: Secret) -> None:
    """Refuse to emit a value that LOT or the command line cannot carry (never shown)."""
    for route in settings:
        for key, (role, cap) in _ROLES.items():
            found = problem(str(route[key]), role, cap)
            if found:
                raise CompileError(
                    f"node {node.name}: {key} of route {route['name']!r} {found}"
                    if key != "name"
                    else f"node {node.name}: a route name {found}"
                )
    found_password = check_command_token(password.reveal())
    if found_password:
        raise CompileError(f"the cluster password {found_password}; it cannot be used")


def compile_site(site: Site, password: Secret, credential_version: int = 1) -> list[NodeArtifact]:
    return [compile_node(site, node, password, credential_version) for node in site.nodes]


def _first_difference(intended: tuple[Route, ...], parsed: tuple[Route, ...]) -> str:
    if len(intended) != len(parsed):
        return f"{len(parsed)} routes instead of {len(intended)}"
    for want, got in zip(intended, parsed, strict=True):
        if want != got:
            return f"route {want.name} at line {got.line}"
    return "unknown"

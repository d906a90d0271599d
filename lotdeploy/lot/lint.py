"""Check LOT files before they reach a broker: syntax, then MQTT_CLUSTER semantics.

`lint_text` is a pure function of the text (the CLI, the compiler's self-check and the tests
share it); `lint_file` only adds reading. Errors are what a broker would reject or what would
break a route or the command line it travels in; warnings are what is legal but doubtful
(undocumented keys, unusual layout).
"""

from __future__ import annotations

import re
from pathlib import Path

from lotdeploy.errors import Diagnostic, LotSyntaxError
from lotdeploy.fsutil import UnreadableFile, read_regular_file
from lotdeploy.lot.ast import Block, Bool, EnvRef, Int, Route, SecretRef, Setting, Str
from lotdeploy.lot.parser import parse
from lotdeploy.lot.template import has_placeholders, mask_placeholders
from lotdeploy.protocol import (
    BRIDGE_ONLY_CLUSTER_KEYS,
    CLUSTER_CONFIG_BLOCK,
    CLUSTER_CONFIG_KEYS,
    CLUSTER_KEY_ORDER,
    DEFAULT_PORT,
    REQUIRED_CLUSTER_KEYS,
    ROUTE_NAME_PATTERN,
    ROUTE_TYPE,
    cluster_keys_of_kind,
)
from lotdeploy.values import Role, problem, reason

__all__ = ["lint_file", "lint_text", "unsafe_string_reason"]

ROUTE_NAME = re.compile(ROUTE_NAME_PATTERN)
#: Keys the vendor documents for CLUSTER_CONFIG (USE_TLS appears in its examples).
DOCUMENTED_KEYS = frozenset(CLUSTER_KEY_ORDER)
_INT_KEYS = cluster_keys_of_kind("int")
_BOOL_KEYS = cluster_keys_of_kind("bool")
#: Documented string keys that must be a literal "string" (PASSWORD may be GET SECRET).
_STRING_KEYS = frozenset(
    k.name for k in CLUSTER_CONFIG_KEYS if k.kind == "str" and k.documented and not k.secret_ref
)
#: Required string keys: an empty value is an error.
_NON_EMPTY_KEYS = frozenset(k.name for k in CLUSTER_CONFIG_KEYS if k.kind == "str" and k.required)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PLACEHOLDER = re.compile(r"<[^<>]*>|#[^#]*,[^#]*#")


def unsafe_string_reason(text: str) -> str | None:
    """Why `text` must not be sent as a LOT string value, or None if it is safe.

    docs/coreflux-interface.md §1: no escape is known, and the route text travels in a command line,
    so quotes, comment markers, control and invisible characters and a leading dash are refused.
    It is lotdeploy.values' LOT-string rule (the one the spec and the compiler apply), so
    what `validate` accepts, lint accepts; the reason never contains the value itself.
    """
    return reason(text, Role.LOT_STRING)


#: A route file for a 200-node mesh is about 100 KiB; nothing real comes near this.
MAX_LOT_BYTES = 16 * 1024 * 1024


def lint_file(path: Path, *, password_secret: bool = False) -> list[Diagnostic]:
    """Read `path` (UTF-8) and lint it; an unreadable file is one error at 1:1.
    `password_secret`: as `lint_text`.

    Only a regular file of at most MAX_LOT_BYTES is read (a FIFO or a device would hang).
    """
    try:
        text = read_regular_file(Path(path), MAX_LOT_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [
            Diagnostic(str(path), 1, 1, f"not valid UTF-8 (byte offset {exc.start}: {exc.reason})")
        ]
    except UnreadableFile as exc:
        message = exc.reason if exc.reason.startswith("cannot") else f"file {exc.reason}"
        return [Diagnostic(str(path), 1, 1, message)]
    return lint_text(text, str(path), password_secret=password_secret)


def lint_text(
    text: str, filename: str = "<string>", *, password_secret: bool = False
) -> list[Diagnostic]:
    """All diagnostics for one file's text, sorted by position; [] means clean.

    `password_secret`: the site asks for `WITH PASSWORD GET SECRET` in MQTT_CLUSTER routes
    (`password_source`, lotdeploy.routesecret), so that form is taken as intended: an
    assumption (the vendor documents it for MQTT_BRIDGE), said once as a note, not a
    warning per route.

    A `-routeCode` template (placeholders in the vendor's form) is linted as the LOT it is,
    its placeholders reported where they stand, instead of failing as a syntax error.
    """
    found: list[Diagnostic] = []
    try:
        if has_placeholders(text):
            masked, spots = mask_placeholders(text, filename)
            found += [
                Diagnostic(
                    filename,
                    spot.line,
                    spot.column,
                    f"route name is a template placeholder ({spot.placeholder})",
                )
                for spot in spots
                if spot.is_route_name
            ]
            routes = parse(masked, filename)
        else:
            routes = parse(text, filename)
    except LotSyntaxError as exc:
        return [Diagnostic(filename, exc.line, exc.column, exc.message)]
    _check_layout(text, filename, found)
    first_seen: dict[str, Route] = {}
    for route in routes:
        if route.name in first_seen:
            found.append(
                _at(
                    filename,
                    route,
                    f"duplicate route name {route.name}"
                    f" (first defined at line {first_seen[route.name].line})",
                )
            )
        else:
            first_seen[route.name] = route
        _check_route(route, filename, found, password_secret)
    if password_secret:
        _note_secret_assumption(found, filename)
    return sorted(found)


def _at(
    filename: str, node: Route | Block | Setting, message: str, severity: str = "error"
) -> Diagnostic:
    """A diagnostic at a node's position (1:1 for nodes built by hand, which have none)."""
    return Diagnostic(filename, node.line or 1, node.column or 1, message, severity)


def _check_layout(text: str, filename: str, found: list[Diagnostic]) -> None:
    """The vendor's layout is 4 spaces per level: other widths parse, but are flagged."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if indent % 4 and body.strip() and not body.startswith("//"):
            found.append(
                Diagnostic(
                    filename, lineno, indent + 1, "indent with 4 spaces per level", "warning"
                )
            )


def _note_secret_assumption(found: list[Diagnostic], filename: str) -> None:
    """One note where the first route reads its password with GET SECRET (see lint_text)."""
    spots = [d for d in found if d.message == _SECRET_NOTE]
    for extra in spots[1:]:
        found.remove(extra)


#: The note lint gives when the site asks for GET SECRET passwords.
_SECRET_NOTE = (
    "PASSWORD GET SECRET in CLUSTER_CONFIG: password_source asks for it; an assumption "
    "(the vendor documents GET SECRET for MQTT_BRIDGE): apply waits for the links to connect"
)


def _check_route(
    route: Route, filename: str, found: list[Diagnostic], password_secret: bool = False
) -> None:
    """Name rule and per-block checks for every route; CLUSTER_CONFIG rules for MQTT_CLUSTER."""
    if problem(route.name, Role.IDENTIFIER):
        found.append(
            _at(
                filename,
                route,
                f"route name {route.name!r} must match ^[A-Za-z][A-Za-z0-9_]{{0,63}}$"
                " (it becomes an MQTT topic level)",
            )
        )
    for block in _walk(route.blocks):
        _check_block(block, filename, found)
    if route.type != ROUTE_TYPE:
        return
    configs = [block for block in route.blocks if block.kind == CLUSTER_CONFIG_BLOCK]
    if not configs:
        found.append(
            _at(filename, route, f"MQTT_CLUSTER route {route.name} has no ADD CLUSTER_CONFIG")
        )
        return
    for extra in configs[1:]:
        found.append(_at(filename, extra, f"second CLUSTER_CONFIG in route {route.name}"))
    _check_cluster_config(configs[0], filename, found, password_secret)


def _walk(blocks: tuple[Block, ...]) -> list[Block]:
    """Every block, nested ones included, without recursion (nesting depth is unbounded)."""
    out: list[Block] = []
    stack = list(reversed(blocks))
    while stack:
        block = stack.pop()
        out.append(block)
        stack.extend(reversed(block.children))
    return out


def _check_block(block: Block, filename: str, found: list[Diagnostic]) -> None:
    """Checks for any block: duplicate keys, unsafe strings, template leftovers."""
    if block.kind == "METADATA":
        found.append(
            _at(
                filename,
                block,
                "ADD METADATA is template-only (-routeCode) and must never be deployed",
            )
        )
    seen: set[str] = set()
    for setting in block.settings:
        if setting.key in seen:
            found.append(_at(filename, setting, f"duplicate key {setting.key} in {block.kind}"))
        seen.add(setting.key)
        value = setting.value
        text = value.value if isinstance(value, Str) else None
        if isinstance(value, SecretRef | EnvRef):
            text = value.name
            if not value.name:
                found.append(_at(filename, setting, f"{setting.key}: empty name after GET"))
        if text is None:
            continue
        reason = unsafe_string_reason(text)
        if reason:
            found.append(_at(filename, setting, f"value of {setting.key} {reason}"))
        elif _PLACEHOLDER.fullmatch(text):
            found.append(
                _at(filename, setting, f"value of {setting.key} looks like a template placeholder")
            )


def _check_cluster_config(
    block: Block, filename: str, found: list[Diagnostic], password_secret: bool = False
) -> None:
    """MQTT_CLUSTER's CLUSTER_CONFIG: required keys, value types and ranges, known keys."""
    for key in REQUIRED_CLUSTER_KEYS:
        if block.get(key) is None:
            found.append(_at(filename, block, f"CLUSTER_CONFIG is missing required key {key}"))
    for setting in block.settings:
        key, value = setting.key, setting.value
        if key in BRIDGE_ONLY_CLUSTER_KEYS:
            found.append(
                _at(
                    filename,
                    setting,
                    f"{key} is documented for MQTT_BRIDGE, not for"
                    " CLUSTER_CONFIG (check -routeCode MQTT_CLUSTER)",
                    "warning",
                )
            )
        elif key not in DOCUMENTED_KEYS:
            found.append(
                _at(filename, setting, f"{key} is not a documented CLUSTER_CONFIG key", "warning")
            )
        if isinstance(value, SecretRef) and key == "PASSWORD" and password_secret:
            found.append(_at(filename, setting, _SECRET_NOTE, "note"))
        elif isinstance(value, SecretRef):
            found.append(
                _at(
                    filename,
                    setting,
                    f"GET SECRET for {key} is documented for MQTT_BRIDGE only;"
                    " unverified for CLUSTER_CONFIG",
                    "warning",
                )
            )
        if key in _INT_KEYS:
            _check_int(setting, filename, found)
        elif key in _BOOL_KEYS and not isinstance(value, Bool | EnvRef):
            found.append(_at(filename, setting, f"{key} should be true or false"))
        elif key in _STRING_KEYS and not isinstance(value, Str | EnvRef):
            found.append(_at(filename, setting, f'{key} should be a "string"'))
        elif key in _NON_EMPTY_KEYS and isinstance(value, Str) and not value.value:
            found.append(_at(filename, setting, f"{key} is empty"))


def _check_int(setting: Setting, filename: str, found: list[Diagnostic]) -> None:
    """Integer keys: an Int (env/secret references cannot be checked), in range, quoted."""
    key, value = setting.key, setting.value
    if isinstance(value, EnvRef | SecretRef):
        return
    if not isinstance(value, Int):
        found.append(_at(filename, setting, f"{key} must be an integer, written '{_example(key)}'"))
        return
    if key == "BROKER_PORT" and not 1 <= value.value <= 65535:
        found.append(_at(filename, setting, f"BROKER_PORT {value.value} is not a port (1..65535)"))
    elif key != "BROKER_PORT" and value.value < 0:
        found.append(_at(filename, setting, f"{key} must not be negative"))
    if not value.quoted:
        found.append(
            _at(
                filename,
                setting,
                f"the vendor writes {key} single-quoted: '{value.value}'",
                "warning",
            )
        )


def _example(key: str) -> str:
    return str(DEFAULT_PORT) if key == "BROKER_PORT" else "30"

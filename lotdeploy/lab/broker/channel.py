"""The Coreflux command channel of the lab broker (docs/coreflux-interface.md §2).

A command is a plain-text publish on `$SYS/Coreflux/Command`: `-<verb> <argument>`, with an
optional trailing `-requestId <id>`. Every command gets exactly one reply document here (a 2.x
envelope); the node publishes it on `$SYS/Coreflux/Command/Output` in its dialect's form (JSON
or 1.x text, requestId echoed or not). What the channel itself honours of the dialect: the
re-add policy and the keys the broker offers. Nothing a client sends here may crash the
broker: each verb is validated, and any unexpected failure becomes a `success: false` envelope.
Command payloads are never logged (they carry passwords); only the verb is.

The channel knows the node only through `ChannelNode` (what it reads and changes), so it does
not depend on the server module that owns the node.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lotdeploy.errors import LotSyntaxError
from lotdeploy.lab.broker.dialect import Dialect
from lotdeploy.lab.broker.routes import (
    ClusterSpec,
    RouteManager,
    RouteRejected,
    route_template,
    spec_from_route,
)
from lotdeploy.lab.broker.state import BrokerState
from lotdeploy.lot import parse
from lotdeploy.lot.ast import Route
from lotdeploy.protocol import (
    ROUTE_TYPE,
    ReplyError,
    Verb,
    build_reply,
    split_request_id,
)
from lotdeploy.secret import Secret

log = logging.getLogger(__name__)

#: Commands larger than this are refused (a route is a few hundred bytes).
MAX_COMMAND_BYTES = 256 * 1024
_VERB = re.compile(r"-([A-Za-z][A-Za-z0-9]{0,63})(?:\s+|$)")
_USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ChannelNode(Protocol):
    """What the command channel needs from the broker node it commands."""

    @property
    def admin_user(self) -> str: ...

    @property
    def dialect(self) -> Dialect: ...

    @property
    def routes(self) -> RouteManager: ...

    @property
    def state(self) -> BrokerState: ...

    async def add_route(self, spec: ClusterSpec, code: str) -> None: ...

    async def remove_route(self, name: str) -> bool: ...

    async def set_user(self, user: str, password: Secret) -> None: ...

    async def delete_user(self, user: str) -> None: ...

    async def set_secret(self, name: str, value: Secret) -> None: ...


@dataclass(frozen=True)
class Command:
    verb: str
    argument: str
    request_id: str | None


def parse_command(payload: bytes) -> Command | dict[str, Any]:
    """Split a payload into verb, argument and requestId; an error envelope if malformed."""
    if len(payload) > MAX_COMMAND_BYTES:
        return build_reply(
            False, "", None, f"Command too large ({len(payload)} bytes, limit {MAX_COMMAND_BYTES})"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return build_reply(False, "", None, "Command is not valid UTF-8")
    text, request_id = split_request_id(text)
    if "\x00" in text:
        return build_reply(False, "", request_id, "Command contains a NUL character")
    text = text.strip()
    verb_match = _VERB.match(text)
    if not verb_match:
        shown = text.split(None, 1)[0][:40] if text.strip() else "(empty)"
        return build_reply(False, "", request_id, f"Unknown command: {shown}")
    return Command(verb_match.group(1), text[verb_match.end() :].strip(), request_id)


Handler = Callable[["CommandChannel", Command], Awaitable[dict[str, Any]]]


class CommandChannel:
    """Executes commands against a ChannelNode (server.LabNode) and builds the reply envelopes."""

    def __init__(self, node: ChannelNode) -> None:
        self.node = node

    async def handle(self, payload: bytes, username: str | None, is_admin: bool) -> dict[str, Any]:
        parsed = parse_command(payload)
        if isinstance(parsed, dict):
            return parsed
        cmd = parsed
        handler = _VERBS.get(cmd.verb)
        if handler is None:
            return build_reply(False, cmd.verb, cmd.request_id, f"Unknown command: -{cmd.verb}")
        if not is_admin:
            who = f"user '{username}'" if username else "anonymous clients"
            return build_reply(
                False, cmd.verb, cmd.request_id, f"Permission denied: {who} may not send commands"
            )
        log.info("command -%s from %s", cmd.verb, username)
        try:
            return await handler(self, cmd)
        except Exception:  # a bug here must cost one command, never the broker
            log.exception("command -%s failed unexpectedly", cmd.verb)
            return build_reply(
                False, cmd.verb, cmd.request_id, f"Internal error while executing -{cmd.verb}"
            )

    def _fail(
        self, cmd: Command, message: str, errors: tuple[ReplyError, ...] = ()
    ) -> dict[str, Any]:
        return build_reply(False, cmd.verb, cmd.request_id, message, errors=errors)

    def _ok(self, cmd: Command, message: str, data: Any = None) -> dict[str, Any]:
        return build_reply(True, cmd.verb, cmd.request_id, message, data)

    # -- routes ---------------------------------------------------------------------------

    async def add_route(self, cmd: Command) -> dict[str, Any]:
        if not cmd.argument:
            return self._fail(cmd, "Missing LOT code after -addRoute")
        try:
            routes = parse(cmd.argument, "<command>")
        except LotSyntaxError as exc:
            message = f"Parsing error: {exc.message} ({exc.line},{exc.column})"
            return self._fail(
                cmd, message, (ReplyError(exc.message, exc.line, exc.column, "ParseError"),)
            )
        if not routes:
            return self._fail(cmd, "No route definition found")
        dialect = self.node.dialect
        allowed = frozenset(dialect.offered_keys)
        specs = []
        for route in routes:
            try:
                specs.append(spec_from_route(route, allowed))
            except RouteRejected as exc:
                return self._fail(
                    cmd,
                    exc.message,
                    (ReplyError(exc.message, exc.line, exc.column, "ValidationError"),),
                )
            if route.name in self.node.routes.links and dialect.readd == "reject":
                return self._fail(cmd, f"Route '{route.name}' already exists")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            return self._fail(cmd, "The same route name is defined twice")
        replaced = [name for name in names if name in self.node.routes.links]
        for spec, code in zip(specs, _route_texts(cmd.argument, routes), strict=True):
            if spec.name in replaced:  # readd == "overwrite": the new route replaces the old
                await self.node.remove_route(spec.name)
            await self.node.add_route(spec, code)
        if len(names) == 1:
            data: dict[str, Any] = {"name": names[0]}
            if replaced:
                data["replaced"] = True
            return self._ok(cmd, f"Route '{names[0]}' added successfully!", data)
        return self._ok(
            cmd,
            f"Routes {', '.join(names)} added successfully!",
            {"names": names, "replaced": replaced} if replaced else {"names": names},
        )

    async def remove_route(self, cmd: Command) -> dict[str, Any]:
        name = cmd.argument
        if not name:
            return self._fail(cmd, "Missing route name after -removeRoute")
        if not await self.node.remove_route(name):
            return self._fail(cmd, f"Route '{name[:64]}' not found")
        return self._ok(cmd, f"Route '{name}' removed successfully!", {"name": name})

    async def list_routes(self, cmd: Command) -> dict[str, Any]:
        data = [
            {
                "name": link.spec.name,
                "type": ROUTE_TYPE,
                "connection": link.connection,
                "health": link.health,
            }
            for link in self.node.routes.links.values()
        ]
        return self._ok(cmd, f"{len(data)} route(s)", data)

    async def route_code(self, cmd: Command) -> dict[str, Any]:
        if cmd.argument.upper() != ROUTE_TYPE:
            return self._fail(cmd, f"Route type '{cmd.argument[:64]}' not found")
        template = route_template(self.node.dialect.route_code_missing)
        return self._ok(cmd, template, {"type": ROUTE_TYPE, "code": template})

    async def check_route_connection(self, cmd: Command) -> dict[str, Any]:
        link = self.node.routes.links.get(cmd.argument)
        if link is None:
            return self._fail(cmd, f"Route '{cmd.argument[:64]}' not found")
        return self._ok(cmd, f"Route '{link.spec.name}' is {link.connection}", link.status())

    # -- users and secrets ----------------------------------------------------------------

    def _user_and_password(self, cmd: Command) -> tuple[str, Secret] | dict[str, Any]:
        parts = cmd.argument.split()
        if len(parts) != 2:
            return self._fail(cmd, f"Usage: -{cmd.verb} <user> <password>")
        user, password = parts
        if not _USER.fullmatch(user):
            return self._fail(cmd, "Invalid user name")
        return user, Secret(password)

    async def add_user(self, cmd: Command) -> dict[str, Any]:
        parsed = self._user_and_password(cmd)
        if isinstance(parsed, dict):
            return parsed
        user, password = parsed
        if user == self.node.admin_user or user in self.node.state.users:
            return self._fail(cmd, f"User '{user}' already exists")
        await self.node.set_user(user, password)
        return self._ok(cmd, f"User '{user}' added successfully!", {"user": user})

    async def remove_user(self, cmd: Command) -> dict[str, Any]:
        user = cmd.argument
        if user == self.node.admin_user:
            return self._fail(cmd, "Permission denied: the admin user cannot be removed")
        if user not in self.node.state.users:
            return self._fail(cmd, f"User '{user[:64]}' not found")
        await self.node.delete_user(user)
        return self._ok(cmd, f"User '{user}' removed successfully!", {"user": user})

    async def change_user_password(self, cmd: Command) -> dict[str, Any]:
        parsed = self._user_and_password(cmd)
        if isinstance(parsed, dict):
            return parsed
        user, password = parsed
        if user == self.node.admin_user:
            return self._fail(
                cmd, "Permission denied: the admin password comes from --admin-password-file"
            )
        if user not in self.node.state.users:
            return self._fail(cmd, f"User '{user}' not found")
        await self.node.set_user(user, password)
        return self._ok(cmd, f"Password of user '{user}' changed successfully!", {"user": user})

    async def set_secret(self, cmd: Command) -> dict[str, Any]:
        name, sep, value = cmd.argument.partition("=")
        name = name.strip()
        if not sep or not _SECRET_NAME.fullmatch(name) or not value:
            return self._fail(cmd, "Usage: -setSecret NAME=value")
        await self.node.set_secret(name, Secret(value))
        return self._ok(cmd, f"Secret '{name}' set successfully!", {"name": name})

    async def list_secrets(self, cmd: Command) -> dict[str, Any]:
        names = sorted(self.node.state.secrets)
        return self._ok(cmd, f"{len(names)} secret(s)", names)


def _route_texts(text: str, routes: tuple[Route, ...]) -> list[str]:
    """Each route's own lines of the command, as the broker republishes and stores them."""
    lines = text.splitlines()
    starts = [r.line - 1 for r in routes] + [len(lines)]
    return ["\n".join(lines[a:b]).strip("\n") + "\n" for a, b in itertools.pairwise(starts)]


_VERBS: dict[str, Handler] = {
    Verb.ADD_ROUTE: CommandChannel.add_route,
    Verb.REMOVE_ROUTE: CommandChannel.remove_route,
    Verb.LIST_ROUTES: CommandChannel.list_routes,
    Verb.ROUTE_CODE: CommandChannel.route_code,
    Verb.CHECK_ROUTE_CONNECTION: CommandChannel.check_route_connection,
    Verb.ADD_USER: CommandChannel.add_user,
    Verb.REMOVE_USER: CommandChannel.remove_user,
    Verb.CHANGE_USER_PASSWORD: CommandChannel.change_user_password,
    Verb.SET_SECRET: CommandChannel.set_secret,
    Verb.LIST_SECRETS: CommandChannel.list_secrets,
}

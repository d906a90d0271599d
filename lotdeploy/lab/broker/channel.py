"""The Coreflux command channel of the lab broker (docs/coreflux-interface.md §2).

A command is a plain-text publish on `$SYS/Coreflux/Command`: `-<verb> <argument>`, with an
optional trailing `-requestId <id>`. As on the vendor's broker, a verb may be written in any
case or as its `--kebab-case` alias (`-listroutes`, `--list-routes`), and arguments other
than LOT text are quote-aware words whose quotes are stripped (`-removeRoute "X"` removes X).
Every command gets exactly one reply document here (a 2.x envelope); the node publishes it
on `$SYS/Coreflux/Command/Output` in its dialect's form (JSON or 1.x text, requestId echoed
or not). What the channel itself honours of the dialect: the verb spelling, the re-add
policy, the keys the broker offers, the secret store and the rights model. Nothing a client
sends here may crash the broker: each verb is validated, and any unexpected failure becomes
a `success: false` envelope. Command payloads are never logged (they carry passwords); only
the verb is.

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
    USER_RIGHT_FLAGS,
    VERBS_BY_KEY,
    ReplyError,
    Verb,
    build_reply,
    command_words,
    split_request_id,
    verb_key,
)
from lotdeploy.secret import Secret

log = logging.getLogger(__name__)

#: Commands larger than this are refused (a route is a few hundred bytes).
MAX_COMMAND_BYTES = 256 * 1024
_VERB = re.compile(r"-{1,2}([A-Za-z][A-Za-z0-9-]{0,63})(?:\s+|$)")
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

    async def replace_route(self, spec: ClusterSpec, code: str) -> None: ...

    async def remove_route(self, name: str) -> bool: ...

    async def set_user(self, user: str, password: Secret) -> None: ...

    async def delete_user(self, user: str) -> None: ...

    async def set_secret(self, name: str, value: Secret) -> None: ...

    async def remove_secret(self, name: str) -> None: ...

    @property
    def user_settings(self) -> dict[str, dict[str, bool]]: ...


@dataclass(frozen=True)
class Command:
    #: the verb as the command wrote it, without its dashes (`listroutes`, `list-routes`)
    verb: str
    argument: str
    request_id: str | None
    #: how it was written, dashes included (`--list-routes`), for `Unknown command` replies
    spelled: str = ""


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
    spelled = verb_match.group(0).strip()
    return Command(verb_match.group(1), text[verb_match.end() :].strip(), request_id, spelled)


def resolve_verb(word: str, dialect: Dialect) -> Verb | None:
    """The verb a word names on a broker of this dialect: any case and kebab aliases
    (`verbs="any"`, the vendor's documented behaviour), or only as spelled (`"exact"`)."""
    if dialect.verbs == "exact":
        return next((v for v in Verb if v.value == word), None)
    return VERBS_BY_KEY.get(verb_key(word))


#: Verbs that exist only in some dialects.
_SECRET_VERBS = frozenset({Verb.SET_SECRET, Verb.LIST_SECRETS, Verb.REMOVE_SECRET})
_RIGHTS_VERBS = frozenset({Verb.LIST_USER_GROUPS, Verb.CHANGE_USER_SETTINGS})
#: `-changeUserSettings` flags of the vendor's rights model (docs/coreflux-interface.md §4).
USER_FLAGS = USER_RIGHT_FLAGS
#: `-lotDiagnostic <kind> <name>` kinds the vendor's tooling names.
DIAGNOSTIC_KINDS = ("model", "action", "route", "rule")


Handler = Callable[["CommandChannel", Command], Awaitable[dict[str, Any]]]


class CommandChannel:
    """Executes commands against a ChannelNode (server.LabNode) and builds the reply envelopes."""

    def __init__(self, node: ChannelNode) -> None:
        self.node = node

    async def handle(self, payload: bytes, username: str | None, is_admin: bool) -> dict[str, Any]:
        parsed = parse_command(payload)
        if isinstance(parsed, dict):
            return parsed
        dialect = self.node.dialect
        verb = resolve_verb(parsed.verb, dialect)
        exists = verb is not None and not (
            (verb in _SECRET_VERBS and not dialect.secret_store)
            or (verb in _RIGHTS_VERBS and dialect.rights != "named")
        )
        handler = _VERBS.get(verb) if exists and verb is not None else None
        if handler is None or verb is None:
            return build_reply(
                False,
                parsed.verb,
                parsed.request_id,
                f"Unknown command: {parsed.spelled or '-' + parsed.verb}",
            )
        cmd = Command(verb.value, parsed.argument, parsed.request_id, parsed.spelled)
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
                await self.node.replace_route(spec, code)
            else:
                await self.node.add_route(spec, code)
        if len(names) == 1:
            data: dict[str, Any] = {"name": names[0]}
            if replaced:
                data["replaced"] = True
            return _entity(self._ok(cmd, f"Route '{names[0]}' added successfully!", data), names[0])
        return self._ok(
            cmd,
            f"Routes {', '.join(names)} added successfully!",
            {"names": names, "replaced": replaced} if replaced else {"names": names},
        )

    def _one_name(self, cmd: Command, what: str) -> str | dict[str, Any]:
        """The single (quote-stripped) word a verb takes, or the failure reply."""
        words = command_words(cmd.argument)
        if len(words) != 1 or not words[0]:
            return self._fail(cmd, f"Usage: -{cmd.verb} <{what}>")
        return words[0]

    async def remove_route(self, cmd: Command) -> dict[str, Any]:
        if not cmd.argument:
            return self._fail(cmd, "Missing route name after -removeRoute")
        name = self._one_name(cmd, "route name")
        if isinstance(name, dict):
            return name
        if not await self.node.remove_route(name):
            return self._fail(cmd, f"Route '{name[:64]}' not found")
        return _entity(self._ok(cmd, f"Route '{name}' removed successfully!", {"name": name}), name)

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
        words = command_words(cmd.argument)
        route_type = words[0] if len(words) == 1 else cmd.argument
        if route_type.upper() != ROUTE_TYPE:
            return self._fail(cmd, f"Route type '{route_type[:64]}' not found")
        template = route_template(self.node.dialect.route_code_missing)
        return self._ok(cmd, template, {"type": ROUTE_TYPE, "code": template})

    async def check_route_connection(self, cmd: Command) -> dict[str, Any]:
        name = self._one_name(cmd, "route name")
        if isinstance(name, dict):
            return name
        link = self.node.routes.links.get(name)
        if link is None:
            return self._fail(cmd, f"Route '{name[:64]}' not found")
        return self._ok(cmd, f"Route '{link.spec.name}' is {link.connection}", link.status())

    async def connection_status(self, cmd: Command) -> dict[str, Any]:
        """The vendor's client reads this as a text report of every route's connection; the
        lab puts one line per route in the message (and the same as a list in `data`)."""
        links = list(self.node.routes.links.values())
        if not links:
            return self._ok(cmd, "No active connections found.", [])
        lines = [f"{k.spec.name}: {k.connection} ({k.health})" for k in links]
        data = [
            {"name": k.spec.name, "connection": k.connection, "health": k.health} for k in links
        ]
        return self._ok(cmd, "\n".join(lines), data)

    async def list_templates(self, cmd: Command) -> dict[str, Any]:
        """The route types this build offers: the lab has one."""
        return self._ok(cmd, "1 template(s)", [ROUTE_TYPE])

    async def lot_diagnostic(self, cmd: Command) -> dict[str, Any]:
        """`-lotDiagnostic <kind> <name>`: a route's state and what looks wrong with it. The
        vendor's reply shape is UNKNOWN beyond `data`: the lab's is its own reading."""
        words = command_words(cmd.argument)
        if len(words) != 2 or words[0].lower() not in DIAGNOSTIC_KINDS:
            return self._fail(cmd, f"Usage: -lotDiagnostic {'|'.join(DIAGNOSTIC_KINDS)} <name>")
        kind, name = words[0].lower(), words[1]
        link = self.node.routes.links.get(name) if kind == "route" else None
        if link is None:
            return self._fail(cmd, f"{kind.capitalize()} '{name[:64]}' not found")
        status = link.status()
        issues = []
        if link.connection != "Connected":
            issues.append(
                f"not connected ({link.connection})"
                + (f": {link.last_error}" if link.last_error else "")
            )
        if link.expired:
            issues.append(f"{link.expired} message(s) expired (MESSAGE_VALIDITY_SEC)")
        data = {"kind": kind, "name": name, "status": status, "issues": issues}
        message = f"Route '{name}': " + ("; ".join(issues) if issues else "no issues found")
        return _entity(self._ok(cmd, message, data), name)

    # -- users and secrets ----------------------------------------------------------------

    def _user_and_password(self, cmd: Command) -> tuple[str, Secret] | dict[str, Any]:
        parts = command_words(cmd.argument)
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
        user = self._one_name(cmd, "user")
        if isinstance(user, dict):
            return user
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
        words = command_words(cmd.argument)
        name, sep, value = (words[0] if len(words) == 1 else "").partition("=")
        name = name.strip()
        if not sep or not _SECRET_NAME.fullmatch(name) or not value:
            return self._fail(cmd, "Usage: -setSecret NAME=value")
        await self.node.set_secret(name, Secret(value))
        return self._ok(cmd, f"Secret '{name}' set successfully!", {"name": name})

    async def remove_secret(self, cmd: Command) -> dict[str, Any]:
        name = self._one_name(cmd, "secret")
        if isinstance(name, dict):
            return name
        if name not in self.node.state.secrets:
            return self._fail(cmd, f"Secret '{name[:64]}' not found")
        await self.node.remove_secret(name)
        return self._ok(cmd, f"Secret '{name}' removed successfully!", {"name": name})

    async def list_secrets(self, cmd: Command) -> dict[str, Any]:
        names = sorted(self.node.state.secrets)
        return self._ok(cmd, f"{len(names)} secret(s)", names)

    # -- the named rights model (dialect rights="named"): stored; AllowedSystemConfiguration
    # grants $SYS reads (server.may_read_sys), the other flags are not enforced --------

    def _known_user(self, user: str) -> bool:
        return user == self.node.admin_user or user in self.node.state.users

    async def list_user_groups(self, cmd: Command) -> dict[str, Any]:
        user = self._one_name(cmd, "user")
        if isinstance(user, dict):
            return user
        if not self._known_user(user):
            return self._fail(cmd, f"User '{user[:64]}' not found")
        flags = self.node.user_settings.get(user, {})
        data = {"user": user, "groups": [], "settings": dict(sorted(flags.items()))}
        return self._ok(cmd, f"User '{user}' is in 0 group(s)", data)

    async def change_user_settings(self, cmd: Command) -> dict[str, Any]:
        words = command_words(cmd.argument)
        usage = f"Usage: -changeUserSettings <user> <{'|'.join(USER_FLAGS)}> <true|false>"
        if (
            len(words) != 3
            or words[1] not in USER_FLAGS
            or words[2].lower()
            not in (
                "true",
                "false",
            )
        ):
            return self._fail(cmd, usage)
        user, flag, value = words[0], words[1], words[2].lower() == "true"
        if not self._known_user(user):
            return self._fail(cmd, f"User '{user[:64]}' not found")
        self.node.user_settings.setdefault(user, {})[flag] = value
        return self._ok(
            cmd, f"Setting {flag} of user '{user}' changed successfully!", {"user": user}
        )


def _entity(reply: dict[str, Any], name: str) -> dict[str, Any]:
    """The vendor's envelope also names the entity a route command touched."""
    return {**reply, "entityType": "Route", "entityName": name}


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
    Verb.REMOVE_SECRET: CommandChannel.remove_secret,
    Verb.CONNECTION_STATUS: CommandChannel.connection_status,
    Verb.LIST_TEMPLATES: CommandChannel.list_templates,
    Verb.LOT_DIAGNOSTIC: CommandChannel.lot_diagnostic,
    Verb.LIST_USER_GROUPS: CommandChannel.list_user_groups,
    Verb.CHANGE_USER_SETTINGS: CommandChannel.change_user_settings,
}

"""The Coreflux broker protocol in one module: what lotdeploy knows about the broker's interface.

Topics, verbs, the `MQTT_CLUSTER` `CLUSTER_CONFIG` keys, a node's default paths and ports, and
both halves of the command channel's framing: the command payload and the reply (building
the 2.x JSON envelope or the 1.x plain-text line, as the lab broker does, and parsing either,
as the client does), and the `#name,type,description,regex,env#` placeholders of a
`-routeCode` template. The facts and where they come from: docs/coreflux-interface.md.

This is the bottom layer: it imports only the standard library, `lotdeploy.errors` and
`lotdeploy.secret`, so the compiler, the linter, the plan and the lab broker can all use it
without pulling in an MQTT library, click, pydantic or cryptography.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

from lotdeploy.fsutil import UnreadableFile, parse_json
from lotdeploy.secret import scrub

# ---------------------------------------------------------------------------------------------
# Topics (docs/coreflux-interface.md §2, §3)
# ---------------------------------------------------------------------------------------------

#: Where an admin client publishes a plain-text command (QoS 1).
COMMAND_TOPIC = "$SYS/Coreflux/Command"
#: Where every reply appears; shared by all admin clients, so replies must be matched.
OUTPUT_TOPIC = "$SYS/Coreflux/Command/Output"
#: Parent of the per-route topics; `route_code_topic` and `route_status_topic` build them.
ROUTES_TOPIC = "$SYS/Coreflux/Routes"
#: The broker's version string, retained; readable only by users with system rights.
VERSION_TOPIC = "$SYS/Coreflux/Version"
#: Cluster monitoring, as the vendor's cluster page names it (`status`, `nodes`, `sync`
#: below it); formats UNKNOWN (docs/coreflux-interface.md §3).
SEED_CLUSTER_TOPIC = "$SYS/broker/cluster"
#: Cluster monitoring as the vendor's newer tooling lists it (`Role`, `IsLeader`, `Leader`,
#: `Term`, `Members`, `Status` below it, retained); formats UNKNOWN.
COREFLUX_CLUSTER_TOPIC = "$SYS/Coreflux/Cluster"
#: The filters that read both, for verify, status and doctor.
CLUSTER_MONITORING_FILTERS: tuple[str, ...] = (
    f"{SEED_CLUSTER_TOPIC}/#",
    f"{COREFLUX_CLUSTER_TOPIC}/#",
)


def route_code_topic(name: str) -> str:
    """`$SYS/Coreflux/Routes/<Name>`: the route's LOT code, retained."""
    return f"{ROUTES_TOPIC}/{name}"


def route_status_topic(name: str) -> str:
    """`$SYS/Coreflux/Routes/<Name>/status`: the route's status JSON, not retained."""
    return f"{route_code_topic(name)}/status"


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic matching (`+` one level, `#` the rest); a `$` topic never matches a filter
    that starts with a wildcard (MQTT 3.1.1 §4.7.2)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, have = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(want):
        if level == "#":
            return True
        if index >= len(have) or (level != "+" and level != have[index]):
            return False
    return len(want) == len(have)


# ---------------------------------------------------------------------------------------------
# Verbs (§2)
# ---------------------------------------------------------------------------------------------


class Verb(StrEnum):
    """The command-channel verbs lotdeploy uses, as sent after the dash (`-addRoute ...`)."""

    ADD_ROUTE = "addRoute"
    REMOVE_ROUTE = "removeRoute"
    LIST_ROUTES = "listRoutes"
    ROUTE_CODE = "routeCode"
    CHECK_ROUTE_CONNECTION = "checkRouteConnection"
    ADD_USER = "addUser"
    REMOVE_USER = "removeUser"
    CHANGE_USER_PASSWORD = "changeUserPassword"
    SET_SECRET = "setSecret"
    LIST_SECRETS = "listSecrets"
    #: the vendor has it (docs/coreflux-interface.md §6); lotdeploy never sends it, the lab
    #: broker answers it so a test can take a secret away
    REMOVE_SECRET = "removeSecret"
    # verbs the vendor's own client uses (docs/coreflux-interface.md §2); lotdeploy sends
    # the first three only to look, the last two only where doctor found a rights model
    CONNECTION_STATUS = "connectionStatus"
    LIST_TEMPLATES = "listTemplates"
    LOT_DIAGNOSTIC = "lotDiagnostic"
    LIST_USER_GROUPS = "listUserGroups"
    CHANGE_USER_SETTINGS = "changeUserSettings"

    @property
    def reply_name(self) -> str:
        """How a 2.x broker names this command in its reply's `command` field."""
        return REPLY_NAMES[self]


#: Each verb and its reply name: the verb in PascalCase, without the dash.
REPLY_NAMES: Mapping[Verb, str] = MappingProxyType(
    {
        Verb.ADD_ROUTE: "AddRoute",
        Verb.REMOVE_ROUTE: "RemoveRoute",
        Verb.LIST_ROUTES: "ListRoutes",
        Verb.ROUTE_CODE: "RouteCode",
        Verb.CHECK_ROUTE_CONNECTION: "CheckRouteConnection",
        Verb.ADD_USER: "AddUser",
        Verb.REMOVE_USER: "RemoveUser",
        Verb.CHANGE_USER_PASSWORD: "ChangeUserPassword",
        Verb.SET_SECRET: "SetSecret",
        Verb.LIST_SECRETS: "ListSecrets",
        Verb.REMOVE_SECRET: "RemoveSecret",
        Verb.CONNECTION_STATUS: "ConnectionStatus",
        Verb.LIST_TEMPLATES: "ListTemplates",
        Verb.LOT_DIAGNOSTIC: "LotDiagnostic",
        Verb.LIST_USER_GROUPS: "ListUserGroups",
        Verb.CHANGE_USER_SETTINGS: "ChangeUserSettings",
    }
)

#: Verbs that exist on the broker but must never be sent: `-removeAllRoutes` wipes every
#: route, including routes lotdeploy does not own.
FORBIDDEN_VERBS = frozenset({"removeAllRoutes"})

#: The option a current broker echoes back in its reply (UNKNOWN on 1.x brokers).
REQUEST_ID_OPTION = "-requestId"
_TRAILING_REQUEST_ID = re.compile(r"\s*-requestId\s+(\S{1,128})\s*$")

#: How long the vendor's own tooling waits for a reply before calling it lost.
REPLY_TIMEOUT_SEC = 15.0


def pascal(verb: str) -> str:
    """`addRoute` -> `AddRoute`: the reply name of any verb, also one not in `Verb`."""
    verb = verb.lstrip("-")
    return verb[:1].upper() + verb[1:]


def verb_key(word: str) -> str:
    """How a broker that takes any case and kebab aliases reads a verb: `-listRoutes`,
    `-listroutes`, `--list-routes` and `-LIST-ROUTES` are all `listroutes`."""
    return word.lstrip("-").replace("-", "").lower()


#: `verb_key` -> Verb, for the verbs lotdeploy knows (and the forbidden one's key).
VERBS_BY_KEY: Mapping[str, Verb] = MappingProxyType({verb_key(v): v for v in Verb})


def command_words(text: str) -> list[str]:
    """A command argument split as the vendor's broker splits it: whitespace-separated
    words, where a double- or single-quoted part keeps its spaces and loses its quotes
    (`-removeRoute "X"` names route X). No escapes: an unclosed quote runs to the end."""
    words: list[str] = []
    current: list[str] = []
    quote: str | None = None
    started = False
    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                current.append(char)
        elif char in "\"'":
            quote, started = char, True
        elif char.isspace():
            if started:
                words.append("".join(current))
                current, started = [], False
        else:
            current.append(char)
            started = True
    if started:
        words.append("".join(current))
    return words


def command_payload(verb: str, argument: str = "", request_id: str | None = None) -> bytes:
    """`-<verb> <argument> [-requestId <id>]`: a command as published on COMMAND_TOPIC.

    For routes the LOT text is the argument, raw (newlines allowed, no wrapping quotes). A
    `--kebab-case` verb is sent as written.
    """
    head = verb if verb.startswith("--") else f"-{verb.lstrip('-')}"
    text = head + (f" {argument}" if argument else "")
    if request_id:
        text += f" {REQUEST_ID_OPTION} {request_id}"
    return text.encode()


def split_request_id(text: str) -> tuple[str, str | None]:
    """A command's text without its trailing `-requestId <id>`, and the id (None if absent)."""
    match = _TRAILING_REQUEST_ID.search(text)
    if match is None:
        return text, None
    return text[: match.start()], match.group(1)


# ---------------------------------------------------------------------------------------------
# Routes: MQTT_CLUSTER and its CLUSTER_CONFIG keys (§1)
# ---------------------------------------------------------------------------------------------

#: The route type of a cluster link.
ROUTE_TYPE = "MQTT_CLUSTER"
#: Its one settings block: `ADD CLUSTER_CONFIG`.
CLUSTER_CONFIG_BLOCK = "CLUSTER_CONFIG"
#: Safe route names: bare identifiers that also work as an MQTT topic level.
ROUTE_NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_]{0,63}"

ValueKind = Literal["str", "int", "bool"]


@dataclass(frozen=True)
class ClusterKey:
    """One `WITH <KEY> <value>` of CLUSTER_CONFIG, as far as the vendor's material tells.

    `documented` is False for keys the vendor documents only for MQTT_BRIDGE: whether
    CLUSTER_CONFIG accepts them is UNKNOWN (ask the broker: `-routeCode MQTT_CLUSTER`).
    """

    name: str
    kind: ValueKind
    required: bool
    documented: bool
    #: The value is a secret: never printed, shown as "(sensitive)".
    sensitive: bool = False
    #: `WITH <KEY> GET SECRET "NAME"` is known to work (for bridges) for this key.
    secret_ref: bool = False


#: Every CLUSTER_CONFIG key lotdeploy knows of; documented keys first, in the order
#: lotdeploy emits them.
CLUSTER_CONFIG_KEYS: tuple[ClusterKey, ...] = (
    ClusterKey("BROKER_ADDRESS", "str", required=True, documented=True),
    ClusterKey("BROKER_PORT", "int", required=True, documented=True),
    ClusterKey("CLIENT_ID", "str", required=True, documented=True),
    ClusterKey("USERNAME", "str", required=False, documented=True),
    ClusterKey("PASSWORD", "str", required=False, documented=True, sensitive=True, secret_ref=True),
    ClusterKey("MESSAGE_VALIDITY_SEC", "int", required=False, documented=True),
    # not in the parameter list, but in the vendor's TLS and geo-distribution examples
    ClusterKey("USE_TLS", "bool", required=False, documented=True),
    # seen only for MQTT_BRIDGE
    ClusterKey("SERVER_CA_CERT_PATH", "str", required=False, documented=False),
    ClusterKey("CLIENT_CERT_PATH", "str", required=False, documented=False),
    ClusterKey("CLIENT_CERT_PASS", "str", required=False, documented=False, sensitive=True),
    ClusterKey("ALLOW_UNTRUSTED_CERTS", "bool", required=False, documented=False),
    ClusterKey("RECONNECTION_RETRIES", "int", required=False, documented=False),
)
CLUSTER_KEYS_BY_NAME: Mapping[str, ClusterKey] = MappingProxyType(
    {key.name: key for key in CLUSTER_CONFIG_KEYS}
)
#: The documented keys, in the order lotdeploy emits them in a route.
CLUSTER_KEY_ORDER: tuple[str, ...] = tuple(k.name for k in CLUSTER_CONFIG_KEYS if k.documented)
REQUIRED_CLUSTER_KEYS: tuple[str, ...] = tuple(k.name for k in CLUSTER_CONFIG_KEYS if k.required)
BRIDGE_ONLY_CLUSTER_KEYS = frozenset(k.name for k in CLUSTER_CONFIG_KEYS if not k.documented)
SENSITIVE_CLUSTER_KEYS = frozenset(k.name for k in CLUSTER_CONFIG_KEYS if k.sensitive)


def cluster_keys_of_kind(kind: ValueKind, *, documented_only: bool = False) -> frozenset[str]:
    """Names of the CLUSTER_CONFIG keys whose value is of `kind`."""
    return frozenset(
        k.name
        for k in CLUSTER_CONFIG_KEYS
        if k.kind == kind and (k.documented or not documented_only)
    )


# ---------------------------------------------------------------------------------------------
# The broker host: default ports and paths (§4); every one is a per-node setting
# ---------------------------------------------------------------------------------------------

#: Plain MQTT.
DEFAULT_PORT = 1883
#: MQTT over TLS, as the vendor's cluster page has it ("typically"; a config default is 1884).
DEFAULT_TLS_PORT = 8883
#: The command channel, as seen from the node itself.
DEFAULT_ADMIN_HOST = "127.0.0.1"
DEFAULT_ADMIN_PORT = DEFAULT_PORT
DEFAULT_ADMIN_USER = "root"
#: Where one vendor image reads its TLS files.
DEFAULT_TLS_DIR = "/opt/coreflux/tls"
DEFAULT_CERT_FILE = "server.crt"
DEFAULT_KEY_FILE = "server.key"
DEFAULT_CA_FILE = "ca.crt"
#: Where lotdeploy keeps what it pushed to a node (its own choice, not the vendor's).
DEFAULT_RELEASE_DIR = "/opt/lotdeploy"
#: That image's systemd unit must restart to read new TLS files.
DEFAULT_RELOAD_COMMAND = "systemctl restart coreflux-broker"
#: Passwords the vendor's documentation prints (the factory admin password and the cluster
#: page's examples): a route carrying one is as good as open (`lotdeploy audit`).
#: The per-user rights flags of the vendor's named rights model (`-changeUserSettings <user>
#: <Flag> <true|false>`, docs/coreflux-interface.md §4): none of them is needed by a cluster
#: link or a verify probe, so lotdeploy's own users hold them all false.
USER_RIGHT_FLAGS = ("AllowedSystemConfiguration", "AllowedUserManagement", "AllowedLogManagement")


def named_rights(broker_facts: Mapping[str, Any] | None) -> bool:
    """Whether a broker's recorded facts (doctor's `BrokerFacts.to_json()`, kept in the
    state) say it has the named rights model: only then are its users' flags read and set."""
    return bool(broker_facts) and (broker_facts or {}).get("rights_model") == "named"


DOCUMENTED_PASSWORDS = frozenset(
    {"coreflux", "cluster_password", "secure_cluster_pass", "shared_secure_password"}
)


# ---------------------------------------------------------------------------------------------
# The reply envelope (§2): built by the lab broker, parsed by the client
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyError:
    """One entry of a reply's `errors[]` (line/column are set for parse errors).

    `kind` is the entry's `type` (e.g. "ParseError"), when the broker gives one.
    """

    message: str
    line: int | None = None
    column: int | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        # Text from outside: a broker may echo a password it was sent; never keep it.
        object.__setattr__(self, "message", scrub(self.message))

    def __str__(self) -> str:
        where = f"{self.line}:{self.column}: " if self.line is not None else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class Reply:
    """A broker's answer to one command, from a 2.x JSON envelope or a 1.x text line.

    `raw` is the payload as received; it is neither shown nor compared, since it may carry
    values the command carried.
    """

    success: bool
    command: str
    request_id: str | None
    message: str
    data: Any = None
    errors: tuple[ReplyError, ...] = ()
    raw: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", scrub(self.message))

    def describe(self) -> str:
        """One line for humans: the message plus every error (scrubbed of known secrets)."""
        parts = [self.message] + [str(e) for e in self.errors if str(e) != self.message]
        return scrub("; ".join(p for p in parts if p))


#: `command` of a reply to something that was not a command at all.
UNKNOWN_COMMAND_NAME = "Unknown"


def build_reply(
    success: bool,
    verb: str,
    request_id: str | None,
    message: str,
    data: Any = None,
    errors: Iterable[ReplyError] = (),
) -> dict[str, Any]:
    """A 2.x reply envelope as a JSON-ready document.

    `{success, command (PascalCase verb), requestId, message, data}`, plus `errors` (a list of
    `{message, line?, column?, type?}`) on failure; a failure always has at least one error.
    """
    doc: dict[str, Any] = {
        "success": success,
        "command": pascal(verb) if verb else UNKNOWN_COMMAND_NAME,
        "requestId": request_id,
        "message": message,
        "data": data if data is not None else {},
    }
    if not success:
        doc["errors"] = [_error_document(e) for e in errors] or [{"message": message}]
    return doc


ReplyForm = Literal["json", "text"]


def encode_reply(doc: Mapping[str, Any], form: ReplyForm = "json") -> bytes:
    """The payload published on OUTPUT_TOPIC for a `build_reply` document.

    `form="json"`: the 2.x envelope; `form="text"`: the 1.x line (`build_text_reply`).
    """
    if form == "text":
        return build_text_reply(doc).encode()
    return json.dumps(doc).encode()


def build_text_reply(doc: Mapping[str, Any]) -> str:
    """The 1.x plain-text form of a `build_reply` document, as `parse_reply` reads it back.

    A 1.x line has no requestId and no `data`: the message is the reply. A listing (a list in
    `data`) is appended to the message by name, since the text is all a 1.x client gets. A
    failure keeps its first error's position as `(line,col)` and, if its wording would not
    read as a failure (`Missing required ...`), is prefixed `Error: `: which words a 1.x broker
    uses there is UNKNOWN, the client's fallback decides by such words.
    """
    message = str(doc.get("message") or "")
    if doc.get("success"):
        names = _listed_names(doc.get("data"))
        return f"{message}: {', '.join(names)}" if names else message
    text = message
    errors = doc.get("errors") or []
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    line, column = first.get("line"), first.get("column")
    if line is not None and column is not None and not _TEXT_POSITION.search(text):
        text = f"{text} ({line},{column})"
    if _parse_text(text, "").success:
        text = f"Error: {text}"
    return text


def _listed_names(data: Any) -> list[str]:
    if not isinstance(data, list):
        return []
    return [str(item.get("name")) if isinstance(item, dict) else str(item) for item in data]


def _error_document(error: ReplyError) -> dict[str, Any]:
    doc: dict[str, Any] = {"message": error.message}
    if error.line is not None:
        doc["line"] = error.line
    if error.column is not None:
        doc["column"] = error.column
    if error.kind is not None:
        doc["type"] = error.kind
    return doc


_TEXT_POSITION = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_TEXT_FAILURE = re.compile(
    r"error|not found|denied|unknown command|failed|already exists|invalid|not allowed|cannot",
    re.IGNORECASE,
)


def parse_reply(payload: bytes | str, verb: str) -> Reply:
    """Parse one Output payload: the 2.x JSON envelope first, else a 1.x plain-text line.

    Never raises: anything that is not an envelope is read as text.
    """
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    try:  # fsutil's strict JSON: no NaN, no nesting deep enough to recurse
        doc = parse_json(text)
    except UnreadableFile:
        doc = None
    if isinstance(doc, dict) and "success" in doc:
        return _parse_envelope(doc, verb, text)
    return _parse_text(text, verb)


def _parse_envelope(doc: dict[str, Any], verb: str, text: str) -> Reply:
    errors = []
    items = doc.get("errors") or []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict):
            kind = item.get("type")
            errors.append(
                ReplyError(
                    str(item.get("message", "")),
                    _as_int(item.get("line")),
                    _as_int(item.get("column")),
                    str(kind) if kind is not None else None,
                )
            )
        else:
            errors.append(ReplyError(str(item)))
    rid = doc.get("requestId")
    return Reply(
        success=bool(doc.get("success")),
        command=str(doc.get("command") or pascal(verb)),
        request_id=str(rid) if rid is not None else None,
        message=str(doc.get("message") or ""),
        data=doc.get("data"),
        errors=tuple(errors),
        raw=text,
    )


def _parse_text(text: str, verb: str) -> Reply:
    """A 1.x answer: `... successfully`, `Parsing error: ... (line,col)`, `not found`, ..."""
    stripped = text.strip()
    errors = []
    match = _TEXT_POSITION.search(stripped)
    if stripped.lower().startswith("parsing error") or match:
        errors.append(
            ReplyError(stripped, _as_int(match.group(1)), _as_int(match.group(2)))
            if match
            else ReplyError(stripped)
        )
    success = not errors and (
        "successfully" in stripped.lower() or not _TEXT_FAILURE.search(stripped)
    )
    if not success and not errors:
        errors.append(ReplyError(stripped))
    return Reply(success, pascal(verb), None, stripped, None, tuple(errors), text)


# ---------------------------------------------------------------------------------------------
# Route status (§3): `$SYS/Coreflux/Routes/<Name>/status` and `-checkRouteConnection` data
# ---------------------------------------------------------------------------------------------

#: digits bounded: a status is the broker's text, and `int()` of thousands of digits raises
_DURATION = re.compile(r"(?:(\d{1,9})\.)?(\d{1,12}):([0-5]?\d):([0-5]?\d)(?:\.(\d{1,12}))?")


def parse_duration(value: Any) -> float | None:
    """Seconds from a status duration: `HH:MM:SS` (the vendor's `uptime`, hours may pass 24),
    `D.HH:MM:SS[.fffffff]` (.NET's form for a day or more: ASSUMED, docs §3), or a number
    of seconds (what the lab sent before). None for anything else (never a guess)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        return None
    days, hours, minutes, seconds, fraction = match.groups()
    total = int(days or 0) * 86_400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return total + (float(f"0.{fraction}") if fraction else 0.0)


def format_duration(seconds: float) -> str:
    """`HH:MM:SS` (hours unbounded), the vendor's `uptime` form."""
    whole = max(0, int(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


@dataclass(frozen=True)
class RouteStatus:
    """The fields of a route status document lotdeploy reads; None where a field is absent
    or not in a known form. Texts from the broker are scrubbed of known secrets."""

    name: str | None
    connection: str | None
    health: str | None
    uptime_sec: float | None
    last_success: str | None
    last_error: str | None
    last_activity: str | None


def parse_route_status(doc: Mapping[str, Any]) -> RouteStatus:
    """Read a status document in any form seen: the vendor's (`uptime` "HH:MM:SS",
    `lastSuccess`) or the lab's older one (`uptime` in seconds, no `lastSuccess`)."""

    def text(key: str) -> str | None:
        value = doc.get(key)
        return scrub(str(value))[:500] if isinstance(value, str) and value else None

    return RouteStatus(
        name=text("name"),
        connection=text("connection"),
        health=text("health"),
        uptime_sec=parse_duration(doc.get("uptime")),
        last_success=text("lastSuccess"),
        last_error=text("lastError"),
        last_activity=text("lastActivity"),
    )


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# `-routeCode` templates: `#name,type,description,regex,env#` placeholders (§1)
# ---------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"#([^#\n]*)#")
_TEMPLATE_BLOCK = re.compile(r"^\s+ADD\s+(\w+)\s*$")
_TEMPLATE_SETTING = re.compile(r"^\s+WITH\s+(\w+)\s")


@dataclass(frozen=True)
class Placeholder:
    """One `#name,type,description,regex,env#` of a route template, in the form the vendor's
    tooling parses (docs/coreflux-interface.md §1): five comma-separated fields; name, type
    and env never empty, description and regex may be (`#IP,string,PLC address,,true#`).

    `env` is the fifth field as written; the vendor's tooling reads it as a boolean (`true`
    or not). `from_env` is that boolean, or None where the field is neither `true` nor
    `false` (an older lab template put a key name there): unknown, not assumed.
    """

    name: str
    type: str
    description: str
    regex: str
    env: str

    @property
    def from_env(self) -> bool | None:
        word = self.env.strip().lower()
        return True if word == "true" else False if word == "false" else None

    def __str__(self) -> str:
        return f"#{self.name},{self.type},{self.description},{self.regex},{self.env}#"


#: Placeholder fields that must not be empty (the vendor's tooling requires them).
_REQUIRED_FIELDS = ("name", "type", "env")


def parse_placeholder(text: str) -> Placeholder:
    """Parse one placeholder (with or without its `#`s); ValueError saying what is wrong.

    Exactly five fields: a comma in the regex or description would split it where the
    vendor's reader splits too, so such a template is refused rather than misread.
    """
    inner = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "#" else text
    fields = inner.split(",")
    if len(fields) != 5:
        raise ValueError(
            f"placeholder #{inner}# has {len(fields)} comma-separated fields, not 5 "
            "(name,type,description,regex,env; a comma in the regex or description splits it)"
        )
    labels = ("name", "type", "description", "regex", "env")
    values = dict(zip(labels, (value.strip() for value in fields), strict=True))
    empty = [label for label in _REQUIRED_FIELDS if not values[label]]
    if empty:
        raise ValueError(f"placeholder #{inner}# has an empty {', '.join(empty)} field")
    return Placeholder(**values)


@dataclass(frozen=True)
class RouteTemplate:
    """What a broker's `-routeCode <TYPE>` template says: the keys it offers and their
    placeholders. The template's `ADD METADATA` block is not a key (and never deployable)."""

    keys: tuple[str, ...]
    placeholders: tuple[Placeholder, ...]


def parse_route_template(code: str, block: str = CLUSTER_CONFIG_BLOCK) -> RouteTemplate:
    """Read a `-routeCode` template: the `WITH <KEY>` names inside `ADD <block>`, and every
    placeholder (each must pass `parse_placeholder`, else ValueError naming its line)."""
    keys: list[str] = []
    placeholders: list[Placeholder] = []
    current: str | None = None
    for number, line in enumerate(code.splitlines(), 1):
        for match in _PLACEHOLDER.finditer(line):
            try:
                placeholders.append(parse_placeholder(match.group(0)))
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
        opened = _TEMPLATE_BLOCK.match(line)
        if opened:
            current = opened.group(1)
            continue
        if not line.startswith((" ", "\t")):
            current = None  # a new DEFINE ends every block
            continue
        setting = _TEMPLATE_SETTING.match(line)
        if setting and current == block:
            keys.append(setting.group(1))
    return RouteTemplate(tuple(keys), tuple(placeholders))

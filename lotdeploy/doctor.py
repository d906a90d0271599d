"""What a node's broker actually does, asked before the first activation (`lotdeploy doctor`).

lotdeploy's assumptions about the vendor's broker differ between builds
(docs/coreflux-interface.md marks them UNKNOWN). `probe_broker` asks one broker, over an open
admin session, which of them hold: the reply form, whether `-requestId` is echoed, which
CLUSTER_CONFIG keys its template offers, what re-adding a route does (on a scratch route that
is always removed), whether route code read back shows passwords and to whom, and whether the
factory admin login or anonymous logins still work; and what builds are known to differ in:
verbs in any case and as kebab aliases, the cluster monitoring topics, the CONNACK code of a
refused login, a secret store, the named-rights model. Each of those is asked with a
read-only command or a login that must fail, never by changing anything. The answer is a
`BrokerFacts` record (stored in the state document, read by plan and apply); `findings`
turns it into words an operator can act on. Each check, and what apply does with it: docs/doctor.md.

Pure logic over a `BrokerClient` and short extra MQTT connections to the same host:port (a
tunnel's local port in production): no SSH, no CLI, no clock (the caller passes the time).
No secret ever reaches a fact, a finding or a log line.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import secrets
import ssl
import uuid
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal, get_args

from lotdeploy.broker.monitoring import read_cluster_topics
from lotdeploy.broker.mqtt import ConnectRefused, MqttConnection, MqttError
from lotdeploy.broker.session import BrokerClient, CommandFailed
from lotdeploy.compiler.routes import node_route_settings, route_tree
from lotdeploy.errors import BrokerError, CompileError
from lotdeploy.fsutil import UnreadableFile, parse_json
from lotdeploy.lot.ast import Block, Route
from lotdeploy.lot.emit import format_route
from lotdeploy.model import Node, Site
from lotdeploy.protocol import (
    CLUSTER_CONFIG_BLOCK,
    DEFAULT_ADMIN_USER,
    ROUTE_NAME_PATTERN,
    ROUTE_TYPE,
    ROUTES_TOPIC,
    Reply,
    Verb,
    parse_route_template,
)
from lotdeploy.routesecret import BROKER_SECRET_PREFIX
from lotdeploy.secret import Secret

log = logging.getLogger(__name__)

ReplyFormat = Literal["json", "text"]
Readd = Literal["reject", "overwrite", "unknown"]
Severity = Literal["ok", "warning", "error"]
RightsModel = Literal["named", "admin-only"]

REPLY_FORMATS: tuple[str, ...] = get_args(ReplyFormat)
READD_RESULTS: tuple[str, ...] = get_args(Readd)
RIGHTS_MODELS: tuple[str, ...] = get_args(RightsModel)

#: The vendor's factory admin login (docs/coreflux-interface.md §4). Public knowledge, not a
#: secret: it is wrapped in a `Secret` only for the moment of a CONNECT (see `_factory_login`).
FACTORY_ADMIN_USER = DEFAULT_ADMIN_USER
FACTORY_ADMIN_WORDS = "root/coreflux"
_FACTORY_ADMIN_PASSWORD = "coreflux"

#: The scratch route's name; it starts with lotdeploy's route prefix, like every route
#: lotdeploy creates.
SCRATCH_ROUTE = "lotdeploy_doctor_probe"
#: The scratch route dials the discard port on loopback: nothing answers, it never connects.
SCRATCH_ADDRESS = "127.0.0.1"
SCRATCH_PORT = 9
#: SUBACK return code of a refused subscription.
SUBSCRIPTION_REFUSED = 0x80
#: Version of the `to_json` record; a newer record is refused rather than misread. Format 1
#: (before the version-difference checks) is read with those checks as "not checked".
FACTS_FORMAT = 2
_FORMAT_1_ABSENT = frozenset(
    {
        "verbs_any_case",
        "verbs_kebab",
        "cluster_topics",
        "bad_login_code",
        "secret_store",
        "rights_model",
    }
)

_KEY_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: Why a route needs a key, in the site's own words (for findings).
_KEY_REASONS: Mapping[str, str] = {
    "USE_TLS": "tls: true",
    "MESSAGE_VALIDITY_SEC": "message validity",
    "USERNAME": "cluster user",
    "PASSWORD": "cluster password",
}


@dataclass(frozen=True)
class BrokerFacts:
    """What one broker answered to `probe_broker`; None where a check was not (or could not
    be) made. Holds no secret: it is stored as it is."""

    reply_format: ReplyFormat
    request_id_echo: bool
    readd: Readd
    #: The CLUSTER_CONFIG keys `-routeCode MQTT_CLUSTER` offers; empty if no template was read.
    cluster_keys: frozenset[str]
    version: str | None
    route_code_shows_password: bool | None
    route_code_readable_by_cluster_user: bool | None
    factory_admin_accepted: bool | None
    anonymous_accepted: bool | None
    checked_at: str
    #: The session itself logged in as root/coreflux (then that login was not probed).
    admin_is_factory: bool = False
    #: Whether a template was read at all (False: `cluster_keys` says nothing).
    cluster_keys_read: bool = True
    # -- what builds differ in (None: not checked, or no answer that tells) ---------------
    #: `-listroutes` (lower case) answered like `-listRoutes`
    verbs_any_case: bool | None = None
    #: `--list-routes` (the kebab alias) answered like `-listRoutes`
    verbs_kebab: bool | None = None
    #: the monitoring topics the broker published (sorted); () none, None not checked
    cluster_topics: tuple[str, ...] | None = None
    #: CONNACK return code of a login with an unknown user name (4 or 5 seen so far)
    bad_login_code: int | None = None
    #: `-listSecrets` exists (the broker has a secret store for `-setSecret`)
    secret_store: bool | None = None
    #: "named": `-listUserGroups` exists (per-user rights flags and groups)
    rights_model: RightsModel | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record for the state document (`from_json` reads it back)."""
        return {
            "format": FACTS_FORMAT,
            "reply_format": self.reply_format,
            "request_id_echo": self.request_id_echo,
            "readd": self.readd,
            "cluster_keys": sorted(self.cluster_keys),
            "cluster_keys_read": self.cluster_keys_read,
            "version": self.version,
            "route_code_shows_password": self.route_code_shows_password,
            "route_code_readable_by_cluster_user": self.route_code_readable_by_cluster_user,
            "factory_admin_accepted": self.factory_admin_accepted,
            "admin_is_factory": self.admin_is_factory,
            "anonymous_accepted": self.anonymous_accepted,
            "checked_at": self.checked_at,
            "verbs_any_case": self.verbs_any_case,
            "verbs_kebab": self.verbs_kebab,
            "cluster_topics": list(self.cluster_topics)
            if self.cluster_topics is not None
            else None,
            "bad_login_code": self.bad_login_code,
            "secret_store": self.secret_store,
            "rights_model": self.rights_model,
        }

    @classmethod
    def from_json(cls, doc: Any) -> BrokerFacts:
        """Read a `to_json` record back; ValueError saying what is damaged."""
        if isinstance(doc, str | bytes):
            try:
                doc = parse_json(doc)
            except UnreadableFile:
                raise ValueError("broker facts: not JSON") from None
        if not isinstance(doc, Mapping):
            raise ValueError("broker facts: not a JSON object")
        fmt = doc.get("format")
        if type(fmt) is not int:
            raise ValueError("broker facts: no record format number")
        if fmt not in (1, FACTS_FORMAT):
            raise ValueError(
                f"broker facts: record format {fmt} is not {FACTS_FORMAT} "
                "(written by another lotdeploy version: run lotdeploy doctor again)"
            )
        if fmt == 1:
            doc = {**dict.fromkeys(_FORMAT_1_ABSENT), **doc, "format": FACTS_FORMAT}
        expected = set(cls(**_SAMPLE).to_json())
        unknown = sorted(set(doc) - expected)
        missing = sorted(expected - set(doc))
        if unknown or missing:
            parts = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            parts += [f"missing field(s) {', '.join(missing)}"] if missing else []
            raise ValueError(f"broker facts: {'; '.join(parts)}")
        keys = doc["cluster_keys"]
        if not isinstance(keys, list) or not all(
            isinstance(k, str) and _KEY_NAME.fullmatch(k) for k in keys
        ):
            raise ValueError("broker facts: cluster_keys must be a list of key names")
        checked_at = _text(doc, "checked_at")
        try:
            datetime.datetime.fromisoformat(checked_at)
        except ValueError:
            raise ValueError("broker facts: checked_at is not an ISO 8601 time") from None
        version = doc["version"]
        if version is not None and (not isinstance(version, str) or len(version) > 200):
            raise ValueError("broker facts: version must be a short string or null")
        topics = doc["cluster_topics"]
        if topics is not None and (
            not isinstance(topics, list)
            or not all(isinstance(t, str) and t.startswith("$SYS/") for t in topics)
        ):
            raise ValueError("broker facts: cluster_topics must be a list of $SYS topics or null")
        code = doc["bad_login_code"]
        if code is not None and (type(code) is not int or not 0 < code < 256):
            raise ValueError("broker facts: bad_login_code must be a CONNACK code or null")
        rights = doc["rights_model"]
        if rights is not None and rights not in RIGHTS_MODELS:
            raise ValueError(
                f"broker facts: rights_model must be one of {', '.join(RIGHTS_MODELS)}"
            )
        return cls(
            reply_format=_choice(doc, "reply_format", REPLY_FORMATS),  # type: ignore[arg-type]
            request_id_echo=_flag(doc, "request_id_echo"),
            readd=_choice(doc, "readd", READD_RESULTS),  # type: ignore[arg-type]
            cluster_keys=frozenset(keys),
            cluster_keys_read=_flag(doc, "cluster_keys_read"),
            version=version,
            route_code_shows_password=_maybe_flag(doc, "route_code_shows_password"),
            route_code_readable_by_cluster_user=_maybe_flag(
                doc, "route_code_readable_by_cluster_user"
            ),
            factory_admin_accepted=_maybe_flag(doc, "factory_admin_accepted"),
            admin_is_factory=_flag(doc, "admin_is_factory"),
            anonymous_accepted=_maybe_flag(doc, "anonymous_accepted"),
            checked_at=checked_at,
            verbs_any_case=_maybe_flag(doc, "verbs_any_case"),
            verbs_kebab=_maybe_flag(doc, "verbs_kebab"),
            cluster_topics=tuple(topics) if topics is not None else None,
            bad_login_code=code,
            secret_store=_maybe_flag(doc, "secret_store"),
            rights_model=rights,
        )


_SAMPLE: dict[str, Any] = {
    "reply_format": "json",
    "request_id_echo": True,
    "readd": "unknown",
    "cluster_keys": frozenset(),
    "version": None,
    "route_code_shows_password": None,
    "route_code_readable_by_cluster_user": None,
    "factory_admin_accepted": None,
    "anonymous_accepted": None,
    "checked_at": "",
}


def _flag(doc: Mapping[str, Any], name: str) -> bool:
    value = doc[name]
    if type(value) is not bool:
        raise ValueError(f"broker facts: {name} must be true or false")
    return value


def _maybe_flag(doc: Mapping[str, Any], name: str) -> bool | None:
    value = doc[name]
    if value is not None and type(value) is not bool:
        raise ValueError(f"broker facts: {name} must be true, false or null")
    return value


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str):
        raise ValueError(f"broker facts: {name} must be a string")
    return value


def _choice(doc: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = doc[name]
    if value not in choices:
        raise ValueError(f"broker facts: {name} must be one of {', '.join(choices)}")
    return str(value)


# ---------------------------------------------------------------------------------------------
# What the site needs, and what apply does with the facts
# ---------------------------------------------------------------------------------------------


def cluster_key_needs(site: Site, node: Node) -> dict[str, tuple[str, ...]]:
    """Each CLUSTER_CONFIG key the node's routes use, and the peers whose routes use it.

    Read from the compiler's own route trees (password a dummy), so it says exactly what
    apply would send: e.g. USE_TLS only for links to a TLS peer.
    """
    dummy = Secret("-")
    needs: dict[str, list[str]] = {}
    for settings in node_route_settings(site, node):
        tree = route_tree(settings, dummy)
        block = tree.block(CLUSTER_CONFIG_BLOCK)
        for setting in block.settings if block is not None else ():
            peers = needs.setdefault(setting.key, [])
            if settings["peer"] not in peers:
                peers.append(settings["peer"])
    return {key: tuple(peers) for key, peers in needs.items()}


def needed_cluster_keys(site: Site, node: Node) -> set[str]:
    """The CLUSTER_CONFIG keys the node's routes need."""
    return set(cluster_key_needs(site, node))


def missing_keys(facts: BrokerFacts, site: Site, node: Node) -> list[str]:
    """Keys the node's routes need that its broker's template does not offer (sorted).

    Empty when no template was read: then nothing is known, and findings says so.
    """
    if not facts.cluster_keys_read:
        return []
    return sorted(needed_cluster_keys(site, node) - facts.cluster_keys)


def key_problems(facts: BrokerFacts, site: Site, node: Node) -> list[str]:
    """What plan prints (and fails on) for this node: one line per key its broker lacks,
    naming the node, the key and the peers whose links need it."""
    needs = cluster_key_needs(site, node)
    return [
        f"node {node.name}: {finding.message}"
        for finding in _key_findings(facts, needs)
        if finding.severity == "error"
    ]


def needs_remove_before_add(readd: str | None) -> bool:
    """Whether apply removes a route before re-adding it: only where the broker is known to
    refuse a re-add. Elsewhere it adds in place, and a refusal is followed by the remove and
    the add again (activate.apply_routes), which is how an unknown broker is learned."""
    return readd == "reject"


# ---------------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One line of `lotdeploy doctor`'s report for a node."""

    severity: Severity
    check: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "check": self.check, "message": self.message}


def findings(
    facts: BrokerFacts, site_needs: AbstractSet[str] | Mapping[str, Sequence[str]] = frozenset()
) -> list[Finding]:
    """The facts in operator-actionable words, one finding per check.

    `site_needs`: the keys the node's routes need (`needed_cluster_keys`), or, to name the
    peers in the message, the mapping `cluster_key_needs` returns.
    """
    needs: Mapping[str, Sequence[str]] = (
        site_needs if isinstance(site_needs, Mapping) else {k: () for k in site_needs}
    )
    out = [_format_finding(facts), _echo_finding(facts), _readd_finding(facts)]
    out += _key_findings(facts, needs)
    out.append(
        Finding("ok", "version", f"broker version {facts.version}")
        if facts.version
        else Finding("ok", "version", "the broker publishes no version on $SYS/Coreflux/Version")
    )
    out += [_password_finding(facts), _cluster_user_finding(facts)]
    out += [_factory_finding(facts), _anonymous_finding(facts)]
    out += [_verbs_finding(facts), _monitoring_finding(facts), _connack_finding(facts)]
    out += [_secret_store_finding(facts), _rights_finding(facts)]
    return out


def _not_checked(check: str, what: str) -> Finding:
    return Finding("ok", check, f"not checked: {what} (lotdeploy doctor asks, apply does not)")


def _verbs_finding(facts: BrokerFacts) -> Finding:
    any_case, kebab = facts.verbs_any_case, facts.verbs_kebab
    if any_case is None and kebab is None:
        return _not_checked("verb-case", "whether verbs work in any case")
    seen = []
    if any_case is not None:
        seen.append(f"lower case {'works' if any_case else 'is refused'}")
    if kebab is not None:
        seen.append(f"--kebab-case {'works' if kebab else 'is refused'}")
    return Finding(
        "ok",
        "verb-case",
        f"verbs: {', '.join(seen)}; lotdeploy always sends the documented spelling "
        "(-addRoute, -listRoutes, ...), so either way it works",
    )


def _monitoring_finding(facts: BrokerFacts) -> Finding:
    topics = facts.cluster_topics
    if topics is None:
        return _not_checked("cluster-topics", "which cluster monitoring topics it publishes")
    if not topics:
        return Finding(
            "ok",
            "cluster-topics",
            "no cluster monitoring topics ($SYS/broker/cluster/#, $SYS/Coreflux/Cluster/#): "
            "verify and status prove the cluster by probes and -listRoutes alone",
        )
    shown = ", ".join(topics[:6]) + (f" (+{len(topics) - 6})" if len(topics) > 6 else "")
    return Finding(
        "ok",
        "cluster-topics",
        f"publishes {shown}: verify and status show them, and decide nothing on them "
        "(their format is not documented)",
    )


def _connack_finding(facts: BrokerFacts) -> Finding:
    code = facts.bad_login_code
    if code is None:
        return _not_checked("connack", "how the broker refuses a login")
    if code in (4, 5):
        name = "bad user name or password" if code == 4 else "not authorised"
        return Finding(
            "ok",
            "connack",
            f"a refused login gets CONNACK {code} ({name}): lotdeploy reads 4 and 5 alike as "
            "wrong credentials and names the node",
        )
    return Finding(
        "warning",
        "connack",
        f"a refused login gets CONNACK {code}, neither 4 nor 5: lotdeploy reports the code "
        "as it is; check the broker's authentication settings",
    )


def _secret_store_finding(facts: BrokerFacts) -> Finding:
    store = facts.secret_store
    if store is None:
        return _not_checked("secret-store", "whether the broker has a secret store")
    if store:
        return Finding(
            "ok",
            "secret-store",
            "the broker has a secret store (-setSecret, -listSecrets): with password_source "
            "auto (the default) or secret-store, apply sets the cluster password there "
            f"({BROKER_SECRET_PREFIX}<N>) and the routes read it with GET SECRET, so their "
            "code on $SYS holds no password (for MQTT_CLUSTER an assumption: the vendor "
            "documents GET SECRET for bridges; apply waits for the links to connect); with "
            "inline they carry it in their code",
        )
    return Finding(
        "ok",
        "secret-store",
        "no secret store (-listSecrets is unknown): routes carry the cluster password in "
        "their code (password_source auto falls back to inline; secret-store fails plan "
        "for this node), so keep $SYS rights to the admin",
    )


def _rights_finding(facts: BrokerFacts) -> Finding:
    rights = facts.rights_model
    if rights is None:
        return _not_checked("rights", "which user rights model the broker has")
    if rights == "named":
        return Finding(
            "ok",
            "rights",
            "named user rights (-changeUserSettings, -listUserGroups): lotdeploy sends every "
            "command as the admin, sets every rights flag of its cluster and probe users to "
            "false, and its refresh reads them back (a flag given by hand is drift)",
        )
    return Finding(
        "ok",
        "rights",
        "no named user rights (-listUserGroups is unknown): only the admin may command; "
        "lotdeploy's cluster and probe users are plain users",
    )


def _format_finding(facts: BrokerFacts) -> Finding:
    if facts.reply_format == "json":
        return Finding("ok", "reply-format", "replies are JSON envelopes (2.x)")
    return Finding(
        "ok",
        "reply-format",
        "replies are 1.x plain text: lotdeploy reads them by their wording, without error "
        "positions beyond (line,col)",
    )


def _echo_finding(facts: BrokerFacts) -> Finding:
    if facts.request_id_echo:
        return Finding("ok", "request-id", "the broker echoes -requestId: replies are matched")
    return Finding(
        "warning",
        "request-id",
        "the broker does not echo -requestId: lotdeploy takes the first reply after each "
        "command, so keep other admin tools off this broker while lotdeploy applies",
    )


def _readd_finding(facts: BrokerFacts) -> Finding:
    if facts.readd == "overwrite":
        return Finding(
            "ok",
            "readd",
            "re-adding a route replaces it: apply updates routes in place (no link drop)",
        )
    if facts.readd == "reject":
        return Finding(
            "ok",
            "readd",
            "re-adding a route fails (already exists): apply removes a route before adding "
            "it again, so that link drops briefly",
        )
    return Finding(
        "warning",
        "readd",
        "could not tell what re-adding a route does (the scratch route test did not "
        "complete): apply's first change adds the route in place and learns it from the "
        "answer (refused: removed and added again)",
    )


def _key_findings(facts: BrokerFacts, needs: Mapping[str, Sequence[str]]) -> list[Finding]:
    if not facts.cluster_keys_read:
        return [
            Finding(
                "warning",
                "cluster-keys",
                "the broker gave no readable template for -routeCode MQTT_CLUSTER: which "
                "CLUSTER_CONFIG keys it accepts is unknown, apply will find out",
            )
        ]
    missing = sorted(set(needs) - facts.cluster_keys)
    out = []
    for key in missing:
        peers = needs[key]
        words = f"the site needs for links to {', '.join(peers)}" if peers else "the site needs"
        reason = _KEY_REASONS.get(key)
        out.append(
            Finding(
                "error",
                "cluster-keys",
                f"broker lacks CLUSTER_CONFIG key {key}, which {words}"
                + (f" ({reason})" if reason else "")
                + ": upgrade the broker or change the site",
            )
        )
    if not missing:
        out.append(
            Finding(
                "ok",
                "cluster-keys",
                "the broker offers every CLUSTER_CONFIG key the site needs"
                + (f" ({', '.join(sorted(needs))})" if needs else ""),
            )
        )
    return out


def _password_finding(facts: BrokerFacts) -> Finding:
    shown = facts.route_code_shows_password
    if shown is None:
        return Finding(
            "warning",
            "route-code-password",
            "not checked: no route code came back on $SYS/Coreflux/Routes/<Name> in time; "
            "assume it shows the cluster password to anyone allowed to read $SYS",
        )
    if shown:
        return Finding(
            "warning",
            "route-code-password",
            "route code on $SYS/Coreflux/Routes/<Name> shows the cluster password to anyone "
            "allowed to read $SYS: give $SYS rights to the admin only",
        )
    return Finding("ok", "route-code-password", "route code read back does not show the password")


def _cluster_user_finding(facts: BrokerFacts) -> Finding:
    readable = facts.route_code_readable_by_cluster_user
    if readable is None:
        return Finding(
            "ok",
            "route-code-readers",
            "not checked: no cluster user that can log in to this broker yet (it is "
            "created by apply; run doctor again afterwards)",
        )
    if readable:
        return Finding(
            "warning",
            "route-code-readers",
            "the cluster user may subscribe to $SYS/Coreflux/Routes/#: any peer can read "
            "route code"
            + (" and the passwords in it" if facts.route_code_shows_password else "")
            + "; take $SYS rights away from the cluster user",
        )
    return Finding(
        "ok", "route-code-readers", "the cluster user may not read $SYS/Coreflux/Routes/#"
    )


def _factory_finding(facts: BrokerFacts) -> Finding:
    accepted = facts.factory_admin_accepted
    if facts.admin_is_factory:
        return Finding(
            "warning",
            "factory-admin",
            f"the site logs in to this broker with the factory admin credentials "
            f"{FACTORY_ADMIN_WORDS}: change the admin password on the broker and in the site",
        )
    if accepted is None:
        return Finding(
            "warning",
            "factory-admin",
            f"could not check whether the broker accepts {FACTORY_ADMIN_WORDS} (no answer in time)",
        )
    if accepted:
        return Finding(
            "warning",
            "factory-admin",
            f"broker still accepts the factory admin credentials {FACTORY_ADMIN_WORDS}: "
            "change the admin password",
        )
    return Finding(
        "ok", "factory-admin", f"the factory admin credentials {FACTORY_ADMIN_WORDS} are refused"
    )


def _anonymous_finding(facts: BrokerFacts) -> Finding:
    accepted = facts.anonymous_accepted
    if accepted is None:
        return Finding(
            "warning",
            "anonymous",
            "could not check whether the broker accepts anonymous logins (no answer in time)",
        )
    if accepted:
        return Finding(
            "warning",
            "anonymous",
            "broker accepts anonymous logins: turn anonymous access off in the broker's "
            "configuration",
        )
    return Finding("ok", "anonymous", "anonymous logins are refused")


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------


async def probe_broker(
    client: BrokerClient,
    *,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    now_iso: str,
    cluster_user: tuple[str, Secret] | None = None,
    scratch_route: str = SCRATCH_ROUTE,
    timeout: float = 5.0,
    server_hostname: str | None = None,
) -> BrokerFacts:
    """Ask one broker which of lotdeploy's assumptions hold (docs/doctor.md).

    `client` is an open admin session; the extra logins (cluster user, factory admin,
    anonymous) go to `host:port` with `tls` (and `server_hostname` to verify, when the host
    is a tunnel's local end). Commands are bounded by the client's reply timeout, every other
    wait by `timeout`. The only route touched is `scratch_route`, and only if it did not
    exist: it is always removed again. Raises BrokerError if the broker does not answer the
    command channel at all.
    """
    if not re.fullmatch(ROUTE_NAME_PATTERN, scratch_route):
        raise ValueError(f"scratch route name {scratch_route!r} is not a safe route name")
    reply_format, echo = await _probe_replies(client)
    version = await client.read_version(timeout)
    keys, keys_read = await _probe_template(client)
    readd, shows_password = await _probe_scratch_route(client, scratch_route, keys, timeout)
    logins = _Logins(host, port, tls, server_hostname, timeout)
    readable = await logins.cluster_user_reads_routes(cluster_user) if cluster_user else None
    admin_is_factory = client.uses_credentials(
        FACTORY_ADMIN_USER, Secret(_FACTORY_ADMIN_PASSWORD, public=True)
    )
    factory = None if admin_is_factory else await logins.factory_admin()
    anonymous = await logins.accepts(None, None)
    differences = await _probe_differences(client, logins, timeout)
    return BrokerFacts(
        reply_format=reply_format,
        request_id_echo=echo,
        readd=readd,
        cluster_keys=keys,
        cluster_keys_read=keys_read,
        version=version,
        route_code_shows_password=shows_password,
        route_code_readable_by_cluster_user=readable,
        factory_admin_accepted=factory,
        admin_is_factory=admin_is_factory,
        anonymous_accepted=anonymous,
        checked_at=now_iso,
        **differences,
    )


async def _probe_differences(
    client: BrokerClient, logins: _Logins, timeout: float
) -> dict[str, Any]:
    """What builds differ in, each asked with a read-only command or a login that must fail:
    the verb spelling (`-listroutes`, `--list-routes`), the monitoring topics, the CONNACK
    of a login with an unknown user, `-listSecrets`, `-listUserGroups <admin>`."""
    lower = await _verb_known(client, Verb.LIST_ROUTES.lower())
    kebab = await _verb_known(client, "--list-routes")
    try:
        topics = await read_cluster_topics(client, timeout=min(timeout, 1.5))
        seen: tuple[str, ...] | None = tuple(sorted(topics.values))
    except BrokerError as exc:
        log.info("broker %s: monitoring topics not read: %s", client.node_name, exc)
        seen = None
    store = await _verb_known(client, Verb.LIST_SECRETS)
    groups = await _verb_known(client, Verb.LIST_USER_GROUPS, client.username)
    rights: RightsModel | None = None if groups is None else "named" if groups else "admin-only"
    return {
        "verbs_any_case": lower,
        "verbs_kebab": kebab,
        "cluster_topics": seen,
        "bad_login_code": await logins.refusal_code(),
        "secret_store": store,
        "rights_model": rights,
    }


async def _verb_known(client: BrokerClient, verb: str, argument: str = "") -> bool | None:
    """Whether the broker knows a verb as written: it answered (even with a failure about
    the argument) → True; `Unknown command` → False; no telling (denied, lost) → None."""
    try:
        reply = await client.command(verb, argument)
    except BrokerError as exc:
        log.info("broker %s: -%s not answered: %s", client.node_name, verb, exc)
        return None
    words = reply.describe().lower()
    if "unknown command" in words:
        return False
    if "permission denied" in words:
        return None
    return True


async def probe_for_apply(
    client: BrokerClient,
    *,
    now_iso: str,
) -> BrokerFacts:
    """Only what activation needs, before apply's first activation on a node: the reply
    form and `-requestId` echo (read off the `-listRoutes` the session sent on connect, when
    it was opened with `request_ids="auto"`) and the CLUSTER_CONFIG keys (`-routeCode`).
    What re-adding a route does is left "unknown": apply learns it from its first change
    that re-adds a route in place (activate.apply_routes), so no scratch route is put on a
    broker at first contact. The rest of `probe_broker` (version,
    password read-back, the extra logins, the secret store and the rights model) is
    `lotdeploy doctor`'s: left None here (so `password_source: auto` moves routes to the
    store only once doctor has found one: a change the operator sees in a plan), so
    doctor's findings say "not checked" until doctor runs. One round trip instead of
    some 13 and 3 extra logins.
    """
    listing = client.last_listing
    if listing is None:
        reply_format, echo = await _probe_replies(client)
        listing = client.last_listing
    else:
        reply_format, echo = reply_form(listing), bool(client.request_ids)
    keys, keys_read = await _probe_template(client)
    return BrokerFacts(
        reply_format=reply_format,
        request_id_echo=echo,
        readd="unknown",
        cluster_keys=keys,
        cluster_keys_read=keys_read,
        version=None,
        route_code_shows_password=None,
        route_code_readable_by_cluster_user=None,
        factory_admin_accepted=None,
        admin_is_factory=client.uses_credentials(
            FACTORY_ADMIN_USER, Secret(_FACTORY_ADMIN_PASSWORD, public=True)
        ),
        anonymous_accepted=None,
        checked_at=now_iso,
    )


def reply_form(reply: Reply) -> ReplyFormat:
    """How a reply came: a 2.x JSON envelope, or anything else (read as 1.x text)."""
    try:
        doc = parse_json(reply.raw)
    except UnreadableFile:
        return "text"
    return "json" if isinstance(doc, dict) and "success" in doc else "text"


async def _probe_replies(client: BrokerClient) -> tuple[ReplyFormat, bool]:
    """`-listRoutes -requestId <id>`: the session's own probe; the caller's id setting is kept."""
    before = client.request_ids
    try:
        reply = await client.probe_request_ids()
    finally:
        client.request_ids = before
    return reply_form(reply), reply.request_id is not None


async def _probe_template(client: BrokerClient) -> tuple[frozenset[str], bool]:
    """The keys `-routeCode MQTT_CLUSTER` offers, and whether a template was read at all."""
    try:
        code = await client.route_code(ROUTE_TYPE)
        template = parse_route_template(code)
    except CommandFailed as exc:
        log.info("broker %s: -routeCode %s refused: %s", client.node_name, ROUTE_TYPE, exc)
        return frozenset(), False
    except ValueError as exc:
        log.info("broker %s: unreadable %s template: %s", client.node_name, ROUTE_TYPE, exc)
        return frozenset(), False
    keys = frozenset(k for k in template.keys if _KEY_NAME.fullmatch(k))
    return keys, bool(keys)


def scratch_route_text(name: str, offered: AbstractSet[str], password: Secret) -> str:
    """The scratch route's LOT: a link to the discard port on loopback that never connects,
    with only the keys the broker offers (never USE_TLS: nothing to test there)."""
    settings = {
        "name": name,
        "peer": "doctor",
        "broker_address": SCRATCH_ADDRESS,
        "broker_port": SCRATCH_PORT,
        "client_id": f"lotdeploy-doctor-{uuid.uuid4().hex[:12]}",
        "username": "lotdeploy_doctor",
        "message_validity_sec": 30,
        "use_tls": False,
    }
    tree = route_tree(settings, password)
    block = tree.block(CLUSTER_CONFIG_BLOCK)
    assert block is not None
    kept = tuple(s for s in block.settings if s.key in offered)
    return format_route(Route(tree.name, tree.type, (Block(block.kind, None, kept),)))


async def _route_exists(client: BrokerClient, name: str) -> bool | None:
    """Whether the broker runs a route `name` (None: it would not say)."""
    reply = await client.command(Verb.CHECK_ROUTE_CONNECTION, name)
    if reply.success:
        return True
    return False if "not found" in reply.describe().lower() else None


async def _probe_scratch_route(
    client: BrokerClient,
    name: str,
    offered: frozenset[str],
    timeout: float,
) -> tuple[Readd, bool | None]:
    """Add the scratch route twice and read its code back; always remove it afterwards.

    Skipped ("unknown", None) without a template to build it from, or when a route of that
    name already exists (asked with -checkRouteConnection): that one is not ours to touch.
    """
    if not offered:
        return "unknown", None
    exists = await _route_exists(client, name)
    if exists is not False:
        log.warning(
            "broker %s: route %s %s: skipping the scratch route test",
            client.node_name,
            name,
            "already exists" if exists else "may exist (-checkRouteConnection did not say)",
        )
        return "unknown", None
    password = Secret(secrets.token_hex(16))  # throwaway: never used anywhere else
    try:
        text = scratch_route_text(name, offered, password)
    except CompileError as exc:  # pragma: no cover - our own constants always format
        log.warning("broker %s: cannot build the scratch route: %s", client.node_name, exc)
        return "unknown", None
    readd: Readd = "unknown"
    shows: bool | None = None
    refused = False
    try:
        try:
            await client.add_route(text)
        except CommandFailed as exc:
            # an answered refusal added nothing: there is nothing of ours to remove (and a
            # route of that name appearing meanwhile is not ours to touch)
            refused = True
            log.warning("broker %s: scratch route refused: %s", client.node_name, exc)
            return "unknown", None
        again = await client.command(Verb.ADD_ROUTE, text)
        if again.success:
            readd = "overwrite"
        elif "already exists" in again.describe().lower():
            readd = "reject"
        if "PASSWORD" in offered:
            code = await client.read_route_code(name, timeout)
            if code:
                shows = password.reveal() in code
    finally:
        if not refused:  # also after a lost reply: the route may be there
            await _remove_scratch(client, name)
    return readd, shows


async def _remove_scratch(client: BrokerClient, name: str) -> None:
    try:
        await client.remove_route(name)  # "not found" counts as done
    except BrokerError as exc:
        raise BrokerError(
            client.node_name,
            f"could not remove the scratch route {name} ({exc.cause}): "
            f"remove it by hand with -removeRoute {name}",
        ) from None


@dataclass(frozen=True)
class _Logins:
    """Short extra MQTT logins to the broker under test, each bounded by `timeout`."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    server_hostname: str | None
    timeout: float

    def _connection(self, username: str | None, password: Secret | None) -> MqttConnection:
        return MqttConnection(
            self.host,
            self.port,
            client_id=f"lotdeploy-doctor-{uuid.uuid4().hex[:12]}",
            username=username,
            password=password,
            tls=self.tls,
            server_hostname=self.server_hostname,
            keepalive=max(5, int(self.timeout) * 2),
            connect_timeout=self.timeout,
        )

    async def accepts(self, username: str | None, password: Secret | None) -> bool | None:
        """CONNACK 0 → True, 4 or 5 (bad credentials, not authorised) → False, else None."""
        conn = self._connection(username, password)
        try:
            await conn.connect()
        except ConnectRefused as exc:
            return False if exc.code in (4, 5) else None
        except MqttError as exc:
            log.info("login check on %s:%s inconclusive: %s", self.host, self.port, exc)
            return None
        await conn.close()
        return True

    async def refusal_code(self) -> int | None:
        """The CONNACK return code of a login as a user that does not exist (a throwaway
        name and password: no real account is ever tried, so none can be locked out)."""
        name = f"lotdeploy_doctor_{secrets.token_hex(6)}"
        conn = self._connection(name, Secret(secrets.token_hex(16)))
        try:
            await conn.connect()
        except ConnectRefused as exc:
            return exc.code
        except MqttError as exc:
            log.info("refused-login check on %s:%s inconclusive: %s", self.host, self.port, exc)
            return None
        await conn.close()  # the broker let an unknown user in: anonymous-like, see findings
        return 0

    async def factory_admin(self) -> bool | None:
        """Whether root/coreflux still logs in. The Secret lives only for this call: any Secret
        of 8+ characters is scrubbed from all text while it exists, and "coreflux" is a word
        in plenty of harmless text."""
        return await self.accepts(FACTORY_ADMIN_USER, Secret(_FACTORY_ADMIN_PASSWORD, public=True))

    async def cluster_user_reads_routes(self, user: tuple[str, Secret]) -> bool | None:
        """Whether the cluster user may subscribe to `$SYS/Coreflux/Routes/#` (None: it could
        not log in, e.g. not created yet, or no SUBACK in time)."""
        name, password = user
        conn = self._connection(name, password)
        try:
            await conn.connect()
        except MqttError as exc:
            log.info("cluster user %s cannot log in to check $SYS rights: %s", name, exc)
            return None
        try:
            codes = await conn.subscribe([(f"{ROUTES_TOPIC}/#", 0)], self.timeout)
        except MqttError as exc:
            log.info("no SUBACK for the cluster user's $SYS subscription: %s", exc)
            return None
        finally:
            with contextlib.suppress(MqttError):
                await conn.close()
        return bool(codes) and codes[0] != SUBSCRIPTION_REFUSED


__all__ = [
    "FACTORY_ADMIN_USER",
    "SCRATCH_ROUTE",
    "BrokerFacts",
    "Finding",
    "cluster_key_needs",
    "findings",
    "key_problems",
    "missing_keys",
    "needed_cluster_keys",
    "needs_remove_before_add",
    "probe_broker",
    "probe_for_apply",
    "reply_form",
    "scratch_route_text",
]

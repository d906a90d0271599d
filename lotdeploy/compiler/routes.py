"""What each node should run: one MQTT_CLUSTER route per peer, as a LOT tree (pure)."""

from __future__ import annotations

from typing import Any

from lotdeploy.lot.ast import Block, Bool, Int, Route, SecretRef, Setting, Str, Value
from lotdeploy.model import Link, Node, Site, username_for_version
from lotdeploy.protocol import CLUSTER_CONFIG_BLOCK, CLUSTER_KEY_ORDER, ROUTE_TYPE
from lotdeploy.secret import Secret

__all__ = ["ROUTE_FILE", "ROUTE_TYPE", "node_route_settings", "route_settings", "route_tree"]

ROUTE_FILE = "routes.lot"


def route_settings(link: Link, peer: Node, credential_version: int = 1) -> dict[str, Any]:
    """The route's attributes, password excluded; used by the plan, the template and the AST.

    The peer decides port, TLS and username: the route must match what the *target*
    broker listens on and accepts. A credential rotation moves routes to a new user
    (`cluster_v2`), so the username depends on the active credential version.
    """
    return {
        "name": link.route_name,
        "peer": peer.name,
        "peer_region": peer.region,
        "link_class": link.link_class,
        "broker_address": peer.address,
        "broker_port": peer.route_port,
        "client_id": link.client_id,
        "username": username_for_version(peer.username, credential_version),
        "message_validity_sec": link.message_validity_sec,
        "use_tls": peer.route_tls,
    }


#: How each CLUSTER_CONFIG key's value comes from a route's settings: (setting, form).
#: The one table behind both the LOT tree (route_tree) and the canonical text
#: (canonical_route_text); `None` as the setting means the cluster password.
VALUE_FORMS: dict[str, tuple[str | None, str]] = {
    "BROKER_ADDRESS": ("broker_address", "string"),
    "BROKER_PORT": ("broker_port", "quoted-int"),
    "CLIENT_ID": ("client_id", "string"),
    "USERNAME": ("username", "string"),
    "PASSWORD": (None, "string"),
    "MESSAGE_VALIDITY_SEC": ("message_validity_sec", "quoted-int"),
    "USE_TLS": ("use_tls", "flag"),  # present (bare true) only when on
}


def route_tree(settings: dict[str, Any], password: Secret) -> Route:
    """The route as a LOT tree: the documented keys, in the protocol's emit order.

    Integers in the vendor's single-quoted form; USE_TLS only when true (its absence is off).
    With `settings["password_secret"]` (a broker secret's name) the password is
    `GET SECRET "<name>"` and `password` is not used (lotdeploy.routesecret).
    """
    entries = []
    stored = settings.get("password_secret")
    for key in CLUSTER_KEY_ORDER:
        source, form = VALUE_FORMS[key]
        raw = password.reveal() if source is None else settings[source]
        value: Value
        if source is None and stored:
            value = SecretRef(stored)
        elif form == "flag":
            if not raw:
                continue
            value = Bool(True)
        elif form == "quoted-int":
            value = Int(int(raw), quoted=True)
        else:
            value = Str(raw)
        entries.append(Setting(key, value))
    return Route(settings["name"], ROUTE_TYPE, (Block(CLUSTER_CONFIG_BLOCK, None, tuple(entries)),))


def _line_forms() -> list[tuple[str | None, str, str, bool]]:
    """Per key in emit order: (setting, text before the value, after it, is a flag)."""
    forms = []
    for key in CLUSTER_KEY_ORDER:
        source, form = VALUE_FORMS[key]
        if form == "flag":
            forms.append((source, f"        WITH {key} true", "", True))
        else:
            quote = "'" if form == "quoted-int" else '"'
            forms.append((source, f"        WITH {key} {quote}", quote, False))
    return forms


#: VALUE_FORMS read once, not for every key of every route (render makes 999,000 routes).
_LINE_FORMS = _line_forms()


def canonical_route_text(settings: dict[str, Any], password: Secret) -> str:
    """`format_route(route_tree(settings, password))` without its final newline, made by
    string formatting (tests/test_compiler.py checks the two agree for any settings)."""
    stored = settings.get("password_secret")
    secret = password.reveal()
    lines = [
        f"DEFINE ROUTE {settings['name']} WITH TYPE {ROUTE_TYPE}",
        f"    ADD {CLUSTER_CONFIG_BLOCK}",
    ]
    for source, head, tail, flag in _LINE_FORMS:
        raw = secret if source is None else settings[source]
        if source is None and stored:
            lines.append(f'        WITH PASSWORD GET SECRET "{stored}"')
        elif flag:
            if raw:
                lines.append(head)
        else:
            lines.append(f"{head}{raw}{tail}")
    return "\n".join(lines)


def node_route_settings(
    site: Site, node: Node, credential_version: int = 1, password_secret: str | None = None
) -> list[dict[str, Any]]:
    """The node's routes' settings (as `route_settings` makes them), in link order;
    `password_secret`: the broker secret the routes read the password from (None: inline)."""
    return [
        {
            "name": route,
            "peer": peer.name,
            "peer_region": peer.region,
            "link_class": link_class,
            "broker_address": peer.address,
            "broker_port": peer.route_port,
            "client_id": client_id,
            "username": username_for_version(peer.username, credential_version),
            "message_validity_sec": validity,
            "use_tls": peer.route_tls,
            "password_secret": password_secret,
        }
        for peer, route, client_id, validity, link_class in site.link_rows(node)
    ]

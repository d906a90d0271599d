"""A broker's route code, read as what it means: the values of its CLUSTER_CONFIG keys.

The code a broker republishes (`$SYS/Coreflux/Routes/<Name>`) is whatever text the route
was added with: lotdeploy's canonical layout, or a hand-written route with its keys in
another order, `1883` or `'1883'`, `USE_TLS "true"` or no USE_TLS at all. Two uses need its
meaning rather than its bytes:

* the refresh (lotdeploy.apply.drift) compares a live route with what lotdeploy recorded:
  `comparable_code` and `comparable_attrs` give one text for both, the password masked, so
  a route is "changed" only when a value is, never for its layout;
* audit and import (lotdeploy.adopt) read every hand-made route: `read_route` gives its
  values (the password as a Secret, never shown).

Code that is not one MQTT_CLUSTER route with one CLUSTER_CONFIG block is compared as
normalised text (comments stripped, lines trimmed), the password masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.errors import LotSyntaxError
from lotdeploy.lot import normalize
from lotdeploy.lot.ast import Bool, EnvRef, Int, Route, SecretRef, Str, Value
from lotdeploy.protocol import CLUSTER_CONFIG_BLOCK, CLUSTER_KEY_ORDER, ROUTE_TYPE
from lotdeploy.secret import SENSITIVE, Secret

_PASSWORD = re.compile(r'(WITH\s+PASSWORD\s+)"[^"]*"')
#: Route attribute (lotdeploy.plan.desired.DesiredRoute) of each CLUSTER_CONFIG key.
ATTRIBUTE_OF = {
    "BROKER_ADDRESS": "broker_address",
    "BROKER_PORT": "broker_port",
    "CLIENT_ID": "client_id",
    "USERNAME": "username",
    "MESSAGE_VALIDITY_SEC": "message_validity_sec",
    "USE_TLS": "use_tls",
}


@dataclass(frozen=True)
class RouteCode:
    """One MQTT_CLUSTER route's values, as a broker runs it. A key the code does not set is
    None (`use_tls` False: USE_TLS absent means off). The password is a Secret, or the name
    of a broker secret (`GET SECRET`), never shown."""

    name: str
    broker_address: str | None = None
    broker_port: int | None = None
    client_id: str | None = None
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    password_secret: str | None = None
    message_validity_sec: int | None = None
    use_tls: bool = False
    #: keys set another way than lotdeploy would read them (GET ENV, a word for a number)
    odd: tuple[str, ...] = ()


def read_route(code: str, name: str = "") -> RouteCode | None:
    """The values of a route's code; None unless it is one MQTT_CLUSTER route."""
    from lotdeploy.lot.parser import parse  # loads lark: only where code is read

    try:
        routes = parse(code, f"route {name}" if name else "<route code>")
    except LotSyntaxError:
        return None
    if len(routes) != 1:
        return None
    return from_tree(routes[0])


def from_tree(route: Route) -> RouteCode | None:
    """`read_route` on a parsed route."""
    if route.type != ROUTE_TYPE:
        return None
    blocks = [b for b in route.blocks if b.kind == CLUSTER_CONFIG_BLOCK]
    if len(blocks) != 1:
        return None
    values: dict[str, Any] = {}
    odd: list[str] = []
    password: Secret | None = None
    secret_name: str | None = None
    for setting in blocks[0].settings:
        key, value = setting.key, setting.value
        if key == "PASSWORD":
            if isinstance(value, Str):
                password = Secret(value.value)
            elif isinstance(value, SecretRef):
                secret_name = value.name
            else:
                odd.append(key)
            continue
        attribute = ATTRIBUTE_OF.get(key)
        if attribute is None:
            odd.append(key)
            continue
        read = _plain(value, attribute)
        if read is None:
            odd.append(key)
        else:
            values[attribute] = read
    return RouteCode(
        route.name,
        password=password,
        password_secret=secret_name,
        odd=tuple(odd),
        **values,
    )


def _plain(value: Value, attribute: str) -> Any:
    """A value as the attribute's type (None: not readable as one)."""
    if isinstance(value, EnvRef | SecretRef):
        return None
    if attribute in ("broker_port", "message_validity_sec"):
        if isinstance(value, Int):
            return value.value
        if isinstance(value, Str) and value.value.isdigit():
            return int(value.value)
        return None
    if attribute == "use_tls":
        if isinstance(value, Bool):
            return value.value
        if isinstance(value, Str) and value.value.lower() in ("true", "false"):
            return value.value.lower() == "true"
        return None
    if isinstance(value, Str):
        return value.value
    return None


def _text(name: str, values: Mapping[str, Any], password: str | None) -> str:
    """The one comparable form: the name, then each key that is set, in the protocol's
    order, with its value as lotdeploy writes it; USE_TLS only when on."""
    lines = [f"DEFINE ROUTE {name} WITH TYPE {ROUTE_TYPE}", f"ADD {CLUSTER_CONFIG_BLOCK}"]
    for key in CLUSTER_KEY_ORDER:
        if key == "PASSWORD":
            if password is not None:
                lines.append(f"WITH PASSWORD {password}")
            continue
        value = values.get(ATTRIBUTE_OF.get(key, ""))
        if value is None or (key == "USE_TLS" and value is False):
            continue
        if isinstance(value, bool):
            lines.append(f"WITH {key} {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"WITH {key} '{value}'")
        else:
            lines.append(f'WITH {key} "{value}"')
    return "\n".join(lines)


def comparable_code(code: str) -> str:
    """A live route's code in the comparable form, the password masked."""
    route = read_route(code)
    if route is None or route.odd:
        return _PASSWORD.sub(lambda m: f'{m.group(1)}"{SENSITIVE}"', normalize(code))
    values = {attr: getattr(route, attr) for attr in ATTRIBUTE_OF.values()}
    if route.password is not None:
        password: str | None = f'"{SENSITIVE}"'
    elif route.password_secret is not None:
        password = f'GET SECRET "{route.password_secret}"'
    else:
        password = None
    return _text(route.name, values, password)


def comparable_attrs(attrs: Mapping[str, Any]) -> str:
    """What `comparable_code` gives for the route lotdeploy recorded with `attrs` (which
    carries a literal password, or reads the broker secret `password_secret` names: then
    the code holds `GET SECRET "<name>"`; an attribute it lacks is a key the route does
    not set)."""
    secret = attrs.get("password_secret")
    password = f'GET SECRET "{secret}"' if secret else f'"{SENSITIVE}"'
    return _text(str(attrs["name"]), attrs, password)

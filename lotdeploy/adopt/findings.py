"""What is wrong with a cluster as it runs: `lotdeploy audit`'s findings (pure).

Each finding is one line naming its node (and route, where one is concerned) and a `kind`
(stable, for `--json` and scripts):

=======================  =================================================================
kind                     what
=======================  =================================================================
peer-missing             two nodes with no route either way (not a full mesh)
one-way                  a route from A to B, none back from B to A
duplicate-route          two routes from one node to one peer: every message twice
duplicate-client-id      one CLIENT_ID on two routes (on one node or two)
not-member               a route to an address no node of the cluster has
plain-text               a route without USE_TLS: messages and the password in clear
mixed-credentials        a route logging in otherwise than most routes do
validity-asymmetric      MESSAGE_VALIDITY_SEC differs between a link's two directions
validity-unset           a route without MESSAGE_VALIDITY_SEC (the broker's default: UNKNOWN)
not-connected            a route to a member that is not Connected (the broker's last error)
sys-readable             a broker lets non-admins read route code, passwords included
weak-password            a route's password is printed in the vendor's docs, or short
unreadable-route         a route whose code could not be read as one MQTT_CLUSTER route
=======================  =================================================================

A route to an address that is no member gets only its `not-member` line (it goes); a
route whose code cannot be read only `unreadable-route`. Nothing here ever holds or shows a
password: credentials are compared as Secrets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.adopt.survey import Credential, LiveRoute, Member, Survey
from lotdeploy.protocol import DOCUMENTED_PASSWORDS
from lotdeploy.secret import Secret

#: Shorter passwords are reported as weak (lotdeploy generates 32 characters).
MIN_PASSWORD_LENGTH = 16

KINDS = (
    "peer-missing",
    "one-way",
    "duplicate-route",
    "duplicate-client-id",
    "not-member",
    "plain-text",
    "mixed-credentials",
    "validity-asymmetric",
    "validity-unset",
    "not-connected",
    "sys-readable",
    "weak-password",
    "unreadable-route",
)


@dataclass(frozen=True, order=True)
class Finding:
    node: str
    route: str
    kind: str
    text: str
    #: every node it concerns (`node` first)
    nodes: tuple[str, ...] = field(default=(), compare=False)

    def line(self) -> str:
        where = f"node {self.node}" + (f" route {self.route}" if self.route else "")
        return f"{where}: {self.kind}: {self.text}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "node": self.node,
            "route": self.route or None,
            "nodes": list(self.nodes or (self.node,)),
            "text": self.text,
        }


@dataclass
class ClusterView:
    """The surveyed routes sorted out: which member each goes to, and the credential the
    cluster mostly uses (import takes it as the cluster's)."""

    survey: Survey
    #: (node, peer) -> the routes from node to peer, by name
    links: dict[tuple[str, str], list[LiveRoute]] = field(default_factory=dict)
    #: routes to no member (or to their own node)
    strays: list[LiveRoute] = field(default_factory=list)
    unreadable: list[LiveRoute] = field(default_factory=list)
    credential: Credential | None = None

    @property
    def member_routes(self) -> list[LiveRoute]:
        return [r for routes in self.links.values() for r in routes]

    def target(self, route: LiveRoute) -> Member | None:
        return self.survey.member_at(route.code.broker_address if route.code else None)


def view(found: Survey) -> ClusterView:
    out = ClusterView(found)
    for node in sorted(found.nodes):
        for route in sorted(found.nodes[node].routes, key=lambda r: r.name):
            if route.code is None:
                out.unreadable.append(route)
                continue
            target = out.target(route)
            if target is None or target.name == node:
                out.strays.append(route)
                continue
            out.links.setdefault((node, target.name), []).append(route)
    counts = Counter(c for c in (credential_of(r) for r in out.member_routes) if c is not None)
    if counts:
        # most used; ties: the user name, then the order routes were seen in
        out.credential = max(counts, key=lambda c: (counts[c], c.username == "cluster"))
    return out


def credential_of(route: LiveRoute) -> Credential | None:
    code = route.code
    if code is None or code.username is None or code.password is None:
        return None
    return Credential(code.username, code.password)


def weakness(password: Secret) -> str | None:
    """Why a password is weak (never the password), or None."""
    value = password.reveal()
    if value in DOCUMENTED_PASSWORDS:
        return "a password printed in the vendor's documentation (anyone may try it)"
    if len(value) < MIN_PASSWORD_LENGTH:
        return f"a password shorter than {MIN_PASSWORD_LENGTH} characters"
    return None


def audit(found: Survey) -> list[Finding]:
    """Every finding about the surveyed cluster, sorted by node, route and kind."""
    seen = view(found)
    out: list[Finding] = []
    out += _strays(seen)
    out += _mesh(seen)
    out += _client_ids(seen)
    out += _per_route(seen)
    out += _validity(seen)
    for node, surveyed in sorted(found.nodes.items()):
        if surveyed.sys_readers:
            who = ", ".join(sorted(set(surveyed.sys_readers)))
            out.append(
                Finding(
                    node,
                    "",
                    "sys-readable",
                    f"not only the admin may read $SYS/Coreflux/Routes here ({who} did): "
                    "every route's code, and the password in it, is theirs to read",
                )
            )
    return sorted(out)


def _where(seen: ClusterView, route: LiveRoute) -> str:
    code = route.code
    assert code is not None
    target = seen.target(route)
    place = f"{code.broker_address}:{code.broker_port}"
    return f"{target.name} ({place})" if target is not None else place


def _strays(seen: ClusterView) -> Iterable[Finding]:
    for route in seen.unreadable:
        yield Finding(
            route.node,
            route.name,
            "unreadable-route",
            "its code could not be read as one MQTT_CLUSTER route (not audited)",
        )
    for route in seen.strays:
        code = route.code
        assert code is not None
        target = seen.target(route)
        where = f"{code.broker_address}:{code.broker_port}"
        why = (
            "points at its own node"
            if target is not None
            else f"goes to {where}, which is no node of the cluster"
        )
        state = f" ({route.connection})" if route.connection else ""
        yield Finding(route.node, route.name, "not-member", why + state)


def _mesh(seen: ClusterView) -> Iterable[Finding]:
    names = sorted(seen.survey.nodes)
    unread = set(seen.survey.errors)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if a in unread or b in unread:
                continue
            ab, ba = seen.links.get((a, b), []), seen.links.get((b, a), [])
            if not ab and not ba:
                yield Finding(a, "", "peer-missing", f"no route to {b}, nor from {b} back", (a, b))
            elif not ba:
                yield Finding(
                    b, "", "one-way", f"no route to {a}, though {a} has one ({ab[0].name})", (b, a)
                )
            elif not ab:
                yield Finding(
                    a, "", "one-way", f"no route to {b}, though {b} has one ({ba[0].name})", (a, b)
                )
    for (node, peer), routes in sorted(seen.links.items()):
        if len(routes) > 1:
            yield Finding(
                node,
                routes[0].name,
                "duplicate-route",
                f"{' and '.join(r.name for r in routes)} {_all(len(routes))} go to {peer}: its "
                f"subscribers get every message {len(routes)} times",
                (node, peer),
            )


def _all(count: int) -> str:
    return "both" if count == 2 else "all"


def _client_ids(seen: ClusterView) -> Iterable[Finding]:
    holders: dict[str, list[LiveRoute]] = {}
    for route in [*seen.member_routes, *seen.strays]:
        if route.code is not None and route.code.client_id:
            holders.setdefault(route.code.client_id, []).append(route)
    for client_id, routes in sorted(holders.items()):
        if len(routes) < 2:
            continue
        first, *rest = sorted(routes, key=lambda r: (r.node, r.name))
        others = ", ".join(f"node {r.node} route {r.name}" for r in rest)
        yield Finding(
            first.node,
            first.name,
            "duplicate-client-id",
            f"client id {client_id} is also that of {others} (a broker takes one session "
            "per client id: links to one broker knock each other off)",
            tuple(dict.fromkeys(r.node for r in (first, *rest))),
        )


def _per_route(seen: ClusterView) -> Iterable[Finding]:
    usual = seen.credential
    for route in seen.member_routes:
        code = route.code
        assert code is not None
        where = _where(seen, route)
        if not code.use_tls:
            yield Finding(
                route.node,
                route.name,
                "plain-text",
                f"to {where} without USE_TLS: messages and the password travel in clear",
            )
        credential = credential_of(route)
        if usual is not None and credential != usual:
            if code.username is None:
                how = "logs in with no user name"
            elif code.password is None:
                how = f"logs in as {code.username} with a password it does not carry literally"
            elif code.username != usual.username:
                how = f"logs in as {code.username}"
            else:
                how = "logs in with another password"
            yield Finding(
                route.node,
                route.name,
                "mixed-credentials",
                f"{how}, where most routes log in as {usual.username} (one cluster "
                "credential for every link)",
            )
        if code.password is not None:
            weak = weakness(code.password)
            if weak:
                yield Finding(
                    route.node,
                    route.name,
                    "weak-password",
                    f"logs in as {code.username} with {weak}",
                )
        if code.message_validity_sec is None:
            yield Finding(
                route.node,
                route.name,
                "validity-unset",
                "no MESSAGE_VALIDITY_SEC: how long queued messages wait for the peer is the "
                "broker's default, which is not documented",
            )
        if route.connection not in (None, "Connected"):
            why = f": {route.last_error}" if route.last_error else ""
            yield Finding(
                route.node, route.name, "not-connected", f"to {where} is {route.connection}{why}"
            )


def _validity(seen: ClusterView) -> Iterable[Finding]:
    for (a, b), there in sorted(seen.links.items()):
        if a > b:
            continue
        back = seen.links.get((b, a), [])
        ours = {r.code.message_validity_sec for r in there if r.code} - {None}
        theirs = {r.code.message_validity_sec for r in back if r.code} - {None}
        if ours and theirs and ours != theirs:
            yield Finding(
                a,
                there[0].name,
                "validity-asymmetric",
                f"MESSAGE_VALIDITY_SEC {_seconds(ours)} to {b}, but {_seconds(theirs)} on "
                f"{b}'s route back ({back[0].name}): one link, two ideas of how long a message "
                "may wait",
                (a, b),
            )


def _seconds(values: set[Any]) -> str:
    return "/".join(f"{v} s" for v in sorted(values))


def summary(findings: list[Finding], found: Survey) -> str:
    routes = sum(len(n.routes) for n in found.nodes.values())
    read = len(found.nodes) - len(found.errors)
    head = f"audit: {read} of {len(found.nodes)} broker(s) read, {routes} MQTT_CLUSTER route(s)"
    if not findings:
        return head + "; no findings"
    kinds = Counter(f.kind for f in findings)
    return (
        head
        + f"; {len(findings)} finding(s): "
        + ", ".join(f"{kinds[k]} {k}" for k in KINDS if kinds[k])
    )

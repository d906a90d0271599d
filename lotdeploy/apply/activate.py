"""The broker's side of apply: the cluster users, then the routes, through the command channel.

Reached through the node's transport: a forwarded local port to the broker's admin
address on the node (its loopback, by default), so the admin session never crosses the
network in clear. The admin password comes by reference (a file beside the site, or an
environment variable) and lives only in a Secret.

Order, on every node (docs/coreflux-interface.md §2, §4): the cluster users a peer logs in
with exist on every *target* broker before any route that uses them (the engine runs users
on all nodes first); then each route is removed (not found is fine) and added, one at a
time; only routes lotdeploy owns (lotdeploy.ownership) are ever touched; `-removeAllRoutes`
is never sent.
Every reply is checked: a broker that refuses a route fails that node with the broker's own
message, line and column.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lotdeploy.broker.session import CommandFailed
from lotdeploy.broker.sync import SyncBrokerClient
from lotdeploy.doctor import Readd
from lotdeploy.errors import BrokerError
from lotdeploy.lot import format_route, parse
from lotdeploy.model import Node, Site
from lotdeploy.node.session import NodeSession, open_admin
from lotdeploy.node.session import admin_password as admin_password  # re-exported
from lotdeploy.ownership import PREFIX_ONLY_NODE
from lotdeploy.secret import Secret
from lotdeploy.transport.base import Transport


@contextlib.contextmanager
def admin_session(
    site: Site, node: Node, transport: Transport, password: Secret | None = None
) -> Iterator[SyncBrokerClient]:
    """An admin session on the node's broker, through a port forwarded over `transport`.
    Over a run's NodeSession, the session it keeps open for every phase (one per node)."""
    if isinstance(transport, NodeSession):
        with transport.admin(password) as kept:
            yield kept
        return
    with open_admin(site, node, transport, password) as client:
        yield client


def route_texts(route_file: str) -> dict[str, str]:
    """Each route of a node's (verified) route file as the canonical LOT sent to a broker."""
    return {route.name: format_route(route) for route in parse(route_file, "routes.lot")}


def ensure_users(client: SyncBrokerClient, users: dict[str, Secret]) -> list[str]:
    """Create each user, or set its password when it exists already; the names handled
    (all sent at once to a broker that echoes requestIds: BrokerClient.ensure_users)."""
    done: list[str] = client.ensure_users(users)
    return done


def set_secrets(client: SyncBrokerClient, secrets: dict[str, Secret]) -> list[str]:
    """Set the broker secrets routes read their password from (`-setSecret`, all sent at
    once where the broker echoes requestIds); the names set. Values stay in their Secret."""
    done: list[str] = client.set_secrets(secrets)
    return done


def remove_users(client: SyncBrokerClient, names: list[str]) -> list[str]:
    removed: list[str] = client.remove_users(names)
    return removed


#: How often apply lists a broker's routes while it waits for the ones it added to be
#: Connected: soon at first, then every 0.5 s. The routes' status topics usually say so
#: first (a change is seen as it happens); the listings are what a broker that publishes
#: no status is seen by, and what says a route is not on the broker at all.
CONNECTED_POLLS = (0.05, 0.1, 0.2, 0.3)
CONNECTED_POLL = 0.5
#: ... while an old route waits to be removed beside its replacement: every moment both run,
#: each message goes twice (docs/adopt.md), so the new one is asked after more often.
REPLACE_POLL = 0.05


def wait_connected(
    client: SyncBrokerClient, node: str, names: list[str], timeout: float, poll: float = 0.0
) -> str:
    """Wait (bounded by `timeout`) until the broker reports every route in `names`
    Connected; raise naming those that are not, with the broker's last error for each.

    A route is seen Connected when its status topic says so or a listing does
    (`BrokerClient.await_connected`), so a link that comes up is seen as it happens.
    What it returns says what was seen (for the event). A broker whose listing reports no
    connection state (1.x text replies) cannot be waited for: that is said, not assumed."""
    started = time.monotonic()
    pauses = (poll,) if poll else CONNECTED_POLLS
    seen = client.call(lambda c: c.await_connected(names, timeout, pauses, poll or CONNECTED_POLL))
    if seen.stateless:
        return "this broker reports no connection state: not waited for"
    waiting = seen.waiting()
    if not waiting:
        return f"{len(names)} route(s) Connected after {time.monotonic() - started:.1f}s"
    details = []
    for name in waiting[:5]:
        last = None
        if name in seen.listed:
            with contextlib.suppress(CommandFailed):
                last = client.check_route_connection(name).get("lastError")
        state = seen.states[name] or "not on the broker"
        details.append(f"{name} ({state}{f': {last}' if last else ''})")
    more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
    raise BrokerError(
        node,
        f"{len(waiting)} route(s) not Connected {timeout:g} s after they were added: "
        + ", ".join(details)
        + more
        + " (`lotdeploy status` shows them; --connect-timeout waits longer)",
    )


def apply_routes(
    client: SyncBrokerClient,
    node: str,
    remove: list[str],
    add: dict[str, str],
    remove_before_add: bool = True,
    owns: Callable[[str], bool] = PREFIX_ONLY_NODE,
    replacing: Mapping[str, str] | None = None,
    connect_wait: float = 0.0,
    learn: bool = False,
) -> Readd:
    """Remove, then add. Only routes lotdeploy owns are touched (`owns`: `Site.ownership`
    for the node, lotdeploy.ownership). The removals are sent together, then the adds
    together (one round trip each with a broker that echoes requestIds; one command at a
    time otherwise).

    With `remove_before_add`, a route is removed before it is added again only where it
    exists: as the `-listRoutes` the session sent on connect showed (no extra round trip).
    Without it (a broker that replaces a route re-added under its name, or one not known
    yet) a changed route is added in place. Either way, an add refused because the route
    already exists (the listing missed it, or the broker refuses a re-add) is removed and
    added again, all such together. A fresh node thus gets one command per route.

    Returns what a re-add did here, where a listed route was added in place: "overwrite"
    (accepted), "reject" (refused), else "unknown": how apply learns it from its first
    change instead of asking with a scratch route. With `learn` (the broker's re-add is not
    known), a listed route's in-place add refused in any words is removed and added again,
    as a remove-first would have done; a broker known to overwrite keeps a route whose
    re-add it refused for another reason, and the refusal is this node's error.

    `replacing` (new name -> old name, the same peer: a take-over's renaming): the new
    route goes first and, with `connect_wait`, is waited for Connected before the old one
    is removed, so the link is never down (the old one stays when the new one does not
    connect); messages published in between go over both (docs/adopt.md).
    """
    for name in [*remove, *add]:
        if not owns(name):
            raise BrokerError(node, f"refusing to touch route {name}: lotdeploy does not own it")
    first = {new: old for new, old in (replacing or {}).items() if new in add and old in remove}
    learned: Readd = "unknown"
    if first:
        learned = apply_routes(
            client, node, [], {n: add[n] for n in first}, remove_before_add, owns, learn=learn
        )
        if connect_wait > 0:
            wait_connected(client, node, sorted(first), connect_wait, REPLACE_POLL)
        add = {name: text for name, text in add.items() if name not in first}
    listed = client.listed_at_connect()
    present = None if listed is None else {str(r.get("name")) for r in listed if r.get("name")}
    # removals first (all at once), then the adds (all at once): a route is never added
    # before its own removal is done, whatever order the broker answers a batch in
    removing = list(remove)
    if remove_before_add:
        removing += [n for n in add if n not in remove and (present is None or n in present)]
    if removing:
        client.remove_routes(removing)
    in_place = [n for n in add if n not in removing and present is not None and n in present]
    results: dict[str, Any] = client.add_routes(add) if add else {}
    existing: list[str] = []  # refused because they are there: removed, then added again
    errors: list[BrokerError] = []
    for name, result in results.items():
        if not isinstance(result, BrokerError):
            continue
        refused_as_there = (
            isinstance(result, CommandFailed)
            and name not in removing
            and ("already exist" in result.reply.describe().lower() or (learn and name in in_place))
        )
        if refused_as_there:
            existing.append(name)
        else:
            errors.append(result)
    if existing:  # the others' errors wait until these are in again
        client.remove_routes(existing)
        for result in client.add_routes({name: add[name] for name in existing}).values():
            if isinstance(result, BrokerError):
                errors.append(result)
    if errors:
        raise errors[0]
    if any(name in existing for name in in_place):
        return "reject"
    if in_place:
        return "overwrite"
    return learned

"""Lab fixtures: brokers that already carry hand-written routes (`lab up --fixture NAME`).

Nobody starts with lotdeploy on an empty plant; `lotdeploy audit` and `lotdeploy import`
(docs/adopt.md) read clusters built by hand. A fixture plants such a cluster on the lab's
brokers, through each broker's command channel as an operator would type it: the cluster
users, then the route code (no lotdeploy route, no lotdeploy file on any node).

* `vendor-example`: the three-node cluster of the vendor's *System Routes* page, "Complete
  3-Node Cluster Setup": on node i a route `ClusterPeer<j>` to every peer j, client ids
  `Node<i>-to-Node<j>`, user `cluster` with the page's password, validity 30 s, plain text.
* `messy`: three nodes with every problem `lotdeploy audit` looks for, each planted once
  (`MESSY_PROBLEMS`), and nothing else wrong.

Every node of a fixture lab offers plain MQTT on its address (`plain-links`), as a
hand-made plain cluster does: peers' routes and clients come in there. The planting is
idempotent: each broker's routes are removed first, its users set as the fixture says.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lotdeploy import protocol
from lotdeploy.errors import LabError
from lotdeploy.lab.hosts import Layout
from lotdeploy.lab.labstate import LabState, Node
from lotdeploy.secret import Secret

if TYPE_CHECKING:
    from lotdeploy.broker.sync import SyncBrokerClient

#: The password the vendor's page types on every node (public: it is in the vendor's docs).
VENDOR_PASSWORD = "secure_cluster_pass"
#: A second, short password typed on one node of the messy cluster (public: a fixture).
OTHER_PASSWORD = "other_pass"
#: The last byte of the address a stray route of the messy cluster points at: inside the
#: lab's own network, where nothing listens.
STRAY_HOST = 99
#: How long planting waits for the routes that should connect.
CONNECT_WAIT = 20.0

#: Each problem the messy fixture plants, as `lotdeploy audit` names its kind.
MESSY_PROBLEMS = (
    "peer-missing",  # node2 and node3: no route either way
    "one-way",  # node1 -> node3 only
    "duplicate-route",  # node1: ClusterPeer2 and ClusterPeer2b both to node2
    "duplicate-client-id",  # Node1-to-Node3 on node1 (to node3) and node2 (to node1)
    "not-member",  # node3: OldPeer to an address no node has
    "plain-text",  # every link
    "mixed-credentials",  # node2's route logs in as cluster2 with another password
    "validity-asymmetric",  # node1 -> node2 30 s, node2 -> node1 60 s
    "validity-unset",  # node1 -> node3: no MESSAGE_VALIDITY_SEC
    "not-connected",  # node1 -> node3: node3 lacks the cluster user
    "sys-readable",  # node1's broker lets non-admins read $SYS (route code, passwords)
    "weak-password",  # the vendor's published password, and a short one
)


@dataclass(frozen=True)
class FixtureRoute:
    """One hand-written route: where it goes (a node index, or None: the stray address)."""

    name: str
    target: int | None
    client_id: str
    username: str
    password: str
    validity: int | None = 30
    #: another layout than the vendor's (keys reordered, a bare integer): hand-written
    shuffled: bool = False
    #: whether it should be Connected once planted
    connects: bool = True


@dataclass(frozen=True)
class NodeFixture:
    routes: tuple[FixtureRoute, ...] = ()
    users: tuple[tuple[str, str], ...] = ()  # (user, password) that exist on the broker
    #: extra dialect words of this node's broker (lab up --dialect)
    dialect: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fixture:
    name: str
    nodes: tuple[NodeFixture, ...]
    #: users a previous fixture may have left, removed where this one does not set them
    users_known: tuple[str, ...] = ("cluster", "cluster2")
    notes: tuple[str, ...] = field(default=())


def _vendor_example() -> Fixture:
    def node(i: int) -> NodeFixture:
        routes = tuple(
            FixtureRoute(f"ClusterPeer{j}", j, f"Node{i}-to-Node{j}", "cluster", VENDOR_PASSWORD)
            for j in (1, 2, 3)
            if j != i
        )
        return NodeFixture(routes, (("cluster", VENDOR_PASSWORD),))

    return Fixture("vendor-example", (node(1), node(2), node(3)))


def _messy() -> Fixture:
    vendor = ("cluster", VENDOR_PASSWORD)
    node1 = NodeFixture(
        (
            FixtureRoute("ClusterPeer2", 2, "Node1-to-Node2", *vendor),
            FixtureRoute("ClusterPeer2b", 2, "Node1-to-Node2b", *vendor),
            FixtureRoute(
                "ClusterPeer3", 3, "Node1-to-Node3", *vendor, validity=None, connects=False
            ),
        ),
        (vendor, ("cluster2", OTHER_PASSWORD)),
        ("sys-open",),
    )
    node2 = NodeFixture(
        (
            FixtureRoute(
                "ClusterPeer1",
                1,
                "Node1-to-Node3",
                "cluster2",
                OTHER_PASSWORD,
                validity=60,
                shuffled=True,
            ),
        ),
        (vendor,),
    )
    node3 = NodeFixture(
        (FixtureRoute("OldPeer", None, "Node3-to-Old", *vendor, connects=False),),
        (),
    )
    return Fixture("messy", (node1, node2, node3))


FIXTURES: dict[str, Callable[[], Fixture]] = {
    "vendor-example": _vendor_example,
    "messy": _messy,
}


def fixture(name: str) -> Fixture:
    try:
        return FIXTURES[name]()
    except KeyError:
        raise LabError(f"no fixture {name!r} (choose from {', '.join(FIXTURES)})") from None


def fixture_dialects(name: str, nodes: list[str]) -> dict[str, list[str]]:
    """Dialect words per node a fixture needs (every node: `plain-links`)."""
    found = fixture(name)
    if len(nodes) != len(found.nodes):
        raise LabError(
            f"fixture {name} is a {len(found.nodes)}-node cluster: use `lab up --nodes "
            f"{len(found.nodes)} --fixture {name}` (this lab has {len(nodes)} nodes)"
        )
    return {
        node: ["plain-links", *spec.dialect] for node, spec in zip(nodes, found.nodes, strict=True)
    }


def peer_port(state: LabState, node: Node) -> int:
    """The plain port peers and clients reach `node` on: 1883 on its address in root mode,
    its proxied admin port in user mode."""
    return protocol.DEFAULT_PORT if state.mode == "root" else node.admin_port


def stray_address(state: LabState) -> str:
    """An address in the lab's own network that no node has."""
    head, _, _ = state.nodes[0].address.rpartition(".")
    return f"{head}.{STRAY_HOST}"


def route_code(route: FixtureRoute, state: LabState) -> str:
    """The route as an operator types it: the vendor's layout, or a shuffled one."""
    if route.target is None:
        address, port = stray_address(state), protocol.DEFAULT_PORT
    else:
        target = state.nodes[route.target - 1]
        address, port = target.address, peer_port(state, target)
    lines = {
        "BROKER_ADDRESS": f'"{address}"',
        "BROKER_PORT": f"'{port}'" if not route.shuffled else str(port),
        "CLIENT_ID": f'"{route.client_id}"',
        "USERNAME": f'"{route.username}"',
        "PASSWORD": f'"{route.password}"',
        "MESSAGE_VALIDITY_SEC": None if route.validity is None else f"'{route.validity}'",
    }
    order = list(lines)
    if route.shuffled:
        order = ["CLIENT_ID", "MESSAGE_VALIDITY_SEC", "BROKER_PORT", "BROKER_ADDRESS"]
        order += ["PASSWORD", "USERNAME"]
    body = [f"        WITH {key} {lines[key]}" for key in order if lines[key] is not None]
    return "\n".join(
        [f"DEFINE ROUTE {route.name} WITH TYPE MQTT_CLUSTER", "    ADD CLUSTER_CONFIG", *body]
    )


def plant(layout: Layout, state: LabState, name: str, echo: Callable[[str], None]) -> None:
    """Put fixture `name` on the lab's brokers (idempotent) and wait until the routes that
    should connect are Connected (bounded)."""
    from lotdeploy.broker.session import CommandFailed
    from lotdeploy.broker.sync import SyncBrokerClient

    found = fixture(name)
    fixture_dialects(name, [n.name for n in state.nodes])  # the shape check
    password = Secret(layout.password_file.read_text().strip())
    clients: list[SyncBrokerClient] = []
    try:
        for node, spec in zip(state.nodes, found.nodes, strict=True):
            client = SyncBrokerClient(
                node.name,
                node.address,
                peer_port(state, node),
                protocol.DEFAULT_ADMIN_USER,
                password,
                request_ids="auto",
            )
            client.__enter__()
            clients.append(client)
            for route in client.list_routes():
                client.remove_route(str(route.get("name")))
            wanted = dict(spec.users)
            for user in found.users_known:  # a broker lists no users: remove, "not found" ok
                if user not in wanted:
                    with contextlib.suppress(CommandFailed):
                        client.remove_user(user)
            for user, secret in sorted(wanted.items()):
                try:
                    client.add_user(user, Secret(secret))
                except CommandFailed:  # it exists: give it the fixture's password
                    client.change_user_password(user, Secret(secret))
        for client, spec in zip(clients, found.nodes, strict=True):
            for route in spec.routes:
                client.add_route(route_code(route, state))
        _wait_connected(clients, found)
    finally:
        for client in clients:
            client.__exit__(None, None, None)
    routes = sum(len(n.routes) for n in found.nodes)
    echo(f"fixture {name}: {routes} hand-written routes on {len(found.nodes)} nodes")


def _wait_connected(clients: list[SyncBrokerClient], found: Fixture) -> None:
    deadline = time.monotonic() + CONNECT_WAIT
    while True:
        waiting = []
        for client, spec in zip(clients, found.nodes, strict=True):
            listed = {str(r.get("name")): r.get("connection") for r in client.list_routes()}
            waiting += [
                r.name for r in spec.routes if r.connects and listed.get(r.name) != "Connected"
            ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise LabError(f"fixture {found.name}: routes not Connected: {', '.join(waiting)}")
        time.sleep(0.2)

"""The gates a rollout runs after each wave.

A gate is any `Gate`: given the nodes applied so far and the nodes to leave out (failed
within the budget, or never deployed), it says whether the nodes and their links work. The
rollout core (lotdeploy.rollout.run) only calls it, so it is tested without a network.

`verify_gate` runs `lotdeploy verify` (lotdeploy.verify.run_verify) on the nodes when that
module is there. `route_gate` is the minimal gate of this module, used until then and kept
as the fallback: on every applied node and every deployed peer, the routes between them are
`Connected` on the broker (polled until the gate's timeout), then one QoS 1 message
published on each applied node's broker arrives on each of its peers and one from each peer
arrives on it. REPLACE by verify_gate once lotdeploy.verify lands everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.apply import activate
from lotdeploy.broker.mqtt import Message, MqttConnection
from lotdeploy.errors import LotdeployError
from lotdeploy.model import Site
from lotdeploy.secret import scrub
from lotdeploy.sitefacts import applied_names
from lotdeploy.state import StateStore
from lotdeploy.transport.base import Transport, TransportFactory
from lotdeploy.workspace import Workspace

#: How often the route gate lists a node's routes while it waits for them.
_ROUTE_POLL = 0.5


@dataclass(frozen=True)
class GateProblem:
    """One failed check: a node (`subject` of one name) or a link (source, target)."""

    subject: tuple[str, ...]
    reason: str

    def describe(self) -> str:
        return f"{' → '.join(self.subject)}: {self.reason}"


@dataclass
class GateResult:
    ok: bool
    problems: list[GateProblem] = field(default_factory=list)
    seconds: float = 0.0
    checked: int = 0  # how many nodes and links were checked

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "seconds": round(self.seconds, 3),
            "problems": [
                {"subject": list(p.subject), "reason": scrub(p.reason)} for p in self.problems
            ],
        }


#: (nodes applied so far, nodes to leave out) -> result
Gate = Callable[[frozenset[str], frozenset[str]], GateResult]


def deployed_nodes(site: Site, workspace: Workspace) -> set[str]:
    """Nodes that run a release of this site (their links are expected to work)."""
    state = StateStore(workspace).read()
    return {n.name for n in site.nodes if state.nodes.get(n.name) and state.nodes[n.name].release}


def gate_links(site: Site, nodes: frozenset[str], others: set[str]) -> list[tuple[str, str]]:
    """Every link (source, target) with one end in `nodes` and the other in nodes | others."""
    scope = set(nodes) | others
    return sorted((a, b) for a in scope for b in scope if a != b and (a in nodes or b in nodes))


def route_gate(
    site: Site,
    workspace: Workspace,
    transports: TransportFactory,
    timeout: float = 30.0,
    parallelism: int = 10,
    messages: bool = True,
) -> Gate:
    """The minimal gate (see the module doc): route status, then one message per link."""

    def gate(nodes: frozenset[str], ignore: frozenset[str]) -> GateResult:
        started = time.monotonic()
        others = deployed_nodes(site, workspace) - set(ignore) - set(nodes)
        links = gate_links(site, nodes, others)
        subjects = sorted({a for a, _ in links} | set(nodes))
        expect: dict[str, set[str]] = {s: set() for s in subjects}
        for a, b in links:
            expect[a].add(b)
        problems: list[GateProblem] = []
        opened: dict[str, Transport] = {}

        def check(name: str) -> list[GateProblem]:
            try:
                transport = transports(site.node(name))
                transport.connect()
                opened[name] = transport
                return _routes_connected(
                    site, workspace, name, transport, expect[name], started + timeout
                )
            except (LotdeployError, OSError) as exc:
                return [GateProblem((name,), scrub(str(exc)))]

        try:
            with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(subjects)))) as pool:
                for found in pool.map(check, subjects):
                    problems += found
            bad_nodes = {p.subject[0] for p in problems if len(p.subject) == 1}
            bad_links = {p.subject for p in problems if len(p.subject) == 2}
            crossing = [
                (a, b)
                for a, b in links
                if a not in bad_nodes and b not in bad_nodes and (a, b) not in bad_links
            ]
            if messages and crossing:
                problems += _messages_cross(site, opened, crossing, timeout=10.0)
        finally:
            for transport in opened.values():
                with contextlib.suppress(LotdeployError, OSError):
                    transport.close()
        return GateResult(
            not problems, problems, time.monotonic() - started, len(subjects) + len(links)
        )

    return gate


def _routes_connected(
    site: Site,
    workspace: Workspace,
    name: str,
    transport: Transport,
    peers: set[str],
    deadline: float,
) -> list[GateProblem]:
    """Wait until the node's routes to `peers` are all Connected or the deadline passes
    (`BrokerClient.await_connected`: their status as it changes, a listing every
    `_ROUTE_POLL` seconds)."""
    node = site.node(name)
    applied = applied_names(StateStore(workspace).read())  # a rename may be under way
    want = {
        applied.get((name, link.target), link.route_name): link.target
        for link in site.links_from(name)
        if link.target in peers
    }
    with activate.admin_session(site, node, transport) as client:
        seen = client.call(
            lambda c: c.await_connected(
                sorted(want), max(deadline - time.monotonic(), 0.0), (), _ROUTE_POLL
            )
        )
    problems = []
    for route, peer in sorted(want.items()):
        state = seen.states[route]
        if route not in seen.listed:
            problems.append(GateProblem((name, peer), f"{name} has no route {route}"))
        elif not seen.stateless and state != "Connected":
            what = state or "without a connection state in the listing"
            problems.append(GateProblem((name, peer), f"{name}'s route {route} is {what}"))
    return problems


def _messages_cross(
    site: Site, opened: dict[str, Transport], links: list[tuple[str, str]], timeout: float
) -> list[GateProblem]:
    """One QoS 1 message per link, published on the source broker, must reach the target
    (not retained; topics under lotdeploy/gate/<run>/ so nothing else sees them)."""
    run = secrets.token_hex(4)
    names = sorted({a for a, _ in links} | {b for _, b in links})
    with contextlib.ExitStack() as stack:
        ports = {}
        for name in names:
            node = site.node(name)
            ports[name] = stack.enter_context(
                opened[name].forward(node.broker.admin_host, node.broker.admin_port)
            )

        async def exchange() -> dict[str, set[str]]:
            def conn(name: str, role: str) -> MqttConnection:
                node = site.node(name)
                return MqttConnection(
                    "127.0.0.1",
                    ports[name],
                    client_id=f"lotdeploy-gate-{role}-{run}-{name}"[:64],
                    username=node.broker.admin_user,
                    password=activate.admin_password(site, node),
                    connect_timeout=5,
                )

            subs = {n: conn(n, "s") for n in names}
            pubs = {n: conn(n, "p") for n in names}
            try:
                for c in [*subs.values(), *pubs.values()]:
                    await c.connect()
                for c in subs.values():
                    await c.subscribe([(f"lotdeploy/gate/{run}/#", 1)], 5)
                for name in sorted({a for a, _ in links}):
                    await pubs[name].publish(Message(f"lotdeploy/gate/{run}/{name}", b"gate", 1))
                got: dict[str, set[str]] = {n: set() for n in names}
                wanted = {(a, b) for a, b in links}
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    if all(a in got[b] for a, b in wanted):
                        break
                    await asyncio.sleep(0.05)
                    for name, sub in subs.items():
                        while not sub.messages.empty():
                            got[name].add(sub.messages.get_nowait().topic.rsplit("/", 1)[-1])
                return got
            finally:
                for c in [*subs.values(), *pubs.values()]:
                    with contextlib.suppress(Exception):
                        await c.close()

        try:
            got = asyncio.run(asyncio.wait_for(exchange(), timeout + 30))
        except (LotdeployError, OSError, TimeoutError) as exc:
            return [GateProblem((a, b), f"probe failed: {scrub(str(exc))}") for a, b in links]
    return [
        GateProblem((a, b), f"no message from {a} arrived on {b} in {timeout:.0f} s")
        for a, b in links
        if a not in got[b]
    ]


def verify_gate(
    site: Site,
    workspace: Workspace,
    transports: TransportFactory,
    timeout: float = 30.0,
    parallelism: int = 10,
) -> Gate:
    """The gate as `lotdeploy verify` on the nodes applied so far: their own checks and every
    link between them and the other deployed nodes (links to nodes left out are dropped).
    Routes need a moment to reconnect after a wave, so a failed verify is run again until
    `timeout`; the last result counts."""
    from lotdeploy.verify import VerifyOptions, run_verify

    options = VerifyOptions(parallelism=parallelism)

    def gate(nodes: frozenset[str], ignore: frozenset[str]) -> GateResult:
        started = time.monotonic()
        scope = set(nodes) | (deployed_nodes(site, workspace) - set(ignore))
        problems: list[GateProblem] = []
        checked = 0
        for _ in range(100):  # bounded: the deadline ends it long before
            result = run_verify(site, workspace, transports, nodes=nodes, options=options)
            problems, checked = [], 0
            for check in result.checks:
                pair = check.link
                if pair is not None and not set(pair) <= scope:
                    continue
                checked += 1
                if not check.ok:
                    subject = pair if pair is not None else (check.subject,)
                    why = f"{check.kind} {check.status}: {check.reason}".strip()
                    problems.append(GateProblem(subject, scrub(why)))
            if not problems or time.monotonic() - started > timeout:
                break
            time.sleep(1.0)
        return GateResult(not problems, problems, time.monotonic() - started, checked)

    return gate

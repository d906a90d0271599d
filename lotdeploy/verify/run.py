"""`run_verify`: prove that every node is what state says and every link carries messages.

Two phases, both concurrent and bounded:

1. per node (threads, up to `parallelism`): SSH (the transport connects); the release
   `current` points at, and the digests of its files and of the TLS files, against state;
   a TLS handshake with the broker's TLS port (reached from the node, through a forwarded
   port) verifying the site's trusted CAs and every SAN the node should have; the broker's
   routes (`-listRoutes`, and `-checkRouteConnection` for any not Connected, for its last
   error) against the site's; and the probe user (created or re-keyed through the command
   channel with the workspace's `verify-probe-password`). The port forwarded to the
   broker's admin address stays open for phase 2.
2. the probes (`lotdeploy.verify.probe`), all links at once on one event loop.

Then every link gets two checks, `route` (the source's route to the target: present,
Connected, not Red) and `link` (the probes), and the result is pure data (`result.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from lotdeploy.apply.engine import TransportFactory
from lotdeploy.apply.events import Event, Reporter, silent
from lotdeploy.broker.monitoring import READ_TIMEOUT, read_cluster_topics
from lotdeploy.errors import BrokerError, LotdeployError
from lotdeploy.model import Link, Node, Site
from lotdeploy.node import facts, release
from lotdeploy.node.session import admin_on_port
from lotdeploy.protocol import named_rights, parse_route_status
from lotdeploy.render import ROUTE_FILE
from lotdeploy.secret import Secret, scrub
from lotdeploy.sitefacts import applied_names
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.transport.base import Transport
from lotdeploy.verify.advice import load_advice, validity_advice
from lotdeploy.verify.failover import ExerciseContext
from lotdeploy.verify.probe import Endpoint, ProbeOutcome, ProbeRun, topic_root
from lotdeploy.verify.result import Check, NodeInfo, VerifyResult, link_subject
from lotdeploy.workspace import Workspace

#: The workspace secret the probe user's password is kept under.
PROBE_SECRET = "verify-probe-password"
DEFAULT_PROBE_USER = "lotdeploy_probe"
DEFAULT_TOPIC_PREFIX = "lotdeploy/probe/"
#: How long the one command asking whether a node's connection still works may take.
LIVENESS_TIMEOUT = 5.0


@dataclass(frozen=True)
class VerifyOptions:
    #: seconds a probe may take to arrive (also the bound of each connect and handshake)
    timeout: float = 5.0
    #: probes per source node (each is one probe of every link out of it)
    probes: int = 5
    #: seconds between a source's probes
    interval: float = 0.02
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    probe_user: str = DEFAULT_PROBE_USER
    parallelism: int = 10
    #: seconds a route may need to reconnect, for the message-validity advice (advice.py)
    reconnect_allowance: float = 5.0
    #: exercises run after the probes, on the same endpoints (`verify --failover`, `--load`)
    exercises: tuple[Exercise, ...] = ()


#: An exercise beyond the probes: gets the run's endpoints and probe user, gives checks.
Exercise = Callable[[ExerciseContext], Awaitable[list[Check]]]


@dataclass
class _Visit:
    """What phase 1 learned about one node."""

    node: str
    checks: list[Check] = field(default_factory=list)
    reachable: bool = False
    endpoint: Endpoint | None = None
    probe_error: str | None = None
    #: the node is fine as far as anyone can tell, verify just cannot probe it (no probe
    #: user on this broker): its links are inconclusive, not failed
    probe_unsupported: bool = False
    #: route name -> the broker's listing entry (+ "lastError" when it was asked)
    routes: dict[str, dict[str, Any]] | None = None
    #: the cluster monitoring topics the broker published (shown, never checked)
    monitoring: dict[str, str] = field(default_factory=dict)
    routes_error: str | None = None
    #: the node's transport and forwarded port, closed when the probes are done
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    #: the node's connection (None: it never connected)
    transport: Transport | None = None
    #: the broker's command channel connected, then its connection ended mid-check
    session_lost: bool = False

    def lost(self) -> bool:
        """Did the node's connection, or its broker session, drop while it was checked?
        The SSH connection is asked only when a check could not decide (one bounded
        command on the failure path, never on the good one)."""
        if self.session_lost:
            return True
        undecided = any(
            c.status == "inconclusive" and c.subject == self.node and c.kind != "link"
            for c in self.checks
        )
        if not (undecided and self.reachable and self.transport is not None):
            return False
        try:
            self.transport.run("true", timeout=LIVENESS_TIMEOUT)
        except (LotdeployError, OSError):
            return True
        return False


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def probe_password(workspace: Workspace) -> Secret:
    """The probe user's password: one workspace secret, made on first use (under the
    workspace lock, re-entrant, so a concurrent run's new secret is never lost)."""
    from lotdeploy.credentials import generate_password

    existing = workspace.secrets().get(PROBE_SECRET)
    if existing is not None:
        return existing
    with workspace.lock("verify: probe user password"):
        return workspace.secrets().get_or_create(PROBE_SECRET, generate_password)


def run_verify(
    site: Site,
    workspace: Workspace,
    transports: TransportFactory,
    *,
    nodes: frozenset[str] | None = None,
    options: VerifyOptions = VerifyOptions(),
    reporter: Reporter = silent,
) -> VerifyResult:
    """Verify `nodes` (None: all) and every link into or out of them."""
    started = time.monotonic()
    run_id = new_run_id()
    chosen = [n for n in site.nodes if nodes is None or n.name in nodes]
    result = VerifyResult(
        site=site.name,
        run_id=run_id,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        nodes={n.name: NodeInfo(n.name, n.region, n.address) for n in site.nodes},
        checked=[n.name for n in chosen],
        topic_prefix=options.topic_prefix,
        probes_per_link=options.probes,
        timeout=options.timeout,
        reconnect_allowance=options.reconnect_allowance,
    )
    state = StateStore(workspace).read()
    applied = applied_names(state)  # a link's route as applied (a rename may be under way)
    links = [
        replace(link, route_name=applied.get((link.source, link.target), link.route_name))
        for link in site.links
        if nodes is None or link.source in nodes or link.target in nodes
    ]
    # every node at either end of a probed link needs phase 1 (for its probe connection)
    involved = {n.name for n in chosen} | {x for k in links for x in (k.source, k.target)}
    password = probe_password(workspace) if links else None
    ca_bundle = (
        _trusted_cas(workspace) if any(n.tls for n in site.nodes if n.name in involved) else None
    )

    visits: dict[str, _Visit] = {}
    probes = (
        ProbeRun(
            [(k.source, k.target) for k in links],
            username=options.probe_user,
            password=password,
            prefix=options.topic_prefix,
            run_id=run_id,
            count=options.probes,
            interval=options.interval,
            timeout=options.timeout,
            connect_timeout=options.timeout,
        )
        if password is not None
        else None
    )
    visit = _visitor(
        site,
        {n.name for n in chosen},
        transports,
        state.nodes,
        password,
        ca_bundle,
        options,
        reporter,
    )
    validity = {(k.source, k.target): int(k.message_validity_sec) for k in site.links}

    async def exercises() -> list[Check]:
        """Each exercise in turn, on the endpoints phase 1 found (forwards still open)."""
        if not options.exercises or password is None:
            return []
        ctx = ExerciseContext(
            endpoints={n: v.endpoint for n, v in visits.items() if v.endpoint is not None},
            username=options.probe_user,
            password=password,
            root=topic_root(options.topic_prefix, run_id),
            run_id=run_id,
            timeout=options.timeout,
            reconnect_allowance=options.reconnect_allowance,
            validity=validity,
        )
        found: list[Check] = []
        for exercise in options.exercises:
            reporter(Event("*", "exercise", "start"))
            found += await exercise(ctx)
        return found

    async def everything() -> tuple[ProbeOutcome, list[Check]]:
        outcome = await _check_and_probe(
            [n for n in site.nodes if n.name in involved],
            visit,
            visits,
            probes,
            ca_bundle,
            options.parallelism,
            reporter,
        )
        return outcome, await exercises()

    try:
        outcome, extra = asyncio.run(everything())
    finally:
        _close_all(list(visits.values()), options.parallelism)
    for node in chosen:
        result.checks += visits[node.name].checks
        if visits[node.name].monitoring:
            result.monitoring[node.name] = visits[node.name].monitoring
    for link in links:
        source, target = visits[link.source], visits[link.target]
        result.checks.append(_route_check(link.source, link.target, link.route_name, source))
        result.checks.append(_link_check(link, source, target, outcome, options.timeout))
    result.checks += extra
    result.advice = validity_advice(result.checks, options.reconnect_allowance)
    result.advice += load_advice(result.checks, options.reconnect_allowance)
    result.seconds = time.monotonic() - started
    return result


def _trusted_cas(workspace: Workspace) -> bytes | None:
    try:
        from lotdeploy.pki.bundle import trusted_ca_bundle

        return trusted_ca_bundle(workspace) or None
    except LotdeployError:
        return None


# -- phase 1 -----------------------------------------------------------------------------


def _visitor(
    site: Site,
    own: set[str],
    transports: TransportFactory,
    records: dict[str, NodeRecord],
    password: Secret | None,
    ca_bundle: bytes | None,
    options: VerifyOptions,
    reporter: Reporter,
) -> Callable[[Node], _Visit]:
    """Phase 1 for one node (run in a worker thread)."""

    def attempt(node: Node) -> _Visit:
        visit = _Visit(node.name)
        try:
            _visit(
                site,
                node,
                node.name in own,
                transports,
                records,
                password,
                ca_bundle,
                options,
                visit.stack,
                visit,
            )
        except Exception as exc:  # a bug in one node's checks must not hide the others
            visit.checks.append(Check(node.name, "ssh", "inconclusive", scrub(f"internal: {exc}")))
        return visit

    def one(node: Node) -> _Visit:
        reporter(Event(node.name, "verify", "start"))
        began = time.monotonic()
        visit = attempt(node)
        if visit.lost():  # every check reads: once more, on a new connection, and said so
            visit.stack.close()
            visit = attempt(node)
            again = " (the first connection dropped mid-check: checked again)"
            visit.checks = [
                replace(c, reason=c.reason + again)
                if c.kind == "ssh" and c.subject == node.name
                else c
                for c in visit.checks
            ]
        seconds = time.monotonic() - began
        if all(c.ok for c in visit.checks):
            reporter(Event(node.name, "verify", "ok", seconds=seconds))
        else:
            reporter(Event(node.name, "verify", "fail", seconds=seconds))
        return visit

    return one


async def _check_and_probe(
    nodes: list[Node],
    visit: Callable[[Node], _Visit],
    visits: dict[str, _Visit],
    probes: ProbeRun | None,
    ca_bundle: bytes | None,
    parallelism: int,
    reporter: Reporter,
) -> ProbeOutcome:
    """Phase 1 on every node in threads; meanwhile each node's probe connection is tried
    directly (it usually works: the probe user is there from the last run), and opened
    properly once the node's phase 1 is done if that failed; then the probes."""
    loop = asyncio.get_running_loop()
    if probes is not None:
        for node in nodes:
            early = _endpoint(node, 0, ca_bundle)
            if early.fallback is not None:  # a direct path exists
                probes.open_early(early)
    if nodes:
        with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(nodes)))) as pool:
            for done in asyncio.as_completed([loop.run_in_executor(pool, visit, n) for n in nodes]):
                found = await done
                visits[found.node] = found
                if probes is not None and found.endpoint is not None:
                    probes.open(found.endpoint)
    if probes is None:
        return ProbeOutcome()
    reporter(Event("*", "probes", "start", f"{len(probes.links)} link(s)"))
    began = time.monotonic()
    outcome = await probes.finish()
    reporter(Event("*", "probes", "ok", seconds=time.monotonic() - began))
    return outcome


def _visit(
    site: Site,
    node: Node,
    own: bool,
    transports: TransportFactory,
    records: dict[str, NodeRecord],
    password: Secret | None,
    ca_bundle: bytes | None,
    options: VerifyOptions,
    stack: contextlib.ExitStack,
    visit: _Visit,
) -> None:
    name = node.name
    add = visit.checks.append if own else (lambda _c: None)
    transport: Transport | None = None
    try:
        transport = transports(node)
        transport.connect()
    except (LotdeployError, OSError) as exc:
        if transport is not None:
            _close_quietly(transport)
        why = _cause(name, exc)
        add(Check(name, "ssh", "fail", f"{name} is not reachable over SSH: {why}"))
        for kind in ("release", "tls", "routes") if node.tls else ("release", "routes"):
            add(Check(name, kind, "inconclusive", f"not checked: {name} is not reachable over SSH"))
        visit.probe_error = f"{name} is not reachable over SSH: {why}"
        visit.routes_error = visit.probe_error
        return
    stack.callback(_close_quietly, transport)
    visit.reachable = True
    visit.transport = transport
    add(Check(name, "ssh", "pass", f"SSH to {node.ssh.host}:{node.ssh.port} as {node.ssh.user}"))
    # the release and TLS checks run beside the broker's: each is a round trip or more
    with ThreadPoolExecutor(max_workers=2) as side:
        release_check = (
            side.submit(_release_check, node, transport, records.get(name)) if own else None
        )
        tls_check = (
            side.submit(_tls_check, node, transport, ca_bundle, options.timeout)
            if own and node.tls
            else None
        )
        routes_check = _broker_part(
            site, node, transport, records.get(name), password, ca_bundle, options, stack, visit
        )
        for future in (release_check, tls_check):
            if future is not None:
                add(future.result())
    add(routes_check)


def _broker_part(
    site: Site,
    node: Node,
    transport: Transport,
    record: NodeRecord | None,
    password: Secret | None,
    ca_bundle: bytes | None,
    options: VerifyOptions,
    stack: contextlib.ExitStack,
    visit: _Visit,
) -> Check:
    """The routes check, the routes' states for the link checks, and the probe user; the
    forwarded admin port stays open (in `stack`) for the probes."""
    name = node.name
    try:
        port = stack.enter_context(
            transport.forward(node.broker.admin_host, node.broker.admin_port)
        )
    except (LotdeployError, OSError) as exc:
        why = _cause(name, exc)
        visit.probe_error = visit.routes_error = f"cannot reach {name}'s broker: {why}"
        return Check(name, "routes", "inconclusive", visit.routes_error)
    try:
        # request ids "auto", as every admin session: the probe rides with the session's
        # SUBSCRIBE and brings the listing, and an echo seen lets commands go together
        with admin_on_port(site, node, port, connect_timeout=options.timeout) as client:
            listing = client.listed_at_connect()  # the -listRoutes sent on connect, if any

            async def at_once(raw: Any) -> tuple[Any, Any, Any]:
                # the routes (unless the connect's listing has them), the monitoring topics
                # (informational: never a reason to fail) and the probe user at once: one
                # wait, not three
                async def routes() -> Any:
                    if listing is not None:
                        return listing
                    try:
                        return await raw.list_routes()
                    except LotdeployError as exc:  # raised once the others are through
                        return exc

                async def topics() -> Any:
                    try:
                        return await read_cluster_topics(
                            raw, timeout=min(options.timeout, READ_TIMEOUT)
                        )
                    except LotdeployError:
                        return None

                async def probe_user() -> LotdeployError | None:
                    if password is None:
                        return None
                    try:
                        await _ensure_probe_user_async(
                            raw,
                            options.probe_user,
                            password,
                            named_rights(record.broker if record is not None else None),
                        )
                    except LotdeployError as exc:
                        return exc
                    return None

                found = await asyncio.gather(routes(), topics(), probe_user())
                return found[0], found[1], found[2]

            routes, monitoring, failed = client.call(at_once)
            if isinstance(routes, LotdeployError):
                raise routes
            listed = {str(r.get("name")): dict(r) for r in routes if r.get("name")}
            owns = site.ownership.of(name)
            for route_name, entry in listed.items():
                if owns(route_name) and entry.get("connection") not in (
                    "Connected",
                    None,
                ):
                    with contextlib.suppress(LotdeployError):
                        status = parse_route_status(client.check_route_connection(route_name))
                        if status.last_error:
                            entry["lastError"] = status.last_error
            visit.routes = listed
            if monitoring is not None:
                visit.monitoring = monitoring.to_json()
            if failed is not None:
                visit.session_lost = isinstance(failed, BrokerError) and failed.lost
                visit.probe_unsupported = True
                visit.probe_error = (
                    f"cannot create the probe user {options.probe_user} on {name}: "
                    f"{_cause(name, failed)}"
                )
    except (LotdeployError, OSError) as exc:
        visit.session_lost = isinstance(exc, BrokerError) and exc.lost
        visit.probe_error = visit.routes_error = (
            f"cannot use {name}'s command channel: {_cause(name, exc)}"
        )
        return Check(name, "routes", "inconclusive", visit.routes_error)
    if visit.probe_error is None:
        visit.endpoint = _endpoint(node, port, ca_bundle)
    return _routes_check(site, node, listed)


def _endpoint(node: Node, forwarded: int, ca_bundle: bytes | None) -> Endpoint:
    """Probes go straight to the broker's cluster port when the controller reaches it (the
    way peers come in, TLS verified as they verify it), else over the forwarded port: a
    direct TCP connection has no SSH channel in the way to batch small messages (Nagle in
    the SSH connection adds up to a round trip to the measured latency)."""
    tls = None
    if node.tls:
        if ca_bundle is None:
            return Endpoint(node.name, "127.0.0.1", forwarded)
        tls = ssl.create_default_context(cadata=ca_bundle.decode())
    return Endpoint(
        node.name,
        node.address,
        node.port,
        tls=tls,
        server_hostname=node.address if tls is not None else None,
        fallback=("127.0.0.1", forwarded),
    )


async def _ensure_probe_user_async(
    client: Any, user: str, password: Secret, revoke_rights: bool = False
) -> None:
    """Set the probe user's password, creating the user the first time
    (`BrokerClient.ensure_users`, as for the cluster users). `revoke_rights` (a broker with
    the named rights model): every right flag it holds is taken away, as for the cluster
    users (a probe needs none)."""
    await client.ensure_users({user: password})
    if revoke_rights:
        await client.revoke_rights([user])


def _close_all(visits: list[_Visit], parallelism: int) -> None:
    """Close every node's forward and transport at once (each waits for its threads)."""

    def close(visit: _Visit) -> None:
        with contextlib.suppress(Exception):
            visit.stack.close()

    if visits:
        with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(visits)))) as pool:
            list(pool.map(close, visits))


def _close_quietly(transport: Transport) -> None:
    with contextlib.suppress(Exception):
        transport.close()


def _cause(name: str, exc: BaseException) -> str:
    text = scrub(str(exc))
    for prefix in (f"node {name}: ", f"{name}: "):
        text = text.removeprefix(prefix)
    return text


def _release_check(node: Node, transport: Transport, record: NodeRecord | None) -> Check:
    """`current` is the release state records, and every file of it (and every TLS file the
    broker reads) has the digest apply recorded: one command."""
    name = node.name
    if record is None or not record.release:
        return Check(name, "release", "fail", f"{name} was never applied: run lotdeploy apply")
    paths = release.NodePaths.of(node)
    where = {
        n: posixpath.join(paths.current if n == ROUTE_FILE else paths.tls_dir, n)
        for n in record.files
    }
    try:
        current, have = facts.read(
            transport, [facts.current_release(paths.current), facts.digests("sum", where)]
        )
    except (LotdeployError, OSError) as exc:
        why = f"cannot read the release: {_cause(name, exc)}"
        return Check(name, "release", "inconclusive", why)
    if current != record.release:
        return Check(
            name,
            "release",
            "fail",
            f"{name} runs release {current or '(none)'}, state says {record.release}: "
            "run lotdeploy drift, then apply --refresh",
        )
    changed = sorted(n for n, entry in record.files.items() if have.get(n) != entry.get("sha256"))
    if changed:
        return Check(
            name,
            "release",
            "fail",
            f"{name}: {', '.join(changed)} differ from release {record.release} as applied: "
            "run lotdeploy drift, then apply --refresh",
        )
    return Check(name, "release", "pass", f"release {record.release}, {len(record.files)} file(s)")


def _tls_check(node: Node, transport: Transport, ca_bundle: bytes | None, timeout: float) -> Check:
    """A TLS handshake with the broker's TLS port, from the node's side, verifying the
    site's trusted CAs and the node's address as the server name; then every SAN the node
    should have must be in the certificate."""
    from cryptography import x509

    from lotdeploy.pki.issue import cert_sans, expected_sans

    name = node.name
    if ca_bundle is None:
        return Check(name, "tls", "inconclusive", "no site CA in the workspace to verify against")
    where = f"{node.address}:{node.port}"
    verified = ssl.create_default_context(cadata=ca_bundle.decode())
    verified.check_hostname = True
    error = None
    der = None
    try:
        with transport.forward(node.address, node.port) as port:
            try:
                der = _handshake(verified, port, node.address, timeout)
            except ssl.SSLCertVerificationError as exc:
                error = f"certificate verify failed: {exc.verify_message}"
            except (ssl.SSLError, OSError) as exc:
                error = f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
            if der is None:  # read the certificate anyway, for the reason and expiry
                loose = ssl.create_default_context()
                loose.check_hostname = False
                loose.verify_mode = ssl.CERT_NONE
                with contextlib.suppress(ssl.SSLError, OSError):
                    der = _handshake(loose, port, node.address, timeout)
    except (LotdeployError, OSError) as exc:
        return Check(name, "tls", "fail", f"cannot reach {where} from {name}: {_cause(name, exc)}")
    days = None
    missing: list[str] = []
    if der is not None:
        cert = x509.load_der_x509_certificate(der)
        days = (cert.not_valid_after_utc - datetime.now(UTC)).days
        missing = sorted(set(expected_sans(node)) - set(cert_sans(cert)))
    if error is None and missing:
        error = f"the certificate lacks SAN {', '.join(missing)}"
    elif error is not None and missing:
        error += f" (the certificate lacks SAN {', '.join(missing)})"
    if error is not None:
        return Check(name, "tls", "fail", f"{where}: {scrub(error)}", days_left=days)
    return Check(name, "tls", "pass", f"{where}: verified, expires in {days} days", days_left=days)


def _handshake(context: ssl.SSLContext, port: int, server_name: str, timeout: float) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("no certificate")
    return der


def _routes_check(site: Site, node: Node, listed: dict[str, dict[str, Any]]) -> Check:
    want = {k.route_name for k in site.links_from(node.name)}
    owns = site.ownership.of(node.name)
    have = {n for n in listed if owns(n)}
    missing, extra = sorted(want - have), sorted(have - want)
    if not missing and not extra:
        return Check(node.name, "routes", "pass", f"{len(want)} route(s), as the site says")
    words = []
    if missing:
        words.append(f"missing {', '.join(missing)}")
    if extra:
        words.append(f"not in the site {', '.join(extra)}")
    return Check(node.name, "routes", "fail", "; ".join(words) + ": run lotdeploy plan / apply")


# -- link checks -------------------------------------------------------------------------


def _route_state(visit: _Visit, route: str) -> tuple[str | None, str]:
    """(connection, words) of the source's route, as its broker listed it."""
    if visit.routes is None:
        return None, visit.routes_error or f"{visit.node}'s routes could not be read"
    entry = visit.routes.get(route)
    if entry is None:
        return "missing", f"{visit.node} has no route {route}"
    connection = entry.get("connection")
    health = entry.get("health")
    words = f"{visit.node}'s route {route} is {connection or 'listed (no state given)'}"
    if health and health != "Green":
        words += f", health {health}"
    if entry.get("lastError"):
        words += f": {entry['lastError']}"
    return (str(connection) if connection else None), words


def _route_check(source: str, target: str, route: str, visit: _Visit) -> Check:
    subject = link_subject(source, target)
    connection, words = _route_state(visit, route)
    if visit.routes is None:
        return Check(subject, "route", "inconclusive", words)
    entry = visit.routes.get(route) or {}
    if connection == "missing":
        return Check(subject, "route", "fail", words)
    if connection not in ("Connected", None) or entry.get("health") == "Red":
        return Check(subject, "route", "fail", words)
    return Check(subject, "route", "pass", words)


def _link_check(
    link: Link, src: _Visit, dst: _Visit, outcome: ProbeOutcome, timeout: float
) -> Check:
    source, target = link.source, link.target
    subject = link_subject(source, target)
    validity = int(link.message_validity_sec)
    cannot = [
        why
        for why in (
            src.probe_error or outcome.errors.get(source),
            dst.probe_error or outcome.errors.get(target),
        )
        if why
    ]
    probe = outcome.links.get((source, target))
    if probe is None or cannot:
        route = _route_state(src, link.route_name)[1] if src.routes is not None else ""
        reason = "cannot probe: " + "; ".join(cannot or ["no probe connection"])
        unknown = all(v.probe_unsupported for v in (src, dst) if v.probe_error) and not (
            outcome.errors.get(source) or outcome.errors.get(target)
        )
        return Check(
            subject,
            "link",
            "inconclusive" if unknown and cannot else "fail",
            reason + (f"; {route}" if route else ""),
            validity_sec=validity,
        )
    publish = outcome.publish_errors.get(source)
    common: dict[str, Any] = {
        "latency_ms": probe.median_ms,
        "sent": probe.sent,
        "received": probe.once,
        "loss": probe.lost,
        "duplicates": probe.duplicates,
        "validity_sec": validity,
    }
    if probe.once == probe.sent and probe.sent > 0 and not probe.duplicates and not publish:
        return Check(
            subject,
            "link",
            "pass",
            f"{probe.sent} probe(s) arrived once, median {probe.median_ms} ms",
            **common,
        )
    words: list[str] = []
    if probe.once == 0:
        words.append(f"no probe arrived in {timeout:g} s")
    elif probe.lost:
        words.append(f"{probe.lost} of {probe.sent} probe(s) lost")
    if probe.duplicates:
        words.append(f"{probe.duplicates} duplicate(s)")
    if publish:
        words.append(publish)
    if probe.once < probe.sent:
        words.append(_route_state(src, link.route_name)[1])
    return Check(subject, "link", "fail", scrub("; ".join(words)), **common)

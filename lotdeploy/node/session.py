"""One node in one run: its connection and its broker admin session, each opened once.

Every phase of a command reaches a node through its `NodeSession`: apply's refresh, files,
capability check, users, routes, the wait for Connected links and the record; a rollout's
waves, gates, confirmations and rollbacks; drift, status, doctor, verify. The session is a
`Transport` (so every phase keeps its one small interface), but `close()` only marks a
phase done: the connection stays for the next phase, and `Sessions.close()` ends them all
when the command ends. A connection or admin session that died between phases (a node cut
and healed during a long rollout) is opened again by the next phase's `connect()`; within a
phase a lost connection stays an error (a command must never run twice).

Where a round trip is saved (docs/performance.md "Round trips"): the SSH handshake (~5-6
round trips) once per node per command instead of once per phase, and the admin session
(a forwarded channel, CONNECT, SUBSCRIBE, the request-id probe) once instead of once per
phase.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from lotdeploy.errors import BrokerError, LotdeployError
from lotdeploy.fsutil import UnreadableFile, read_regular_file
from lotdeploy.model import Node, Site
from lotdeploy.secret import Secret, scrub
from lotdeploy.transport.base import COMMAND_TIMEOUT, RunResult, Transport, TransportFactory

if TYPE_CHECKING:
    from lotdeploy.broker.session import RequestIds
    from lotdeploy.broker.sync import SyncBrokerClient

T = TypeVar("T")
#: How long the end of a command waits for a background connect still under way.
WARM_JOIN_SECONDS = 1.0


def admin_password(site: Site, node: Node) -> Secret:
    """The broker admin password, from the file or environment variable the site names."""
    broker = node.broker
    if broker.admin_password_env:
        value = os.environ.get(broker.admin_password_env)
        if not value:
            raise BrokerError(
                node.name, f"the admin password variable {broker.admin_password_env} is not set"
            )
        return Secret(value)
    if broker.admin_password_file is not None:
        path = broker.admin_password_file
        path = path if path.is_absolute() else Path(site.base_dir) / path
        try:
            text = read_regular_file(path, 64 * 1024).decode("utf-8").strip()
        except (UnreadableFile, UnicodeDecodeError) as exc:
            why = exc.reason if isinstance(exc, UnreadableFile) else "not valid UTF-8"
            raise BrokerError(node.name, f"admin password file {path}: {why}") from None
        if not text:
            raise BrokerError(node.name, f"admin password file {path} is empty")
        return Secret(text)
    raise BrokerError(
        node.name,
        "no admin password for the command channel: set broker.admin_password_file or "
        "broker.admin_password_env in the site",
    )


@contextlib.contextmanager
def open_admin(
    site: Site, node: Node, transport: Transport, password: Secret | None = None
) -> Iterator[SyncBrokerClient]:
    """A new admin session on the node's broker through a port forwarded over `transport`,
    closed after the block (a NodeSession keeps the one it opened for every phase of its
    run); the client itself is made by `admin_on_port`, as verify's is."""
    with (
        transport.forward(node.broker.admin_host, node.broker.admin_port) as port,
        admin_on_port(site, node, port, password) as client,
    ):
        yield client


@contextlib.contextmanager
def admin_on_port(
    site: Site,
    node: Node,
    port: int,
    password: Secret | None = None,
    *,
    request_ids: RequestIds = "auto",
    connect_timeout: float = 10.0,
) -> Iterator[SyncBrokerClient]:
    """The admin session on `port` of 127.0.0.1, already forwarded to the node's broker
    (verify keeps its forward open after the session, for the probes), closed after the
    block. `request_ids`: what the node's record knows of the broker's echo, else "auto"."""
    from lotdeploy.broker.sync import SyncBrokerClient

    secret = password if password is not None else admin_password(site, node)
    client = SyncBrokerClient(
        node.name,
        "127.0.0.1",
        port,
        node.broker.admin_user,
        secret,
        request_ids=request_ids,
        connect_timeout=connect_timeout,
    )
    try:
        client.connect()
        yield client
    finally:
        client.close()


class NodeSession(Transport):
    """A node's transport for a whole command, shared by its phases (see the module)."""

    def __init__(self, site: Site, node: Node, transport: Transport) -> None:
        self.site = site
        self.node_spec = node
        self.node = node.name
        self.transport = transport
        self._lock = threading.RLock()
        self._admin: SyncBrokerClient | None = None
        self._admin_stack = contextlib.ExitStack()
        self._warming: threading.Thread | None = None
        self._warm_error: Exception | None = None
        self._closing = False  # shutdown() came: a connect still warming closes itself

    # -- the Transport interface: delegated, but close() keeps the connection ----------------

    def connect(self) -> None:
        self._settle()
        with self._lock:
            self.transport.connect()

    def _settle(self) -> None:
        """Wait for a background connect (`warm`) and raise what it met: every call on the
        node does, so none races it (a transport connects on first use)."""
        warming = self._warming
        if warming is None:
            return
        warming.join()  # bounded: the slots of the others' connects, then its own timeout
        with self._lock:
            self._warming = None
            error, self._warm_error = self._warm_error, None
        if error is not None:  # said once, by the phase that needed the node
            raise error

    def warm(self, slots: threading.Semaphore) -> None:
        """Start connecting in the background (`Sessions.warm`); the next `connect()` waits
        for it and raises what it met, whatever it was. `slots` bounds how many connect at
        once. Not to be called while another thread may call `connect()`."""
        if self._warming is not None:
            return

        def connect() -> None:
            try:
                with slots, self._lock:
                    if not self._closing:
                        self.transport.connect()
            except Exception as exc:
                self._warm_error = exc
            finally:
                if self._closing:  # the command ended meanwhile: nobody will use it
                    with self._lock, contextlib.suppress(Exception):
                        self.transport.close()

        self._warming = threading.Thread(target=connect, name=f"connect-{self.node}", daemon=True)
        self._warming.start()

    def run(
        self,
        command: str,
        *,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        input: bytes | None = None,
    ) -> RunResult:
        self._settle()
        return self.transport.run(command, timeout=timeout, check=check, input=input)

    def put(self, data: bytes, path: str, mode: int) -> None:
        self._settle()
        self.transport.put(data, path, mode)

    def get(self, path: str, max_bytes: int = 16 * 1024 * 1024) -> bytes | None:
        self._settle()
        return self.transport.get(path, max_bytes)

    def forward(self, remote_host: str, remote_port: int) -> contextlib.AbstractContextManager[int]:
        self._settle()
        return self.transport.forward(remote_host, remote_port)

    def close(self) -> None:
        """A phase is done with the node: nothing closes (Sessions.close does, at the end)."""

    # -- the admin session --------------------------------------------------------------------

    @contextlib.contextmanager
    def admin(self, password: Secret | None = None) -> Iterator[SyncBrokerClient]:
        """The broker's admin session through a port forwarded over this connection: opened
        on first use, reused by every later phase, opened again if it was lost. A session
        for another password (doctor's checks) is its own and closed after the block."""
        if password is not None:
            with self._open_admin(password) as client:
                yield client
            return
        self._settle()  # before the lock: a background connect (warm) needs it to end
        with self._lock:
            if self._admin is None or not self._admin.connected:
                self._drop_admin()
                self._admin = self._admin_stack.enter_context(self._open_admin(None))
            client = self._admin
        yield client

    @contextlib.contextmanager
    def _open_admin(self, password: Secret | None) -> Iterator[SyncBrokerClient]:
        self.connect()
        with open_admin(self.site, self.node_spec, self.transport, password) as client:
            yield client

    def _drop_admin(self) -> None:
        self._admin = None
        with contextlib.suppress(Exception):
            self._admin_stack.close()
        self._admin_stack = contextlib.ExitStack()

    def shutdown(self) -> None:
        """End the admin session and the connection (the end of the command). A connect
        still under way in the background (the command ended before it needed the node) is
        given a moment; past it, that connect closes what it opened when it ends, or the
        process's end drops it."""
        self._closing = True
        warming = self._warming
        if warming is not None:
            warming.join(WARM_JOIN_SECONDS)
            if warming.is_alive():
                return
        with self._lock:
            self._drop_admin()
            with contextlib.suppress(LotdeployError, OSError):
                self.transport.close()


class Sessions:
    """Every node's session for one command (a rollout: for all its waves and gates).

    Callable as a transport factory (node -> its NodeSession), so every function that takes
    one reuses the connections without knowing it; `fresh(node)` gives a connection of its
    own (a rollout's confirmation must prove a *new* connection works). `for_each` is the
    one way to work on many nodes at once. A context manager: leaving it closes everything.
    """

    def __init__(self, site: Site, factory: TransportFactory) -> None:
        self.site = site
        self.factory = factory
        self._sessions: dict[str, NodeSession] = {}
        self._lock = threading.Lock()

    def __call__(self, node: Node) -> NodeSession:
        with self._lock:
            session = self._sessions.get(node.name)
            if session is None:
                session = NodeSession(self.site, node, self.factory(node))
                self._sessions[node.name] = session
            return session

    def fresh(self, node: Node) -> Transport:
        return self.factory(node)

    def warm(self, nodes: Iterable[Node], parallelism: int) -> None:
        """Start connecting to every node of `nodes` now, in the background, at most
        `parallelism` at once, while the command still works on the controller: the first
        phase that needs a node finds its connection made, or the error it met (said there,
        as without this). For a command that will reach every node anyway (a refreshing
        apply): the SSH handshake, the longest wait of a first contact, then overlaps the
        local work before that phase instead of following it."""
        slots = threading.BoundedSemaphore(max(1, parallelism))
        for node in nodes:
            self(node).warm(slots)

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for_each_name([s.node for s in sessions], lambda name: _shutdown(sessions, name), 10)

    def for_each(
        self,
        nodes: Iterable[Node],
        job: Callable[[Node, Transport], T],
        parallelism: int = 10,
    ) -> dict[str, T | str]:
        """node name -> `job(node, its session)`, or the error (a str) that stopped it there;
        concurrently, up to `parallelism` nodes at once."""
        return on_nodes(nodes, self, job, parallelism)


def fresh_transport(transports: TransportFactory, node: Node) -> Transport:
    """A connection of its own to `node`, never a shared session (a confirmation must
    prove that a *new* connection and admin session work)."""
    if isinstance(transports, Sessions):
        return transports.fresh(node)
    return transports(node)


def _shutdown(sessions: list[NodeSession], name: str) -> None:
    for session in sessions:
        if session.node == name:
            session.shutdown()


def for_each_name(
    names: Iterable[str], work: Callable[[str], T], parallelism: int = 10
) -> dict[str, T]:
    """`work(name)` for every name at once, up to `parallelism` at a time (the one thread
    pool every fan-out goes through); exceptions propagate to the caller."""
    chosen = list(names)
    if not chosen:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(chosen)))) as pool:
        return dict(zip(chosen, pool.map(work, chosen), strict=True))


def on_nodes(
    nodes: Iterable[Node],
    transports: TransportFactory,
    job: Callable[[Node, Transport], T],
    parallelism: int = 10,
) -> dict[str, T | str]:
    """node name -> the job's result on the node's transport (connected first, closed
    after: a NodeSession stays open for the next phase), or the error (a str) that stopped
    it on that node."""
    by_name = {n.name: n for n in nodes}

    def one(name: str) -> T | str:
        node = by_name[name]
        try:
            transport = transports(node)
            transport.connect()
            try:
                return job(node, transport)
            finally:
                transport.close()
        except (LotdeployError, OSError) as exc:
            return scrub(str(exc))

    return for_each_name(by_name, one, parallelism)

"""Probe messages through the cluster links: the part of verify that talks MQTT.

One MQTT connection per node (as the probe user; straight to the broker's cluster port when
the controller reaches it, else through the port forwarded over the node's SSH connection:
see `Endpoint`), subscribed at QoS 1 to this run's topic space, `<prefix><run-id>/#`. Each
source node publishes `count` probes on `<prefix><run-id>/<source>/<seq>` (QoS 1, never
retained; the run id, source and sequence number in the payload). The lab broker's routes
push a node's local messages to every peer (docs/lab-broker.md, "Forwarding direction"), as
a full mesh of MQTT_CLUSTER routes does, so one publish on a source probes every link out of
it at once: an arrival on target T of a probe from S proves the link S → T.

Latency of S → T is measured on the controller's monotonic clock, as the time between the
probe's local echo on S (the source's own subscriber gets it when S's broker has it) and its
arrival on T. That removes the controller → S leg; what is left differs from the one-way link
time only by the difference of the controller's return paths from S and from T (zero in the
lab, where delay is on node ingress). Arrivals are counted per (source, target, seq): one is
a pass, none a loss, more a duplicate, and loss and duplicates are reported apart.

All connections and all sources run concurrently on one event loop (connections open while
the other nodes are still being checked); the whole exchange is bounded by the connect
timeout plus `timeout` after the last probe went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.broker.mqtt import ConnectRefused, Message, MqttConnection, MqttError
from lotdeploy.fsutil import UnreadableFile, parse_json
from lotdeploy.secret import Secret, scrub

#: Seconds the direct connection may take before the SSH fallback is tried.
DIRECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Endpoint:
    """Where the controller reaches one node's broker: first directly, at the address and
    port its peers dial (TLS verified like theirs), else through the port forwarded over
    the node's SSH connection to its admin address (`fallback`)."""

    node: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    fallback: tuple[str, int] | None = None


@dataclass
class LinkProbe:
    """What the probes of one link showed."""

    sent: int = 0
    once: int = 0
    lost: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return round(statistics.median(self.latencies_ms), 1) if self.latencies_ms else None

    @property
    def max_ms(self) -> float | None:
        return round(max(self.latencies_ms), 1) if self.latencies_ms else None


@dataclass
class ProbeOutcome:
    links: dict[tuple[str, str], LinkProbe] = field(default_factory=dict)
    #: node -> why the probe connection to it failed (it could neither send nor receive)
    errors: dict[str, str] = field(default_factory=dict)
    #: node -> why its probes could not all be published (its links out are not proven)
    publish_errors: dict[str, str] = field(default_factory=dict)


def topic_root(prefix: str, run_id: str) -> str:
    return f"{prefix.rstrip('/')}/{run_id}"


class ProbeRun:
    """One run's probes. `open(endpoint)` starts a node's connection as soon as its broker is
    ready (while other nodes are still being checked); `finish()` waits for them, sends
    every source's probes, collects the arrivals (bounded) and closes everything."""

    def __init__(
        self,
        links: list[tuple[str, str]],
        *,
        username: str,
        password: Secret,
        prefix: str,
        run_id: str,
        count: int = 5,
        interval: float = 0.02,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        quiet: float = 0.2,
        parallelism: int = 32,
    ) -> None:
        self.links = links
        self.username = username
        self.password = password
        self.run_id = run_id
        self.root = topic_root(prefix, run_id)
        self.count = count
        self.interval = interval
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.quiet = quiet
        self.outcome = ProbeOutcome()
        self.conns: dict[str, MqttConnection] = {}
        self.opening: list[asyncio.Task[None]] = []
        #: node -> the early direct attempt (True: connected), see `open_early`
        self.early: dict[str, asyncio.Task[bool]] = {}
        self.chosen: set[str] = set()
        #: (receiver, source, seq) -> arrival times; (source, seq) -> send time
        self.arrivals: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        self.sent_at: dict[tuple[str, int], float] = {}
        self.wanted: set[tuple[str, str, int]] = set()
        self.missing = 0
        self.complete = asyncio.Event()
        self.gate = asyncio.Semaphore(max(1, parallelism))
        self.ends = {n for pair in links for n in pair}

    def _receiver(self, name: str) -> Callable[[Message], None]:
        def on_message(msg: Message) -> None:
            now = time.monotonic()
            try:  # whatever arrives on the probe topics: fsutil's strict JSON
                doc = parse_json(msg.payload)
                if doc.get("run") != self.run_id:
                    return
                key = (name, str(doc["src"]), int(doc["seq"]))
            except (UnreadableFile, ValueError, KeyError, TypeError, AttributeError):
                return
            times = self.arrivals[key]
            times.append(now)
            if len(times) == 1 and key in self.wanted:
                self.missing -= 1
                if self.missing <= 0:
                    self.complete.set()

        return on_message

    def _connection(self, end: Endpoint, direct: bool) -> MqttConnection:
        host, port = (end.host, end.port) if direct or end.fallback is None else end.fallback
        return MqttConnection(
            host,
            port,
            client_id=f"lotdeploy-probe-{self.run_id}-{end.node}"[:64],
            username=self.username,
            password=self.password,
            tls=end.tls if direct else None,
            server_hostname=end.server_hostname if direct else None,
            keepalive=30,
            # a firewalled direct path must not cost the whole timeout before the fallback
            connect_timeout=min(self.connect_timeout, DIRECT_TIMEOUT)
            if direct and end.fallback is not None
            else self.connect_timeout,
            on_message=self._receiver(end.node),
        )

    def open_early(self, end: Endpoint) -> None:
        """Before the node's checks: try the direct path once, quietly (the probe user and
        its password are usually there from the last run). Used only if `open` follows."""
        if end.node in self.ends:
            self.early[end.node] = asyncio.ensure_future(self._try_early(end))

    async def _try_early(self, end: Endpoint) -> bool:
        conn = self._connection(dataclasses.replace(end, fallback=None), True)
        try:
            async with self.gate:
                await conn.connect()
                codes = await conn.subscribe([(f"{self.root}/#", 1)], self.connect_timeout)
        except MqttError:
            await conn.close()
            return False
        if codes and codes[0] == 0x80:
            await conn.close()
            return False
        self.conns[end.node] = conn
        return True

    def open(self, end: Endpoint) -> None:
        """Start connecting to `end`, the node's checks done (call from the event loop)."""
        if end.node in self.ends:
            self.chosen.add(end.node)
            self.opening.append(asyncio.ensure_future(self._open_after_early(end)))

    async def _open_after_early(self, end: Endpoint) -> None:
        early = self.early.get(end.node)
        if early is not None and await early:
            return
        await self._open(end)

    async def _open(self, end: Endpoint) -> None:
        name = end.node
        tries = [True, False] if end.fallback is not None else [True]
        async with self.gate:
            for direct in tries:
                conn = self._connection(end, direct)
                try:
                    await conn.connect()
                    codes = await conn.subscribe([(f"{self.root}/#", 1)], self.connect_timeout)
                    break
                except MqttError as exc:
                    await conn.close()
                    if direct and len(tries) > 1 and not isinstance(exc, ConnectRefused):
                        continue  # not reachable from here: through the node's SSH then
                    self.outcome.errors[name] = scrub(f"probe connection failed: {exc}")
                    return
        if codes and codes[0] == 0x80:
            await conn.close()
            self.outcome.errors[name] = f"subscription to {self.root}/# refused to the probe user"
            return
        self.conns[name] = conn

    async def _send_all(self, source: str) -> None:
        conn = self.conns[source]
        pending = []
        try:
            for seq in range(self.count):
                payload = json.dumps(
                    {"run": self.run_id, "src": source, "seq": seq, "at": round(time.time(), 6)}
                ).encode()
                self.sent_at[(source, seq)] = time.monotonic()
                message = Message(f"{self.root}/{source}/{seq}", payload, 1, False)
                pending.append(asyncio.ensure_future(conn.publish(message, self.timeout)))
                if seq + 1 < self.count:
                    await asyncio.sleep(self.interval)
            await asyncio.gather(*pending)
        except MqttError as exc:
            self.outcome.publish_errors[source] = scrub(f"publishing probes failed: {exc}")
            for task in pending:
                task.cancel()

    async def finish(self) -> ProbeOutcome:
        conns = self.conns
        try:
            await asyncio.gather(*self.opening)
            await asyncio.gather(*self.early.values())
            for name in [n for n in conns if n not in self.chosen]:
                await conns.pop(name).close()  # its checks failed: its links are not probed
            probed = [(s, t) for s, t in self.links if s in conns and t in conns]
            sources = sorted({s for s, _ in probed})
            wanted = {(t, s, k) for s, t in probed for k in range(self.count)}
            wanted |= {(s, s, k) for s in sources for k in range(self.count)}  # local echoes
            self.wanted = wanted
            self.missing = sum(1 for k in wanted if k not in self.arrivals)
            if sources:
                await asyncio.gather(*(self._send_all(s) for s in sources))
                self.missing = sum(1 for k in wanted if k not in self.arrivals)
                if self.missing <= 0:
                    self.complete.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.complete.wait(), self.timeout)
                await asyncio.sleep(self.quiet)  # late duplicates
        finally:
            await asyncio.gather(*(c.close() for c in conns.values()), return_exceptions=True)
        return self._tally()

    def _tally(self) -> ProbeOutcome:
        outcome = self.outcome
        for source, target in self.links:
            if source not in self.conns or target not in self.conns:
                continue
            probe = LinkProbe()
            for seq in range(self.count):
                if (source, seq) not in self.sent_at:
                    continue
                probe.sent += 1
                times = self.arrivals.get((target, source, seq), [])
                if not times:
                    probe.lost += 1
                    continue
                probe.once += 1
                probe.duplicates += len(times) - 1
                echo = self.arrivals.get((source, source, seq))
                start = echo[0] if echo else self.sent_at[(source, seq)]
                probe.latencies_ms.append(max(0.0, (times[0] - start) * 1000))
            outcome.links[(source, target)] = probe
        return outcome


async def probe_links(
    endpoints: dict[str, Endpoint], links: list[tuple[str, str]], **options: Any
) -> ProbeOutcome:
    """Probe every link in `links` whose ends are both in `endpoints` (options: ProbeRun's)."""
    run = ProbeRun(links, **options)
    for end in endpoints.values():
        run.open(end)
    return await run.finish()

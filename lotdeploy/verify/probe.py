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

All connections and all sources run concurrently on one event loop; the whole exchange is
bounded by the connect timeout plus `timeout` after the last probe went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

from lotdeploy.broker.mqtt import ConnectRefused, Message, MqttConnection, MqttError
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


async def probe_links(
    endpoints: dict[str, Endpoint],
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
    quiet: float = 0.25,
    parallelism: int = 32,
) -> ProbeOutcome:
    """Probe every link in `links` whose ends are both in `endpoints`."""
    root = topic_root(prefix, run_id)
    outcome = ProbeOutcome()
    nodes = sorted({n for pair in links for n in pair} & set(endpoints))
    sources = sorted({s for s, t in links if s in endpoints and t in endpoints})
    #: (receiver, source, seq) -> arrival times; (source, seq) -> send time
    arrivals: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    sent_at: dict[tuple[str, int], float] = {}
    probed = [(s, t) for s, t in links if s in endpoints and t in endpoints]
    wanted = {(t, s, k) for s, t in probed for k in range(count)}
    wanted |= {(s, s, k) for s in sources for k in range(count)}  # the local echoes
    complete = asyncio.Event()

    def receiver(name: str) -> object:
        def on_message(msg: Message) -> None:
            now = time.monotonic()
            try:
                doc = json.loads(msg.payload)
                key = (name, str(doc["src"]), int(doc["seq"]))
                if doc.get("run") != run_id:
                    return
            except (ValueError, KeyError, TypeError):
                return
            arrivals[key].append(now)
            if key in wanted and not complete.is_set() and all(k in arrivals for k in wanted):
                complete.set()

        return on_message

    conns: dict[str, MqttConnection] = {}
    gate = asyncio.Semaphore(max(1, parallelism))

    def connection(end: Endpoint, direct: bool) -> MqttConnection:
        host, port = (end.host, end.port) if direct or end.fallback is None else end.fallback
        return MqttConnection(
            host,
            port,
            client_id=f"lotdeploy-probe-{run_id}-{end.node}"[:64],
            username=username,
            password=password,
            tls=end.tls if direct else None,
            server_hostname=end.server_hostname if direct else None,
            keepalive=30,
            # a firewalled direct path must not cost the whole timeout before the fallback
            connect_timeout=min(connect_timeout, DIRECT_TIMEOUT)
            if direct and end.fallback is not None
            else connect_timeout,
            on_message=receiver(end.node),  # type: ignore[arg-type]
        )

    async def open_one(name: str) -> None:
        end = endpoints[name]
        tries = [True, False] if end.fallback is not None else [True]
        async with gate:
            for direct in tries:
                conn = connection(end, direct)
                try:
                    await conn.connect()
                    codes = await conn.subscribe([(f"{root}/#", 1)], connect_timeout)
                    break
                except MqttError as exc:
                    await conn.close()
                    if direct and len(tries) > 1 and not isinstance(exc, ConnectRefused):
                        continue  # not reachable from here: through the node's SSH then
                    outcome.errors[name] = scrub(f"probe connection failed: {exc}")
                    return
        if codes and codes[0] == 0x80:
            await conn.close()
            outcome.errors[name] = f"subscription to {root}/# refused to the probe user"
            return
        conns[name] = conn

    async def send_all(source: str) -> None:
        conn = conns[source]
        pending = []
        try:
            for seq in range(count):
                payload = json.dumps(
                    {"run": run_id, "src": source, "seq": seq, "at": round(time.time(), 6)}
                ).encode()
                sent_at[(source, seq)] = time.monotonic()
                pending.append(
                    asyncio.ensure_future(
                        conn.publish(Message(f"{root}/{source}/{seq}", payload, 1, False), timeout)
                    )
                )
                if seq + 1 < count:
                    await asyncio.sleep(interval)
            await asyncio.gather(*pending)
        except MqttError as exc:
            outcome.publish_errors[source] = scrub(f"publishing probes failed: {exc}")
            for task in pending:
                task.cancel()

    try:
        await asyncio.gather(*(open_one(n) for n in nodes))
        live_sources = [s for s in sources if s in conns]
        if not any(t in conns for s, t in links if s in conns):
            live_sources = []
        if live_sources:
            await asyncio.gather(*(send_all(s) for s in live_sources))
            wanted = {w for w in wanted if w[0] in conns and w[1] in conns}
            if all(k in arrivals for k in wanted):
                complete.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(complete.wait(), timeout)
            await asyncio.sleep(quiet)  # late duplicates
    finally:
        await asyncio.gather(*(c.close() for c in conns.values()), return_exceptions=True)

    for source, target in links:
        if source not in conns or target not in conns:
            continue
        probe = LinkProbe()
        for seq in range(count):
            if (source, seq) not in sent_at:
                continue
            probe.sent += 1
            times = arrivals.get((target, source, seq), [])
            if not times:
                probe.lost += 1
                continue
            probe.once += 1
            probe.duplicates += len(times) - 1
            echo = arrivals.get((source, source, seq))
            start = echo[0] if echo else sent_at[(source, seq)]
            probe.latencies_ms.append(max(0.0, (times[0] - start) * 1000))
        outcome.links[(source, target)] = probe
    return outcome

"""`verify --load RATE --for SECONDS`: a bounded load probe of every link at once.

The vendor warns that "very large message volumes may require tuning MESSAGE_VALIDITY_SEC"
(system-routes page, *Limitations*): a link that falls behind holds messages in its queue,
and one held longer than the window is dropped. This probe measures, per link, what the
cluster does at a given rate, so the window can be chosen from figures:

* every node publishes RATE messages a second for SECONDS (QoS 1, never retained) on
  `<prefix><run-id>/load/<source>/<seq>`, paced every 10 ms; since routes push every local
  message to every peer, each publish loads every link out of its node;
* every node subscribes to `<prefix><run-id>/load/#` (QoS 1): each arrival is counted per
  (source, target, seq): once, lost, or duplicated;
* delay is measured on the controller's monotonic clock from the publish to the arrival on
  the target, so it includes the time the message waited in the source broker (under load
  that is part of the answer; the idle probes subtract the source's local echo instead, and
  on a real site the controller's path to the source adds to it); per link its median, 95th
  percentile and maximum; throughput is what arrived over the time from the first publish to
  the last arrival;
* a message the source broker did not acknowledge in time is counted apart ("not
  accepted"): the source was saturated, which says nothing about the link; a link's loss
  is what its source accepted and its target never got.

Bounded: at most MAX_MESSAGES messages per node, at most the publishing time plus the run's
timeout (and the time a backlog takes to drain, up to DRAIN_LIMIT) of waiting. The advice
drawn from the figures: `lotdeploy.verify.advice.load_advice`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from lotdeploy.broker.mqtt import Message, MqttConnection, MqttError
from lotdeploy.secret import scrub
from lotdeploy.verify.failover import ExerciseContext
from lotdeploy.verify.probe import DIRECT_TIMEOUT, Endpoint
from lotdeploy.verify.result import Check, link_subject

#: Most messages one node publishes in one load probe (memory and time bound).
MAX_MESSAGES = 200_000
#: Seconds between publishing ticks.
TICK = 0.01
#: Longest wait for a backlog to drain after publishing ended.
DRAIN_LIMIT = 60.0
#: Publishes awaiting their PUBACK per connection: past it the publisher waits (the offered
#: rate is then not reached, and the figures say so), so memory stays bounded.
INFLIGHT = 1000


@dataclass(frozen=True)
class LoadPlan:
    """The offered load: messages a second per node, for how long, of what payload size."""

    rate: float
    seconds: float
    payload_bytes: int = 64
    #: the nodes that publish (None: every node); every other node only receives
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.seconds <= 0:
            raise ValueError("the load probe needs a positive rate and duration")
        if self.rate * self.seconds > MAX_MESSAGES:
            raise ValueError(
                f"--load {self.rate:g} --for {self.seconds:g} is {self.rate * self.seconds:.0f} "
                f"messages per node; at most {MAX_MESSAGES}"
            )

    @property
    def count(self) -> int:
        return max(1, math.floor(self.rate * self.seconds))


@dataclass(frozen=True)
class LinkLoad:
    """What the load showed on one link."""

    source: str
    target: str
    sent: int
    #: not acknowledged by the source broker in time (the source was saturated)
    unaccepted: int
    once: int
    lost: int
    duplicates: int
    throughput: float
    #: messages a second the source's broker took (publishing may have been held back by
    #: its acknowledgements: then the load was limited before the link)
    accepted_rate: float
    median_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class LoadRun:
    """One load probe over the verify run's endpoints; `run()` returns a check per link."""

    def __init__(self, plan: LoadPlan, ctx: ExerciseContext) -> None:
        self.plan = plan
        self.ctx = ctx
        self.root = f"{ctx.root}/load"
        self.nodes = sorted(ctx.endpoints)
        #: (receiver, source, seq) -> arrival times
        self.arrivals: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        #: (receiver, source) -> distinct messages arrived (for the cheap completion test)
        self.distinct: dict[tuple[str, str], int] = defaultdict(int)
        self.sent_at: dict[tuple[str, int], float] = {}
        #: source -> the seqs its broker acknowledged
        self.accepted: dict[str, set[int]] = defaultdict(set)
        self.sent_ok: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.conns: dict[str, MqttConnection] = {}

    def _receiver(self, name: str) -> Callable[[Message], None]:
        def on_message(msg: Message) -> None:
            now = time.monotonic()
            try:
                doc = json.loads(msg.payload)
                if doc.get("run") != self.ctx.run_id:
                    return
                source = str(doc["src"])
                times = self.arrivals[(name, source, int(doc["seq"]))]
            except (ValueError, KeyError, TypeError, AttributeError):
                return
            times.append(now)
            if len(times) == 1:
                self.distinct[(name, source)] += 1

        return on_message

    async def _open(self, name: str) -> None:
        end: Endpoint = self.ctx.endpoints[name]
        tries = [True, False] if end.fallback is not None else [True]
        for direct in tries:
            host, port = (end.host, end.port) if direct else end.fallback or ("", 0)
            conn = MqttConnection(
                host,
                port,
                client_id=f"lotdeploy-load-{self.ctx.run_id}-{name}"[:64],
                username=self.ctx.username,
                password=self.ctx.password,
                tls=end.tls if direct else None,
                server_hostname=end.server_hostname if direct else None,
                keepalive=30,
                connect_timeout=DIRECT_TIMEOUT if direct and len(tries) > 1 else self.ctx.timeout,
                on_message=self._receiver(name),
                max_inflight=INFLIGHT,
            )
            try:
                await conn.connect()
                codes = await conn.subscribe([(f"{self.root}/#", 1)], self.ctx.timeout)
            except MqttError as exc:
                await conn.close()
                self.errors[name] = scrub(f"load connection failed: {exc}")
                continue
            if codes and codes[0] == 0x80:
                await conn.close()
                self.errors[name] = "subscription refused to the probe user"
                return
            self.errors.pop(name, None)
            self.conns[name] = conn
            return

    async def _publish_all(self, name: str, began: float) -> None:
        """`count` messages at `rate`, paced by the clock (a late tick sends what is due)."""
        conn = self.conns[name]
        pad = "x" * max(0, self.plan.payload_bytes - 60)
        # a publish may wait behind the whole burst in the client before its PUBACK
        patience = self.ctx.timeout + self.plan.seconds
        window = asyncio.Semaphore(INFLIGHT)
        pending: list[asyncio.Future[None]] = []
        seq = 0
        count = self.plan.count
        for _ in range(int(self.plan.seconds / TICK) + 10_000):  # bounded in count and time
            if seq >= count:
                break
            due = min(count, math.floor((time.monotonic() - began) * self.plan.rate) + 1)
            while seq < due:
                payload = json.dumps(
                    {"run": self.ctx.run_id, "src": name, "seq": seq, "pad": pad}
                ).encode()
                await window.acquire()
                self.sent_at[(name, seq)] = time.monotonic()
                message = Message(f"{self.root}/{name}/{seq}", payload, 1, False)
                pending.append(
                    asyncio.ensure_future(self._send(conn, message, name, seq, patience, window))
                )
                seq += 1
            await asyncio.sleep(TICK)
        results = await asyncio.gather(*pending, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        self.sent_ok[name] = len(results) - len(failed)
        if failed:
            self.errors[name] = scrub(f"{len(failed)} publish(es) failed: {failed[0]}")

    async def _send(
        self,
        conn: MqttConnection,
        message: Message,
        name: str,
        seq: int,
        patience: float,
        window: asyncio.Semaphore,
    ) -> None:
        try:
            await conn.publish(message, patience)
            self.accepted[name].add(seq)
        finally:
            window.release()

    def _complete(self, sources: list[str]) -> bool:
        return all(
            self.distinct[(t, s)] >= self.sent_ok.get(s, 0) for s in sources for t in self.conns
        )

    async def run(self) -> list[Check]:
        try:
            await asyncio.gather(*(self._open(n) for n in self.nodes))
            reachable = [n for n in self.nodes if n in self.conns]
            wanted = self.plan.sources
            sources = [n for n in reachable if wanted is None or n in wanted]
            if len(reachable) < 2 or not sources:
                return [
                    Check("*", "load", "inconclusive", "fewer than two nodes reachable for load")
                ]
            began = time.monotonic()
            await asyncio.gather(*(self._publish_all(n, began) for n in sources))
            ended = time.monotonic()
            deadline = ended + min(DRAIN_LIMIT, self.ctx.timeout + self.plan.seconds)
            quiet_since, seen = time.monotonic(), -1
            while time.monotonic() < deadline and not self._complete(sources):
                total = sum(len(v) for v in self.arrivals.values())
                if total != seen:
                    seen, quiet_since = total, time.monotonic()
                elif time.monotonic() - quiet_since > self.ctx.timeout:
                    break  # nothing moves any more: the rest is lost
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # late duplicates
        finally:
            for conn in self.conns.values():
                with contextlib.suppress(Exception):
                    await conn.close()
        return [self._check(self._tally(s, t, began)) for s in sources for t in reachable if s != t]

    def _tally(self, source: str, target: str, began: float) -> LinkLoad:
        delays: list[float] = []
        once = dups = 0
        last = began
        sent = [k for k in range(self.plan.count) if (source, k) in self.sent_at]
        accepted = self.accepted.get(source, set())
        lost = 0
        for seq in sent:
            times = self.arrivals.get((target, source, seq), [])
            if not times:
                lost += seq in accepted
                continue
            once += 1
            dups += len(times) - 1
            last = max(last, times[0])
            delays.append(max(0.0, (times[0] - self.sent_at[(source, seq)]) * 1000))
        span = max(last - began, TICK)
        ordered = sorted(delays)
        sent_times = [self.sent_at[(source, k)] for k in sent]
        publishing = max(max(sent_times) - began, TICK) if sent_times else TICK
        accepted_rate = min(len(accepted), len(sent)) / max(publishing, self.plan.seconds)
        return LinkLoad(
            source=source,
            target=target,
            sent=len(sent),
            unaccepted=len(sent) - len(accepted),
            once=once,
            lost=lost,
            duplicates=dups,
            throughput=round(once / span, 1) if once else 0.0,
            accepted_rate=round(accepted_rate, 1),
            median_ms=round(statistics.median(ordered), 1) if ordered else None,
            p95_ms=round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)
            if ordered
            else None,
            max_ms=round(ordered[-1], 1) if ordered else None,
        )

    def _check(self, link: LinkLoad) -> Check:
        rate = self.plan.rate
        validity = self.ctx.validity.get((link.source, link.target))
        figures = (
            f"{rate:g}/s for {self.plan.seconds:g} s: {link.source} took {link.accepted_rate:g}/s, "
            f"{link.once} of {link.sent} arrived ({link.throughput:g}/s)"
        )
        if link.median_ms is not None:
            figures += (
                f", delay median {link.median_ms:g} ms, p95 {link.p95_ms:g} ms, "
                f"max {link.max_ms:g} ms"
            )
        problems = []
        if link.unaccepted:
            problems.append(
                f"{link.unaccepted} not accepted by {link.source}'s broker in time (saturated)"
            )
        if link.lost:
            problems.append(f"{link.lost} accepted by {link.source} and lost on the link")
        if link.duplicates:
            problems.append(f"{link.duplicates} duplicate(s)")
        for node in (link.source, link.target):
            if node in self.errors:
                problems.append(f"{node}: {self.errors[node]}")
        return Check(
            link_subject(link.source, link.target),
            "load",
            "fail" if problems else "pass",
            scrub(figures + (": " + "; ".join(problems) if problems else "")),
            latency_ms=link.median_ms,
            sent=link.sent,
            received=link.once,
            loss=link.lost,
            duplicates=link.duplicates,
            validity_sec=validity,
            rate=rate,
            accepted_rate=link.accepted_rate,
            throughput=link.throughput,
            p95_ms=link.p95_ms,
            max_ms=link.max_ms,
        )

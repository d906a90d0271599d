"""`verify --failover NODE`: kill one broker while messages flow, and prove what the vendor
promises for a cluster (system-routes page, *High Availability*): "if one broker fails,
others continue operating", "clients can connect to any node", "failover is automatic", and
that the node that comes back catches up (docs/verify.md, *Failover rehearsal*).

The rehearsal, on the verify run's own probe connections (the probe user, the run's topic
space `<prefix><run-id>/failover/...`):

1. *before*: a publisher node P (the first other node) publishes 3 messages; every node,
   the victim too, must get them, or the rehearsal is inconclusive (fix verify first).
2. the victim's broker is stopped (`BrokerControl.stop`: SIGKILL on a lab, the operator's
   command elsewhere) and stays down `outage` seconds, while P publishes `rate` messages a
   second, **retained**, one topic each, from the failure until the victim has caught up.
   The remaining nodes must get every one exactly once, and 3 messages each remaining node
   publishes mid-outage must reach every other (`failover-outage`). A client of
   the victim sees its connection drop, reconnects to another node R and must get every
   message published after it subscribed there (`failover-clients`).
3. the victim's broker is started again. What P published meanwhile waits in P's link to
   the victim; the lab delivers, when the link is back, what is younger than the link's
   MESSAGE_VALIDITY_SEC and drops what is older (docs/lab-broker.md). The messages were
   retained, so what reached the victim can be read there whenever the reader connects
   (no race with the link). `failover-catch-up` passes when every message published within
   the validity window of the link's return arrived and none older than it did; messages
   within a margin of the boundary are not judged. A retained marker P publishes right
   after the start travels behind the backlog, so its arrival shows the backlog is through.
4. *after*: messages published on the victim reach every other node, and P's reach the
   victim (`failover-rejoin`). Every retained message is cleared again at the end.

Every wait is bounded; every connection is closed, also when a step fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from lotdeploy.broker.mqtt import Message, MqttConnection, MqttError
from lotdeploy.secret import Secret, scrub
from lotdeploy.verify.probe import DIRECT_TIMEOUT, Endpoint
from lotdeploy.verify.result import Check, Status

#: Messages before and after the outage, per step.
MARKS = 3
#: Seconds either side of the validity boundary a message is not judged.
MIN_MARGIN = 0.5


class BrokerControl(Protocol):
    """Stops and starts one node's broker (blocking; run in a worker thread)."""

    def stop(self, node: str) -> None: ...

    def start(self, node: str) -> None: ...


@dataclass(frozen=True)
class FailoverPlan:
    """What to rehearse: whose broker fails, for how long, under how much traffic."""

    node: str
    outage: float = 5.0
    rate: float = 20.0


@dataclass(frozen=True)
class ExerciseContext:
    """What an exercise needs of the verify run: where each node's broker is reached (as
    the probes reach it), the probe user, the run's topic space, the bounds."""

    endpoints: dict[str, Endpoint]
    username: str
    password: Secret
    root: str
    run_id: str
    timeout: float
    reconnect_allowance: float
    #: (source, target) -> the link's MESSAGE_VALIDITY_SEC
    validity: dict[tuple[str, str], int]


@dataclass(frozen=True)
class Arrival:
    kind: str
    src: str
    seq: int
    retained: bool
    at: float


@dataclass
class _Receiver:
    """Arrivals at one connection, kept by (kind, src, seq)."""

    arrivals: list[Arrival] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, msg: Message) -> None:
        try:
            doc = json.loads(msg.payload)
            arrival = Arrival(str(doc["kind"]), str(doc["src"]), int(doc["seq"]), msg.retain, 0.0)
        except (ValueError, KeyError, TypeError):
            return  # a cleared retained message (empty payload) or not ours
        self.arrivals.append(
            Arrival(arrival.kind, arrival.src, arrival.seq, arrival.retained, time.monotonic())
        )
        self.changed.set()

    def seqs(self, kind: str, src: str, *, live_only: bool = False) -> dict[int, int]:
        """seq -> how often it arrived."""
        found: dict[int, int] = defaultdict(int)
        for a in self.arrivals:
            if a.kind == kind and a.src == src and (a.retained is False or not live_only):
                found[a.seq] += 1
        return found

    def first(self, kind: str, src: str, seq: int) -> float | None:
        return next(
            (a.at for a in self.arrivals if (a.kind, a.src, a.seq) == (kind, src, seq)), None
        )


class FailoverRun:
    """One rehearsal; `run()` returns its checks (subject: the victim)."""

    def __init__(self, plan: FailoverPlan, control: BrokerControl, ctx: ExerciseContext) -> None:
        self.plan = plan
        self.control = control
        self.ctx = ctx
        self.victim = plan.node
        self.others = sorted(n for n in ctx.endpoints if n != plan.node)
        self.publisher = self.others[0] if self.others else ""
        self.roam = self.others[1] if len(self.others) > 1 else self.publisher
        self.topics: set[str] = set()
        self.conns: list[MqttConnection] = []

    # -- connections ----------------------------------------------------------------------

    async def _connect(
        self, node: str, label: str, receiver: _Receiver, patience: float | None = None
    ) -> MqttConnection:
        """Connect as the probe user and subscribe to the rehearsal's topics; retried until
        `patience` (default: the run's timeout) runs out (a restarted broker needs a moment)."""
        end = self.ctx.endpoints[node]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (patience if patience is not None else self.ctx.timeout)
        tries = [True, False] if end.fallback is not None else [True]
        last = "no attempt"
        for _ in range(1000):  # bounded in count as well as in time
            for direct in tries:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise MqttError(f"cannot reach {node}'s broker: {last}")
                host, port = (end.host, end.port) if direct else end.fallback or ("", 0)
                conn = MqttConnection(
                    host,
                    port,
                    client_id=f"lotdeploy-failover-{self.ctx.run_id}-{label}"[:64],
                    username=self.ctx.username,
                    password=self.ctx.password,
                    tls=end.tls if direct else None,
                    server_hostname=end.server_hostname if direct else None,
                    keepalive=5,
                    connect_timeout=max(0.2, min(remaining, DIRECT_TIMEOUT)),
                    on_message=receiver,
                    max_inflight=200,
                )
                try:
                    await conn.connect()
                    codes = await conn.subscribe([(f"{self.ctx.root}/#", 1)], self.ctx.timeout)
                except MqttError as exc:
                    last = scrub(str(exc))
                    await conn.close()
                    continue
                if codes and codes[0] == 0x80:
                    await conn.close()
                    raise MqttError(f"{node}: subscription refused to the probe user")
                self.conns.append(conn)
                return conn
            await asyncio.sleep(0.2)
        raise MqttError(f"cannot reach {node}'s broker: {last}")

    async def _publish(
        self, conn: MqttConnection, kind: str, src: str, seq: int, retain: bool = False
    ) -> None:
        topic = f"{self.ctx.root}/{kind}/{src}/{seq}"
        if retain:
            self.topics.add(topic)
        payload = json.dumps({"kind": kind, "src": src, "seq": seq, "run": self.ctx.run_id})
        await conn.publish(Message(topic, payload.encode(), 1, retain), self.ctx.timeout)

    async def _await(
        self, check: Callable[[], bool], receivers: list[_Receiver], bound: float
    ) -> bool:
        """Wait (bounded) until `check()` holds, waking on every arrival."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        for _ in range(100_000):
            if check():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            for r in receivers:
                r.changed.clear()
            waits = [asyncio.ensure_future(r.changed.wait()) for r in receivers]
            await asyncio.wait(waits, timeout=min(remaining, 0.2))
            for w in waits:
                w.cancel()
        return check()

    # -- the rehearsal --------------------------------------------------------------------

    async def run(self) -> list[Check]:
        if self.victim not in self.ctx.endpoints:
            return [
                self._check(
                    "failover-outage",
                    "inconclusive",
                    f"not rehearsed: verify cannot reach {self.victim}'s broker (see its checks)",
                )
            ]
        if not self.others:
            return [self._check("failover-outage", "inconclusive", "no other node to fail over to")]
        try:
            return await self._rehearse()
        except MqttError as exc:
            return [self._check("failover-outage", "inconclusive", scrub(f"rehearsal: {exc}"))]
        finally:
            await self._clear()
            for conn in self.conns:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _check(self, kind: str, status: Status, reason: str) -> Check:
        return Check(self.victim, kind, status, scrub(reason))

    async def _rehearse(self) -> list[Check]:
        victim, pub = self.victim, self.publisher
        nodes = [victim, *self.others]
        receivers = {n: _Receiver() for n in nodes}
        conns = {n: await self._connect(n, n, receivers[n]) for n in nodes}

        # 1. before
        for k in range(MARKS):
            await self._publish(conns[pub], "before", pub, k)
        everyone = lambda: all(  # noqa: E731
            len(receivers[n].seqs("before", pub)) == MARKS for n in nodes
        )
        if not await self._await(everyone, list(receivers.values()), self.ctx.timeout):
            missing = [n for n in nodes if len(receivers[n].seqs("before", pub)) < MARKS]
            return [
                self._check(
                    kind,
                    "inconclusive",
                    f"before the failover, messages published on {pub} did not reach "
                    f"{', '.join(missing)}: fix what verify reports first",
                )
                for kind in ("failover-outage", "failover-clients", "failover-catch-up")
            ]

        # 2. the victim's broker fails; P keeps publishing, its client moves to R
        killed_at = time.monotonic()
        await asyncio.to_thread(self.control.stop, victim)
        stopped_at = time.monotonic()
        client = _Receiver()
        roam = asyncio.ensure_future(self._roam(conns[victim], client))
        sent_at: dict[int, float] = {}
        enough = asyncio.Event()
        # P publishes from the failure until the victim has caught up (so that messages
        # published just before its link came back are there to be judged), bounded
        limit = self.plan.outage + 3 * self.ctx.reconnect_allowance + 3 * self.ctx.timeout + 10
        publishing = asyncio.ensure_future(
            self._keep_publishing(conns[pub], sent_at, enough, limit)
        )
        # meanwhile every remaining node delivers to every other: each publishes its own
        await asyncio.sleep(max(0.0, min(self.plan.outage / 2, 1.0)))
        for node in self.others:
            for k in range(MARKS):
                await self._publish(conns[node], "during", node, k)
        mesh = await self._await(
            lambda: all(
                len(receivers[n].seqs("during", src)) == MARKS
                for n in self.others
                for src in self.others
            ),
            [receivers[n] for n in self.others],
            self.ctx.timeout,
        )
        rest = killed_at + self.plan.outage - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)

        # 3. it comes back; P's link delivers what is still valid, behind it the marker
        await asyncio.to_thread(self.control.start, victim)
        ready_at = time.monotonic()
        await self._publish(conns[pub], "marker", pub, 0, retain=True)
        reader = _Receiver()
        try:
            back = await self._connect(
                victim, f"{victim}-back", reader, self.ctx.timeout + self.ctx.reconnect_allowance
            )
            marker_bound = 2 * self.ctx.reconnect_allowance + self.ctx.timeout + 5
            marked = await self._await(
                lambda: reader.first("marker", pub, 0) is not None, [reader], marker_bound
            )
            marker_at = reader.first("marker", pub, 0) or time.monotonic()
        finally:
            enough.set()
            publish_errors = await publishing
        count = len(sent_at)
        dropped, subscribed_at, roam_error = await roam
        remaining = [receivers[n] for n in self.others]
        await self._await(
            lambda: all(len(r.seqs("outage", pub, live_only=True)) == count for r in remaining),
            remaining,
            self.ctx.timeout,
        )
        await self._await(  # what P sent after the marker reaches the victim live
            lambda: len(reader.seqs("outage", pub)) >= count, [reader], 1.0
        )

        # 4. after: the victim publishes again, and receives again
        for k in range(MARKS):
            await self._publish(back, "after", victim, k)
            await self._publish(conns[pub], "after", pub, k)
        rejoined = await self._await(
            lambda: (
                all(len(receivers[n].seqs("after", victim)) == MARKS for n in self.others)
                and len(reader.seqs("after", pub)) == MARKS
            ),
            [reader, *remaining],
            self.ctx.timeout,
        )

        checks = [
            self._outage_check(receivers, count, stopped_at - killed_at, publish_errors, mesh),
            self._client_check(
                client, sent_at, count, dropped, subscribed_at, roam_error, killed_at
            ),
            self._catch_up_check(reader, sent_at, ready_at, marker_at, marked, stopped_at),
            self._rejoin_check(receivers, reader, rejoined),
        ]
        return checks

    async def _keep_publishing(
        self, conn: MqttConnection, sent_at: dict[int, float], enough: asyncio.Event, limit: float
    ) -> list[BaseException]:
        """Publish `rate` retained messages a second until `enough` (or `limit` seconds);
        returns the publishes that failed."""
        pending = []
        began = time.monotonic()
        for seq in range(int(limit * self.plan.rate) + 1):  # bounded in count and time
            if enough.is_set() or time.monotonic() - began > limit:
                break
            sent_at[seq] = time.monotonic()
            pending.append(
                asyncio.ensure_future(
                    self._publish(conn, "outage", self.publisher, seq, retain=True)
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), 1 / self.plan.rate)
        results = await asyncio.gather(*pending, return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    async def _roam(
        self, old: MqttConnection, client: _Receiver
    ) -> tuple[float | None, float | None, str | None]:
        """The victim's client: notice the drop, reconnect to R, subscribe there. Returns
        (when the drop was seen, when it was subscribed at R, what went wrong)."""
        try:
            await asyncio.wait_for(old.closed.wait(), self.ctx.timeout + 5)
        except TimeoutError:
            return None, None, f"its connection to {self.victim} did not drop"
        dropped = time.monotonic()
        try:
            await self._connect(self.roam, f"client-{self.roam}", client)
        except MqttError as exc:
            return dropped, None, str(exc)
        return dropped, time.monotonic(), None

    async def _clear(self) -> None:
        """Clear every retained message of the rehearsal: an empty retained publish on the
        publisher's connection (its links carry it to every node that got the message), on
        every other live connection only if that failed; each clear tried twice."""
        live = [c for c in self.conns if c.connected]
        for conn in live:
            failed = sorted(self.topics)
            for _ in range(2):
                clears = [
                    conn.publish(Message(topic, b"", 1, True), 3 * self.ctx.timeout)
                    for topic in failed
                ]
                results = await asyncio.gather(*clears, return_exceptions=True)
                failed = [t for t, r in zip(failed, results, strict=True) if r is not None]
                if not failed:
                    return

    # -- the verdicts ---------------------------------------------------------------------

    def _outage_check(
        self,
        receivers: dict[str, _Receiver],
        count: int,
        stop_seconds: float,
        publish_errors: list[BaseException],
        mesh: bool,
    ) -> Check:
        pub = self.publisher
        words, bad = [], False
        if not mesh:
            bad = True
            silent = [
                f"{src} → {n}"
                for src in self.others
                for n in self.others
                if len(receivers[n].seqs("during", src)) < MARKS
            ]
            words.append(f"the remaining nodes did not deliver to each other: {', '.join(silent)}")
        for node in self.others:
            got = receivers[node].seqs("outage", pub, live_only=True)
            lost = count - len(got)
            dups = sum(n - 1 for n in got.values())
            if lost or dups:
                bad = True
                words.append(f"{node} missed {lost} and got {dups} twice")
        if publish_errors:
            bad = True
            words.append(f"{len(publish_errors)} publish(es) on {pub} failed")
        where = ", ".join(self.others)
        if bad:
            return self._check(
                "failover-outage",
                "fail",
                f"while {self.victim}'s broker was down: " + "; ".join(words),
            )
        return self._check(
            "failover-outage",
            "pass",
            f"{self.victim}'s broker stopped in {stop_seconds * 1000:.0f} ms, down for "
            f"{self.plan.outage:g} s; the {count} message(s) published on {pub} from the "
            f"failure until {self.victim} had caught up reached every remaining node "
            f"({where}) exactly once, and each remaining node's own reached every other",
        )

    def _client_check(
        self,
        client: _Receiver,
        sent_at: dict[int, float],
        count: int,
        dropped: float | None,
        subscribed_at: float | None,
        error: str | None,
        killed_at: float,
    ) -> Check:
        if error is not None or dropped is None or subscribed_at is None:
            return self._check(
                "failover-clients", "fail", f"a client of {self.victim}: {error or 'no reconnect'}"
            )
        after = [s for s in range(count) if sent_at[s] > subscribed_at]
        got = client.seqs("outage", self.publisher, live_only=True)
        lost = [s for s in after if s not in got]
        dups = sum(got[s] - 1 for s in after if s in got)
        words = (
            f"a client of {self.victim} saw its connection drop "
            f"{max(0.0, dropped - killed_at) * 1000:.0f} ms after the failure and was "
            f"subscribed on {self.roam} {(subscribed_at - dropped) * 1000:.0f} ms later"
        )
        if lost or dups:
            return self._check(
                "failover-clients",
                "fail",
                f"{words}, and of the {len(after)} message(s) published since it missed "
                f"{len(lost)} and got {dups} twice",
            )
        return self._check(
            "failover-clients",
            "pass",
            f"{words}, and got all {len(after)} message(s) published since, once each",
        )

    def _catch_up_check(
        self,
        reader: _Receiver,
        sent_at: dict[int, float],
        ready_at: float,
        marker_at: float,
        marked: bool,
        stopped_at: float,
    ) -> Check:
        validity = self.ctx.validity.get((self.publisher, self.victim))
        if validity is None:
            return self._check(
                "failover-catch-up", "inconclusive", f"no link {self.publisher} → {self.victim}"
            )
        if not marked:
            return self._check(
                "failover-catch-up",
                "fail",
                f"{self.publisher}'s link to {self.victim} did not deliver again within "
                f"{2 * self.ctx.reconnect_allowance + self.ctx.timeout + 5:g} s of its return",
            )
        margin = max(MIN_MARGIN, 0.05 * validity)
        got = set(reader.seqs("outage", self.publisher))
        stale = [s for s, t in sent_at.items() if t < ready_at - validity - margin]
        fresh = [s for s, t in sent_at.items() if t > marker_at - validity + margin]
        near = len(sent_at) - len(stale) - len(fresh)
        missing = [s for s in fresh if s not in got]
        revived = [s for s in stale if s in got]
        back = ready_at - stopped_at
        lead = (
            f"{self.victim} was back after {back:.1f} s; {self.publisher}'s link (validity "
            f"{validity} s) delivered again {max(0.0, marker_at - ready_at):.1f} s later"
        )
        if missing or revived:
            parts = []
            if missing:
                parts.append(f"{len(missing)} of {len(fresh)} message(s) still valid never came")
            if revived:
                parts.append(f"{len(revived)} message(s) older than {validity} s arrived anyway")
            return self._check("failover-catch-up", "fail", f"{lead}: " + "; ".join(parts))
        older = (
            f"none of the {len(stale)} older one(s) did"
            if stale
            else f"none was older than {validity} s (to see expiry, make --outage longer "
            f"than the link's MESSAGE_VALIDITY_SEC)"
        )
        tail = f"; {near} within {margin:g} s of the limit not judged" if near else ""
        return self._check(
            "failover-catch-up",
            "pass",
            f"{lead}: all {len(fresh)} message(s) published within the validity window "
            f"arrived, {older}{tail}",
        )

    def _rejoin_check(
        self, receivers: dict[str, _Receiver], reader: _Receiver, rejoined: bool
    ) -> Check:
        if rejoined:
            return self._check(
                "failover-rejoin",
                "pass",
                f"after its return, messages published on {self.victim} reached "
                f"{', '.join(self.others)}, and {self.publisher}'s reached {self.victim}",
            )
        missing = [n for n in self.others if len(receivers[n].seqs("after", self.victim)) < MARKS]
        words = [f"{self.victim}'s messages did not reach {', '.join(missing)}"] if missing else []
        if len(reader.seqs("after", self.publisher)) < MARKS:
            words.append(f"{self.publisher}'s did not reach {self.victim}")
        return self._check("failover-rejoin", "fail", "after its return: " + "; ".join(words))

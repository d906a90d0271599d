"""An independent observer of a cluster's delivery: paho-mqtt only, none of lotdeploy's code.

On every node a publisher sends a numbered stream (QoS 1, each publish acknowledged before
the next) and a subscriber counts what it gets from every node, its own included. Used
while something changes the cluster (a take-over, a rename): every message must reach
every node exactly once. Bounded in count and time; talks only to the addresses given
(the lab's).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

#: At most this many messages per publisher, whatever the run's length.
MAX_MESSAGES = 20_000
#: How long a publish may wait for its acknowledgement, and a connect for its CONNACK.
WAIT = 5.0


@dataclass
class Tally:
    """What was sent and got: sent[src] messages numbered 0..n-1; got[(src, dst)] counts."""

    sent: dict[str, int] = field(default_factory=dict)
    got: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)
    #: publishes that were not acknowledged (the publisher's own broker was unreachable)
    unacked: dict[str, int] = field(default_factory=dict)

    def missing(self) -> dict[tuple[str, str], int]:
        return {
            (src, dst): sum(1 for seq in range(n) if self.got.get((src, dst), Counter())[seq] == 0)
            for src, n in self.sent.items()
            for dst in self.sent
        }

    def duplicated(self) -> dict[tuple[str, str], int]:
        return {
            pair: sum(count - 1 for count in seqs.values() if count > 1)
            for pair, seqs in self.got.items()
        }

    @property
    def exactly_once(self) -> bool:
        return not any(self.missing().values()) and not any(self.duplicated().values())

    def summary(self) -> str:
        lost = sum(self.missing().values())
        twice = sum(self.duplicated().values())
        sent = sum(self.sent.values())
        deliveries = sent * len(self.sent)
        return (
            f"{sent} messages published on {len(self.sent)} nodes, {deliveries} deliveries "
            f"expected: {lost} missing, {twice} duplicated"
        )


class Observer:
    """Start with `start()`, end with `stop()` (which drains and returns the Tally)."""

    def __init__(
        self,
        endpoints: dict[str, tuple[str, int]],
        username: str,
        password: str,
        rate: float = 20.0,
    ) -> None:
        self.endpoints = endpoints
        self.username = username
        self.password = password
        self.period = 1.0 / rate
        self.root = f"observer/{uuid.uuid4().hex[:8]}"
        self.tally = Tally(sent=dict.fromkeys(endpoints, 0), unacked=dict.fromkeys(endpoints, 0))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribers: dict[str, mqtt.Client] = {}
        self._publishers: dict[str, mqtt.Client] = {}
        self._threads: list[threading.Thread] = []

    def _client(self, role: str, node: str) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"observer-{role}-{node}-{uuid.uuid4().hex[:6]}",
            clean_session=True,
        )
        client.username_pw_set(self.username, self.password)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p=None: connected.set()
        host, port = self.endpoints[node]
        client.connect(host, port, keepalive=30)
        client.loop_start()
        if not connected.wait(WAIT):
            client.loop_stop()
            raise AssertionError(f"observer: no CONNACK from {node} ({host}:{port})")
        return client

    def start(self) -> None:
        for node in self.endpoints:
            client = self._client("sub", node)
            client.on_message = self._receiver(node)
            result, _ = client.subscribe(f"{self.root}/#", qos=1)
            assert result == mqtt.MQTT_ERR_SUCCESS
            self._subscribers[node] = client
        time.sleep(0.5)  # the SUBACKs
        for node in self.endpoints:
            self._publishers[node] = self._client("pub", node)
            thread = threading.Thread(target=self._publish, args=(node,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _receiver(self, node: str):  # type: ignore[no-untyped-def]
        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            src, _, seq = msg.payload.decode().partition(":")
            with self._lock:
                self.tally.got.setdefault((src, node), Counter())[int(seq)] += 1

        return on_message

    def _publish(self, node: str) -> None:
        client = self._publishers[node]
        for seq in range(MAX_MESSAGES):
            if self._stop.is_set():
                return
            info = client.publish(f"{self.root}/{node}", f"{node}:{seq}".encode(), qos=1)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(WAIT)
            try:
                published = info.is_published()
            except (RuntimeError, ValueError):  # the client lost its connection
                published = False
            with self._lock:
                self.tally.sent[node] = seq + 1
                if not published:
                    self.tally.unacked[node] += 1
            time.sleep(self.period)

    def stop(self, drain: float = 5.0) -> Tally:
        """Stop publishing, wait (bounded) until every message reached every node, close."""
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT * 2)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            with self._lock:
                if not any(self.tally.missing().values()):
                    break
            time.sleep(0.1)
        for client in [*self._publishers.values(), *self._subscribers.values()]:
            client.disconnect()
            client.loop_stop()
        return self.tally

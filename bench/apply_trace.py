"""Where `lotdeploy apply`, `drift` and `plan --refresh` spend their time on each node, and
how many round trips they make: runs the real CLI in this process with every SSH and broker
call wrapped (counted and timed), then prints one line per kind of call.

    LOTDEPLOY_PASSPHRASE=... .venv/bin/python bench/apply_trace.py apply SITE --auto-approve

The counts do not depend on the machine's load (the timings do): they are the figures that
prove a round trip saved. `TRACE_TIMELINE=NODE` also prints that node's calls in order with their
start and end (ms): the critical path, read off. "Calls per node" is the median over nodes. Kinds:

- `ssh connect`, `ssh run <first word>`, `ssh put`, `ssh get`, `ssh forward`: transport calls
  (a `run` is one exec channel: at least one round trip; a `put` several SFTP requests);
- `mqtt connect`: an MQTT login (CONNECT/CONNACK, then the session's SUBSCRIBE);
- `broker -<verb>`: one command and its reply;
- `broker watch <topic>`: a SUBSCRIBE, a retained message, an UNSUBSCRIBE.
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lotdeploy.broker import mqtt, session
from lotdeploy.transport import ssh

_lock = threading.Lock()
_node_of_thread: dict[int, str] = {}
calls: dict[tuple[str, str], list[float]] = collections.defaultdict(list)


_T0 = time.perf_counter()
#: TRACE_TIMELINE=eu1: also print that node's calls in order, with start and end times (ms),
#: so the critical path (what waits on what) can be read off
_TIMELINE = os.environ.get("TRACE_TIMELINE", "")


def _note(node: str, kind: str, seconds: float) -> None:
    with _lock:
        calls[(node, kind)].append(seconds)
        if node == _TIMELINE:
            end = (time.perf_counter() - _T0) * 1000
            print(f"  {end - seconds * 1000:7.0f} {end:7.0f}  {node} {kind}", file=sys.stderr)


def _thread_node(node: str | None = None) -> str:
    ident = threading.get_ident()
    if node is not None:
        _node_of_thread[ident] = node
    return _node_of_thread.get(ident, "?")


def _wrap(cls: Any, name: str, kind: Callable[..., str], node: Callable[[Any], str]) -> None:
    original = getattr(cls, name)

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        who = node(self)
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _note(who, kind(*args, **kwargs), time.perf_counter() - started)

    setattr(cls, name, timed)


def _wrap_async(cls: Any, name: str, kind: Callable[..., str], node: Callable[[Any], str]) -> None:
    original = getattr(cls, name)

    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        who = node(self)
        started = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            _note(who, kind(*args, **kwargs), time.perf_counter() - started)

    setattr(cls, name, timed)


def _wrap_forward() -> None:
    original = ssh.SshTransport.forward

    @contextlib.contextmanager
    def forward(self: ssh.SshTransport, host: str, port: int) -> Iterator[int]:
        _thread_node(self.node)
        started = time.perf_counter()
        with original(self, host, port) as local:
            _note(self.node, "ssh forward", time.perf_counter() - started)
            yield local

    ssh.SshTransport.forward = forward  # type: ignore[method-assign]


def _wrap_state() -> None:
    """The state document's transactions (lock, read, write, fsync), under "(state)"."""
    from lotdeploy import state

    original = state.StateStore.transaction

    @contextlib.contextmanager
    def transaction(self: state.StateStore) -> Iterator[state.State]:
        started = time.perf_counter()
        with original(self) as document:
            yield document
        _note("(state)", "state transaction", time.perf_counter() - started)

    state.StateStore.transaction = transaction  # type: ignore[method-assign]
    _wrap(state.StateStore, "read", lambda *a, **k: "state read", lambda s: "(state)")


def install() -> None:
    _wrap_state()

    def ssh_node(t: ssh.SshTransport) -> str:
        return _thread_node(t.node)

    _wrap(ssh.SshTransport, "connect", lambda *a, **k: "ssh connect", ssh_node)
    _wrap(
        ssh.SshTransport,
        "run",
        lambda command, **k: f"ssh run {command.split()[0] if command.split() else ''}",
        ssh_node,
    )
    _wrap(ssh.SshTransport, "put", lambda *a, **k: "ssh put", ssh_node)
    _wrap(ssh.SshTransport, "get", lambda *a, **k: "ssh get", ssh_node)
    _wrap_forward()
    _wrap_async(
        session.BrokerClient,
        "command",
        lambda verb, *a, **k: f"broker -{str(verb).lstrip('-')}",
        lambda c: c.node_name,
    )
    _wrap_async(
        session.BrokerClient,
        "_watch_once",
        lambda topic, *a, **k: "broker watch " + "/".join(topic.split("/")[:3]) + "/…",
        lambda c: c.node_name,
    )
    if hasattr(session.BrokerClient, "_watch_many"):
        _wrap_async(
            session.BrokerClient,
            "_watch_many",
            lambda topics, *a, **k: f"broker watch {len(topics)} topics at once",
            lambda c: c.node_name,
        )
    _wrap_async(
        mqtt.MqttConnection, "connect", lambda *a, **k: "mqtt connect", lambda c: _thread_node()
    )


def report(wall: float) -> str:
    nodes = sorted({n for n, _ in calls if not n.startswith("(")})
    kinds = sorted({k for n, k in calls if not n.startswith("(")})
    lines = [f"wall {wall:.2f} s, {len(nodes)} node(s)"]
    lines.append(f"{'call':44s} {'per node':>8s} {'total':>6s} {'median s':>9s} {'sum s':>7s}")
    total_per_node: dict[str, int] = collections.Counter()
    for kind in kinds:
        per_node = [len(calls.get((n, kind), [])) for n in nodes]
        times = [t for n in nodes for t in calls.get((n, kind), [])]
        for n in nodes:
            total_per_node[n] += len(calls.get((n, kind), []))
        lines.append(
            f"{kind[:44]:44s} {statistics.median(per_node):8g} {sum(per_node):6d} "
            f"{statistics.median(times):9.3f} {sum(times):7.2f}"
        )
    per = [total_per_node[n] for n in nodes]
    lines.append(f"{'all calls (mqtt connect counted too)':44s} {statistics.median(per):8g}")
    for (who, kind), times in sorted(calls.items()):
        if who.startswith("("):
            lines.append(
                f"{kind:44s} {'':8s} {len(times):6d} {statistics.median(times):9.3f} "
                f"{sum(times):7.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    install()
    from lotdeploy.cli import main as cli

    started = time.perf_counter()
    code = 0
    try:
        cli(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    print(report(time.perf_counter() - started), file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()

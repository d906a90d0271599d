"""A node session's background connect (`Sessions.warm`): bounded, raised where needed,
never racing a call, and cleaned up when the command ends before it needs the node.

The transport is a fake that blocks and fails on cue: what is under test is the session's
threading, which a real handshake could not time precisely (the real one is exercised by
tests/test_transport_openssh.py's warm test).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lotdeploy.model import Node
from lotdeploy.node.session import WARM_JOIN_SECONDS, Sessions
from lotdeploy.spec import load_site
from lotdeploy.transport.base import RunResult, Transport, TransportError

INVENTORIES = Path(__file__).parent.parent / "inventories"


class Cued(Transport):
    """Records its calls; `connect` waits for `go` and then raises `fails` (if set)."""

    active = 0
    most = 0
    counter = threading.Lock()

    def __init__(self, node: Node, go: threading.Event, fails: Exception | None) -> None:
        self.node = node.name
        self.go = go
        self.fails = fails
        self.calls: list[str] = []

    def connect(self) -> None:
        with Cued.counter:
            Cued.active += 1
            Cued.most = max(Cued.most, Cued.active)
        try:
            self.calls.append("connect")
            assert self.go.wait(10)
            if self.fails is not None:
                fails, self.fails = self.fails, None  # the next attempt succeeds
                raise fails
        finally:
            with Cued.counter:
                Cued.active -= 1

    def run(
        self,
        command: str,
        *,
        timeout: float = 10,
        check: bool = True,
        input: bytes | None = None,
    ) -> RunResult:
        self.calls.append(f"run {command}")
        return RunResult(command, 0, "", "")

    def put(self, data: bytes, path: str, mode: int) -> None:
        self.calls.append("put")

    def get(self, path: str, max_bytes: int = 1 << 24) -> bytes | None:
        self.calls.append("get")
        return None

    @contextlib.contextmanager
    def forward(self, remote_host: str, remote_port: int) -> Iterator[int]:
        self.calls.append("forward")
        yield 1

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def cued(tmp_path: Path) -> Iterator[tuple[Sessions, dict[str, Cued], threading.Event]]:
    site_file = tmp_path / "site.yaml"
    shutil.copy(INVENTORIES / "geo.yaml", site_file)
    site = load_site(site_file).site
    go = threading.Event()
    made: dict[str, Cued] = {}
    fails: dict[str, Exception] = {}

    def factory(node: Node) -> Transport:
        made[node.name] = Cued(node, go, fails.pop(node.name, None))
        return made[node.name]

    sessions = Sessions(site, factory)
    sessions.fails = fails  # type: ignore[attr-defined]
    Cued.active = Cued.most = 0
    try:
        yield sessions, made, go
    finally:
        go.set()
        sessions.close()


def test_background_connects_are_bounded_and_a_call_waits_for_its_own(
    cued: tuple[Sessions, dict[str, Cued], threading.Event],
) -> None:
    sessions, made, go = cued
    nodes = sessions.site.nodes[:3]
    sessions.warm(nodes, parallelism=2)
    time.sleep(0.3)
    assert Cued.active == 2  # the third waits for a slot
    answer: list[RunResult] = []
    caller = threading.Thread(target=lambda: answer.append(sessions(nodes[0]).run("true")))
    caller.start()
    time.sleep(0.3)
    assert not answer  # the call waits for the connect under way: never beside it
    go.set()
    caller.join(5)
    assert answer and answer[0].ok
    for node in nodes:
        sessions(node).connect()
    assert Cued.most == 2
    assert made[nodes[0].name].calls == ["connect", "run true", "connect"]
    assert [made[n.name].calls for n in nodes[1:]] == [["connect", "connect"]] * 2


@pytest.mark.parametrize(
    "error",
    [
        TransportError("eu1", "cannot connect: refused"),
        subprocess.TimeoutExpired(["ssh", "-O", "check"], 5),  # not a lotdeploy error
    ],
    ids=["transport error", "any other"],
)
def test_the_background_error_is_raised_once_by_the_call_that_needs_the_node(
    cued: tuple[Sessions, dict[str, Cued], threading.Event], error: Exception
) -> None:
    sessions, made, go = cued
    node = sessions.site.nodes[0]
    sessions.fails[node.name] = error  # type: ignore[attr-defined]
    sessions.warm([node], parallelism=1)
    go.set()
    with pytest.raises(type(error)) as raised:
        sessions(node).run("true")
    assert raised.value is error
    assert made[node.name].calls == ["connect"]  # nothing ran on a connection not made
    sessions(node).connect()  # the next phase tries again (and this time succeeds)
    sessions(node).run("true")
    assert made[node.name].calls == ["connect", "connect", "run true"]


def test_a_command_ending_before_it_needs_the_nodes_waits_a_moment_and_leaves_nothing(
    cued: tuple[Sessions, dict[str, Cued], threading.Event],
) -> None:
    sessions, made, go = cued
    connecting, waiting = sessions.site.nodes[:2]
    sessions.warm([connecting, waiting], parallelism=1)
    time.sleep(0.2)
    started = time.monotonic()
    sessions.close()  # e.g. the operator answered no
    assert time.monotonic() - started < 2 * WARM_JOIN_SECONDS + 1
    assert made[connecting.name].calls == ["connect"]  # still under way
    go.set()  # the handshake ends after the command: it closes what it opened
    deadline = time.monotonic() + 5
    while made[connecting.name].calls != ["connect", "close"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert made[connecting.name].calls == ["connect", "close"]
    time.sleep(0.2)
    assert "connect" not in made[waiting.name].calls  # its turn came too late: never began

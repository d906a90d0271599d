"""High availability, proven on real processes: three lab brokers on 127.0.0.1 in a full mesh,
one killed (SIGKILL) while another keeps publishing, then started again from its state.

The rehearsal is `lotdeploy.verify.failover.FailoverRun`, the code `verify --failover` runs;
here its broker control kills and restarts the subprocess. With MESSAGE_VALIDITY_SEC 2 and
an outage of 4 s, the returning node must get what was published within 2 s of the link's
return and none of what is older (the lab's documented semantics, docs/lab-broker.md).
Also the load probe against the same mesh, and the pure advice and guard rules.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lotdeploy.errors import LotdeployError
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site_text
from lotdeploy.verify.advice import advise_load, needed_validity_under_load
from lotdeploy.verify.failover import ExerciseContext, FailoverPlan, FailoverRun
from lotdeploy.verify.load import LoadPlan, LoadRun
from lotdeploy.verify.probe import Endpoint
from lotdeploy.verify.rehearsal import require_allowed, site_kind
from tests.broker_fixtures import LabFactory, LabProc, cluster_route, lab_factory, run

HOST = "127.0.0.1"
NODES = ("n1", "n2", "n3")
PROBE_USER, PROBE_PASSWORD = "lotdeploy_probe", "probe-pass-for-tests"
CLUSTER_PASSWORD = "cluster-pass-for-tests"
VALIDITY = 2


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabFactory]:
    yield from lab_factory(tmp_path)


class ProcControl:
    """Kill (SIGKILL) and restart one lab broker subprocess, on the same port and state."""

    def __init__(self, procs: dict[str, LabProc]) -> None:
        self.procs = procs

    def stop(self, node: str) -> None:
        self.procs[node].kill()

    def start(self, node: str) -> None:
        proc = self.procs[node]
        proc.start(port=proc.port)


def mesh(lab: LabFactory, tmp_path: Path) -> dict[str, LabProc]:
    """Three brokers with state dirs, every route of a full mesh (plain MQTT), the cluster
    and probe users on each; waits until every route is connected."""
    procs = {
        name: lab(HOST, "--state-dir", tmp_path / f"state-{name}", "--node-name", name)
        for name in NODES
    }

    async def wire() -> None:
        for proc in procs.values():
            async with proc.client() as c:
                await c.add_user("cluster", Secret(CLUSTER_PASSWORD))
                await c.add_user(PROBE_USER, Secret(PROBE_PASSWORD))
        for name, proc in procs.items():
            async with proc.client() as c:
                for peer, other in procs.items():
                    if peer != name:
                        await c.add_route(
                            cluster_route(
                                f"to_{peer}",
                                HOST,
                                other.port,
                                f"{name}-to-{peer}",
                                validity=VALIDITY,
                                password=CLUSTER_PASSWORD,
                            )
                        )
        for name, proc in procs.items():
            async with proc.client() as c:
                for peer in procs:
                    if peer != name:
                        for _ in range(100):
                            status = await c.check_route_connection(f"to_{peer}")
                            if status.get("connection") == "Connected":
                                break
                            await asyncio.sleep(0.1)

    run(wire())
    return procs


def context(procs: dict[str, LabProc], run_id: str) -> ExerciseContext:
    return ExerciseContext(
        endpoints={n: Endpoint(n, HOST, p.port) for n, p in procs.items()},
        username=PROBE_USER,
        password=Secret(PROBE_PASSWORD),
        root=f"lotdeploy/probe/{run_id}",
        run_id=run_id,
        timeout=3.0,
        reconnect_allowance=0.5,  # the brokers' --link-backoff-max
        validity={(a, b): VALIDITY for a in NODES for b in NODES if a != b},
    )


def test_a_killed_broker_fails_over_and_catches_up_within_the_validity_only(
    lab: LabFactory, tmp_path: Path
) -> None:
    procs = mesh(lab, tmp_path)
    plan = FailoverPlan("n3", outage=2 * VALIDITY, rate=20)
    checks = run(FailoverRun(plan, ProcControl(procs), context(procs, "ha-1")).run(), 90)
    by_kind = {c.kind: c for c in checks}
    assert set(by_kind) == {
        "failover-outage",
        "failover-clients",
        "failover-catch-up",
        "failover-rejoin",
    }
    for check in checks:
        assert check.status == "pass", check.reason
    # the remaining nodes, n1 (publisher, own echo) and n2, got every message once
    assert re.search(
        r"the (\d+) message\(s\) published on n1 from the failure until n3 had caught up "
        r"reached every remaining node \(n1, n2\) exactly once",
        by_kind["failover-outage"].reason,
    )
    assert "subscribed on n2" in by_kind["failover-clients"].reason
    catch_up = by_kind["failover-catch-up"].reason
    fresh = int(re.search(r"all (\d+) message\(s\) published within", catch_up).group(1))  # type: ignore[union-attr]
    stale = int(re.search(r"none of the (\d+) older", catch_up).group(1))  # type: ignore[union-attr]
    assert fresh >= 1 and stale >= 10, catch_up
    # nothing retained stays behind on any broker
    leftovers = run(_retained(procs, "lotdeploy/probe/ha-1/#"))
    assert leftovers == {}, run(_retained_topics(procs, "lotdeploy/probe/ha-1/#"))


async def _retained(procs: dict[str, LabProc], topic_filter: str) -> dict[str, int]:
    found = {}
    for name, proc in procs.items():
        async with proc.client() as c:
            got = await c.read_topics([topic_filter], timeout=1.0, quiet=0.3)
        if got:
            found[name] = len(got)
    return found


def test_the_load_probe_measures_every_link(lab: LabFactory, tmp_path: Path) -> None:
    procs = mesh(lab, tmp_path)
    checks = run(LoadRun(LoadPlan(rate=100, seconds=2), context(procs, "load-1")).run(), 60)
    assert {c.subject for c in checks} == {f"{a} → {b}" for a in NODES for b in NODES if a != b}
    for check in checks:
        assert check.status == "pass", check.reason
        assert check.sent == check.received == 200 and check.loss == 0
        assert check.throughput is not None and 80 <= check.throughput <= 120
        assert check.latency_ms is not None and check.max_ms is not None
        assert check.validity_sec == VALIDITY and check.rate == 100


def test_load_advice_rules() -> None:
    assert needed_validity_under_load(10, 500, 5) == 12  # ceil(2 × (5 + 0.08 + 0.5))
    behind = advise_load("a", "b", 1000, 300, 9000, 2, 30, 5)
    assert behind is not None and "carried 300 msg/s" in behind.message
    short = advise_load("a", "b", 100, 99, 4000, 2, 10, 5)
    assert short is not None and short.needed_sec == 19 and "at least 19" in short.message
    assert advise_load("a", "b", 100, 99, 20, 2, 30, 5) is None
    held = advise_load("a", "b", 1000, 300, 5000, 2, 30, 5, accepted_rate=310)
    assert held is not None and "a's broker took only 310 msg/s" in held.message


def test_exercises_run_on_labs_and_loopback_only_unless_the_site_is_named(
    tmp_path: Path,
) -> None:
    loopback = load_site_text(
        "site: loop\nnodes:\n"
        "  - {name: a, address: 127.0.0.1, ssh: {host: 127.0.0.1}, broker: {admin_host: 127.0.0.1}}\n"
        "  - {name: b, address: 127.0.0.2, ssh: {host: 127.0.0.2}, broker: {admin_host: 127.0.0.1}}\n",
        "loop.yaml",
        tmp_path,
    ).site
    remote = load_site_text(
        "site: prod\nnodes:\n  - {name: a, address: 10.0.0.1}\n  - {name: b, address: 10.0.0.2}\n",
        "prod.yaml",
        tmp_path,
    ).site
    assert site_kind(loopback, tmp_path / "loop.yaml") == "loopback"
    assert site_kind(remote, tmp_path / "prod.yaml") == "other"
    assert require_allowed("load", loopback, tmp_path / "loop.yaml", ("lab", "loopback"), None)
    with pytest.raises(LotdeployError, match=r"only on a lab; .*--confirm-site loop"):
        require_allowed("a failover", loopback, tmp_path / "loop.yaml", ("lab",), None)
    with pytest.raises(LotdeployError, match="--confirm-site prod"):
        require_allowed("the load probe", remote, tmp_path / "prod.yaml", ("lab", "loopback"), None)
    with pytest.raises(LotdeployError, match="does not name this site"):
        require_allowed("the load probe", remote, tmp_path / "p.yaml", ("lab",), "staging")
    assert require_allowed("a failover", remote, tmp_path / "prod.yaml", ("lab",), "prod")
    with pytest.raises(ValueError, match="at most 200000"):
        LoadPlan(rate=5000, seconds=300)


async def _retained_topics(procs: dict[str, LabProc], topic_filter: str) -> dict[str, list[str]]:
    found = {}
    for name, proc in procs.items():
        async with proc.client() as c:
            got = await c.read_topics([topic_filter], timeout=1.0, quiet=0.3)
        found[name] = sorted(got)[:30]
    return found

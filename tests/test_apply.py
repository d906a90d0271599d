"""`lotdeploy apply` against a root lab: real sshd per node, real lab brokers, real TLS, the
real CLI in subprocesses. One 3-node lab (eu1, eu2, us1) is shared by the module and brought
back to the site (`apply --refresh`, then `drift` clean) before every case that changes it;
the cut-node and dialect cases use small labs of their own. Every lab is torn down (and
proven gone) also when a case fails; every wait is bounded.

The last case greps everything the module printed or wrote for every secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lotdeploy.apply.activate import admin_password, admin_session
from lotdeploy.broker.mqtt import Message, MqttConnection
from lotdeploy.lab import labstate
from lotdeploy.lab.hosts import NODE_RELEASE_DIR, Layout
from lotdeploy.model import Site
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.state import State, StateStore
from lotdeploy.transport.base import opened
from lotdeploy.transport.ssh import SshTransport
from lotdeploy.workspace import Workspace
from tests.broker_fixtures import drain
from tests.conftest import TEST_PASSPHRASE, run_cli
from tests.lab_fixtures import lab_cli, leftovers, skip_unless_root

pytestmark = pytest.mark.root

ENV = {"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE}
#: a run that meets a held workspace gives up after 1 s instead of 10 (LOTDEPLOY_LOCK_WAIT)
QUICK_LOCK = {"LOTDEPLOY_LOCK_WAIT": "1"}
ROUTES_WAIT = 20.0
#: Everything the module's commands printed, for the secret check at the end.
OUTPUTS: list[str] = []


@dataclass
class Lab:
    dir: Path
    shape: list[tuple[str, str]]
    outputs: list[str] = field(default_factory=lambda: OUTPUTS)

    @property
    def site_file(self) -> Path:
        return Layout(self.dir).site

    @property
    def nodes(self) -> list[str]:
        return [n for n, _ in self.shape]

    def site(self, path: Path | None = None) -> Site:
        return load_site(path or self.site_file).site

    def workspace(self) -> Workspace:
        return Workspace.for_site(
            self.site_file, passphrase_provider=lambda _: Secret(ENV["LOTDEPLOY_PASSPHRASE"])
        )

    def state(self) -> State:
        return StateStore(self.workspace()).read()

    def cli(
        self, *args: str | Path, expect: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real `lotdeploy ARGS`, from the lab directory; output kept for the secret check."""
        proc = run_cli(*args, env={**ENV, **(env or {})}, cwd=self.dir)
        self.outputs += [proc.stdout, proc.stderr]
        if expect is not None:
            assert proc.returncode == expect, (
                f"lotdeploy {' '.join(map(str, args))}: exit {proc.returncode}, expected "
                f"{expect}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def variant(self, name: str, **changes: Any) -> Path:
        """A copy of the lab's site.yaml beside it with `defaults`/top-level keys changed."""
        doc = yaml.safe_load(self.site_file.read_text())
        for key, value in changes.items():
            if key in ("links",):
                doc[key] = value
            else:
                doc["defaults"][key] = value
        path = self.dir / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    @contextlib.contextmanager
    def transport(self, name: str) -> Iterator[SshTransport]:
        site = self.site()
        with opened(SshTransport.for_node(site.node(name), base_dir=site.base_dir)) as t:
            assert isinstance(t, SshTransport)
            yield t

    def routes(self, name: str) -> list[dict[str, Any]]:
        site = self.site()
        with self.transport(name) as t, admin_session(site, site.node(name), t) as client:
            return list(client.list_routes())

    def wait_mesh(self, timeout: float = ROUTES_WAIT) -> dict[str, dict[str, str]]:
        """Poll until every broker lists exactly its peers' routes, all Connected (a 1.x
        broker's text listing has names only: its routes count as connected)."""
        want = {n: {f"lotdeploy_{p}" for p in self.nodes if p != n} for n in self.nodes}
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, str]] = {}
        while True:
            seen = {
                n: {str(r["name"]): str(r.get("connection")) for r in self.routes(n)}
                for n in self.nodes
            }
            if all(
                set(seen[n]) == want[n] and set(seen[n].values()) <= {"Connected", "None"}
                for n in self.nodes
            ):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"routes not all Connected after {timeout}s: {seen}")
            time.sleep(0.5)

    def reloads(self, name: str) -> int:
        """How often the node's lab broker re-opened its TLS listener (SIGHUP)."""
        log = Layout(self.dir).node_sub(name, "broker.log").read_text(errors="replace")
        return log.count("(reloaded)")

    def releases(self, name: str) -> str:
        with self.transport(name) as t:
            return t.run(
                f"cd {NODE_RELEASE_DIR} && readlink current && ls -la --time-style=+%s releases"
            ).stdout

    def sshd_pid(self, name: str) -> int:
        return labstate.require(self.dir).pids[f"sshd:{name}"]


def events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def steps_of(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [e for e in events(proc) if e.get("event") == "step"]


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    found = [e for e in events(proc) if e.get("event") == "summary"]
    assert len(found) == 1, proc.stdout
    return found[0]


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def lab_up(base: Path, *args: str) -> Iterator[Lab]:
    """`lotdeploy lab up ARGS --dir D`, always `lab down` (and nothing left) afterwards."""
    lab_dir = base / "lab"
    try:
        up = lab_cli(lab_dir, "up", *args)
        assert up.returncode == 0, up.stderr
        state = labstate.require(lab_dir)
        yield Lab(lab_dir, state.shape())
    finally:
        down = lab_cli(lab_dir, "down")
        # the workspace (.lotdeploy) and the variants stay in lab_dir (a tmp dir); nothing of
        # the lab itself may: namespaces, links, rules, mounts, processes (bounded wait)
        deadline = time.monotonic() + 10
        left = [x for x in leftovers(lab_dir) if not x.startswith("files")]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [x for x in leftovers(lab_dir) if not x.startswith("files")]
        assert down.returncode == 0 and not left, f"lab down: {down.stderr} left {left}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    with lab_up(tmp_path_factory.mktemp("applylab"), "--regions", "eu:2,us:1") as made:
        yield made


@pytest.fixture
def converged(lab: Lab) -> Lab:
    """The shared lab as the site says (whatever an earlier case left), drift clean."""
    if lab.state().nodes:
        lab.cli("apply", lab.site_file, "--auto-approve")
        lab.cli("drift", lab.site_file)
    return lab


# -- 1. fresh apply ---------------------------------------------------------------------------


def test_fresh_apply_makes_a_working_mesh(lab: Lab) -> None:
    proc = lab.cli("apply", lab.site_file, "--auto-approve")
    assert "Apply complete: 3 node(s) changed (3 reloaded), 0 failed" in proc.stdout
    lab.wait_mesh()
    state = lab.state()
    for name in lab.nodes:
        record = state.nodes[name]
        assert set(record.routes) == {f"lotdeploy_{p}" for p in lab.nodes if p != name}
        assert record.users == ["cluster"] and not record.pending and record.release
    _messages_reach_every_node_once(lab)
    lab.cli("drift", lab.site_file)


def _messages_reach_every_node_once(lab: Lab, count: int = 5) -> None:
    site = lab.site()
    password = admin_password(site, site.node(lab.nodes[0]))
    with contextlib.ExitStack() as stack:
        ports = {}
        for name in lab.nodes:
            t = stack.enter_context(lab.transport(name))
            node = site.node(name)
            ports[name] = stack.enter_context(
                t.forward(node.broker.admin_host, node.broker.admin_port)
            )

        async def exchange() -> dict[str, Counter[str]]:
            def conn(name: str, role: str) -> MqttConnection:
                return MqttConnection(
                    "127.0.0.1",
                    ports[name],
                    client_id=f"apply-test-{role}-{name}-{time.monotonic_ns()}",
                    username="root",
                    password=password,
                    connect_timeout=5,
                )

            subs = {n: conn(n, "sub") for n in lab.nodes}
            pubs = {n: conn(n, "pub") for n in lab.nodes}
            try:
                for c in [*subs.values(), *pubs.values()]:
                    await c.connect()
                for c in subs.values():
                    await c.subscribe([("apply-test/#", 1)], 5)
                for name, pub in pubs.items():
                    for k in range(count):
                        await pub.publish(Message(f"apply-test/{name}", f"{name}:{k}".encode(), 1))
                return {
                    n: Counter(m.payload.decode() for m in await drain(s, quiet=1.5))
                    for n, s in subs.items()
                }
            finally:
                for c in [*subs.values(), *pubs.values()]:
                    with contextlib.suppress(Exception):
                        await c.close()

        got = asyncio.run(asyncio.wait_for(exchange(), 60))
    expected = Counter(f"{n}:{k}" for n in lab.nodes for k in range(count))
    for name in lab.nodes:
        assert got[name] == expected, f"{name} got {dict(got[name])}"


# -- 2. no-op ---------------------------------------------------------------------------------


def test_second_apply_is_a_no_op(converged: Lab) -> None:
    lab = converged
    before = {n: (lab.releases(n), lab.reloads(n)) for n in lab.nodes}
    serial = lab.state().serial
    proc = lab.cli("apply", lab.site_file, "--auto-approve")
    assert "No changes" in proc.stdout
    proc = lab.cli("apply", lab.site_file, "--auto-approve", "--json")
    assert steps_of(proc) == [] and summary(proc)["changed"] == []
    assert {n: (lab.releases(n), lab.reloads(n)) for n in lab.nodes} == before
    assert lab.state().serial == serial
    # a bare `apply` in the site's directory applies the latest plan, also a no-op
    lab.cli("plan", lab.site_file, expect=None)
    assert "No changes" in lab.cli("apply").stdout


# -- 3. one region pair changes ---------------------------------------------------------------


def test_a_pair_validity_change_touches_exactly_its_routes(converged: Lab) -> None:
    lab = converged
    changed = lab.variant(
        "pair.yaml", links=[{"between": ["eu1", "us1"], "message_validity_sec": 300}]
    )
    reloads = {n: lab.reloads(n) for n in lab.nodes}
    plan = json.loads(lab.cli("plan", changed, "--json", expect=None).stdout)
    keys = sorted(c["key"] for c in plan["changes"])
    assert keys == ["route/eu1/lotdeploy_us1", "route/us1/lotdeploy_eu1"]
    assert all(not step.get("reload") for step in plan["steps"].values())
    proc = lab.cli("apply", changed, "--auto-approve", "--json")
    steps = steps_of(proc)
    assert {e["node"] for e in steps} == {"eu1", "us1"}
    routes = [e for e in steps if e["step"] == "routes" and e["status"] == "ok"]
    assert sorted(e["node"] for e in routes) == ["eu1", "us1"]
    assert all("1 added" in e["detail"] for e in routes)
    assert not any("reloaded" in e.get("detail", "") for e in steps)
    assert summary(proc)["changed"] == ["eu1", "us1"]
    time.sleep(0.3)
    assert {n: lab.reloads(n) for n in lab.nodes} == reloads
    state = lab.state()
    assert state.nodes["eu1"].routes["lotdeploy_us1"]["message_validity_sec"] == 300
    assert state.nodes["eu2"].routes["lotdeploy_us1"]["message_validity_sec"] == 120
    lab.cli("drift", changed)
    lab.wait_mesh()


# -- 4. a route removed by hand ---------------------------------------------------------------


def test_a_route_removed_by_hand_is_put_back_by_a_bare_apply(converged: Lab) -> None:
    lab = converged
    site = lab.site()
    with lab.transport("eu2") as t, admin_session(site, site.node("eu2"), t) as client:
        client.remove_route("lotdeploy_us1")
    proc = lab.cli("drift", lab.site_file, expect=2)
    assert "eu2: route lotdeploy_us1: missing on the broker" in proc.stdout
    # an offline plan says what it is made from; --refresh=false keeps to the record
    proc = lab.cli("plan", lab.site_file)
    assert "offline: made from the recorded state" in proc.stdout
    proc = lab.cli("apply", lab.site_file, "--auto-approve", "--refresh=false")
    assert "No changes. The site matches the recorded state." in proc.stdout
    lab.cli("drift", lab.site_file, expect=2)
    # a bare apply reads the nodes first and puts the route back
    proc = lab.cli("apply", lab.site_file, "--auto-approve")
    assert "refresh: eu2: route lotdeploy_us1: missing on the broker" in proc.stderr
    assert (
        "+ route lotdeploy_us1" in proc.stdout and "missing on the broker: put back" in proc.stdout
    )
    assert "1 node(s) changed (0 reloaded)" in proc.stdout
    lab.cli("drift", lab.site_file)
    lab.wait_mesh()
    assert (
        "No changes. The live nodes run what the site says."
        in lab.cli("apply", lab.site_file, "--auto-approve").stdout
    )


# -- 5. a stale saved plan --------------------------------------------------------------------


def test_a_stale_saved_plan_is_refused_with_the_reason(converged: Lab) -> None:
    lab = converged
    edited = lab.variant("edited.yaml", message_validity_sec=45)
    saved = lab.dir / "edited.plan"
    lab.cli("plan", edited, "--out", saved, expect=None)
    serial = lab.state().serial
    lab.variant("edited.yaml", message_validity_sec=46)  # the site moves on
    proc = lab.cli("apply", saved, expect=1)
    assert "the saved plan is stale, nothing was applied" in proc.stderr
    assert "the site spec changed since the plan was made" in proc.stderr
    assert lab.state().serial == serial
    assert lab.state().nodes["eu1"].routes["lotdeploy_eu2"]["message_validity_sec"] == 30

    lab.variant("edited.yaml", message_validity_sec=45)
    lab.cli("plan", edited, "--out", saved, expect=None)
    lab.cli("apply", edited, "--auto-approve")  # another apply: the state moves on
    serial = lab.state().serial
    proc = lab.cli("apply", saved, expect=1)
    assert "the state moved on since the plan was made" in proc.stderr
    assert "no longer ~ route lotdeploy_eu2 on eu1" in proc.stderr
    assert lab.state().serial == serial


# -- 6. a node cut off mid-apply --------------------------------------------------------------


def test_a_cut_node_fails_alone_and_a_rerun_converges(tmp_path: Path) -> None:
    skip_unless_root()
    with lab_up(tmp_path, "--nodes", "3") as lab:
        lab.cli("plan", lab.site_file, expect=None)
        assert lab_cli(lab.dir, "cut", "node3").returncode == 0
        started = time.monotonic()
        proc = lab.cli("apply", lab.site_file, "--auto-approve", expect=1)
        assert time.monotonic() - started < 30
        assert "node node3: files failed: node node3: cannot connect to" in proc.stderr
        assert "2 node(s) changed" in proc.stdout and "1 failed" in proc.stdout
        state = lab.state()
        for name in ("node1", "node2"):
            assert set(state.nodes[name].routes) == {
                f"lotdeploy_{p}" for p in lab.nodes if p != name
            }
            assert state.nodes[name].users == ["cluster"] and not state.nodes[name].pending
        cut = state.nodes["node3"]
        assert not cut.routes and not cut.users and not cut.files and cut.release is None
        assert lab_cli(lab.dir, "heal", "node3").returncode == 0
        proc = lab.cli("apply", lab.site_file, "--auto-approve")
        assert "node3" in proc.stdout
        lab.cli("drift", lab.site_file)
        lab.wait_mesh()


# -- 7. an interrupted run is resumed ---------------------------------------------------------


def test_an_interrupted_reload_is_done_by_the_next_apply(converged: Lab) -> None:
    lab = converged
    with StateStore(lab.workspace()).transaction() as state:
        state.nodes["eu2"].pending = ["reload", "activate"]
    proc = lab.cli("plan", lab.site_file, expect=None)
    assert "node eu2: an earlier apply was interrupted there (reload, activate pending)" in (
        proc.stdout + proc.stderr
    ) or "node eu2: an earlier apply was interrupted there (activate, reload pending)" in (
        proc.stdout + proc.stderr
    )
    reloads = {n: lab.reloads(n) for n in lab.nodes}
    proc = lab.cli("apply", lab.site_file, "--auto-approve", "--json")
    files = [e for e in steps_of(proc) if e["step"] == "files" and e["status"] == "ok"]
    assert [e["node"] for e in files] == ["eu2"] and "reloaded" in files[0]["detail"]
    assert summary(proc)["changed"] == ["eu2"]
    wait_for(lambda: lab.reloads("eu2") == reloads["eu2"] + 1, 10, "eu2's broker to reload")
    assert {n: lab.reloads(n) for n in ("eu1", "us1")} == {n: reloads[n] for n in ("eu1", "us1")}
    assert not any(r.pending for r in lab.state().nodes.values())
    assert "No changes" in lab.cli("apply", lab.site_file, "--auto-approve").stdout


# -- 8. the workspace lock --------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from lotdeploy.workspace import Workspace
with Workspace(Path(sys.argv[1])).lock("apply"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_concurrent_apply_is_refused_by_the_lock(converged: Lab) -> None:
    lab = converged
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lab.workspace().root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        proc = lab.cli("apply", lab.site_file, "--auto-approve", expect=1, env=QUICK_LOCK)
        assert time.monotonic() - started < 15
        assert "is in use by another lotdeploy run" in proc.stderr
        assert f"pid {holder.pid}" in proc.stderr, proc.stderr
        found = re.search(r"lotdeploy force-unlock (\S+) SITE", proc.stderr)
        assert found, proc.stderr
        # its holder is alive: breaking the lock needs --force (tests/test_convergence.py)
        proc = lab.cli("force-unlock", found.group(1), lab.site_file, "--force")
        assert "removed the lock held as" in proc.stdout
    finally:
        holder.kill()
        holder.wait(10)
    assert "No changes" in lab.cli("apply", lab.site_file, "--auto-approve").stdout


# -- 9. a changed host key --------------------------------------------------------------------


def test_a_host_key_mismatch_fails_that_node_only(converged: Lab) -> None:
    lab = converged
    known_hosts = Layout(lab.dir).known_hosts
    original = known_hosts.read_text()
    keys = {line.split()[0]: line.split(maxsplit=1)[1] for line in original.splitlines()}
    site = lab.site()
    us1, eu1 = site.node("us1").ssh.host, site.node("eu1").ssh.host
    everything = lab.variant(
        "all.yaml", message_validity_sec=33, cross_region_message_validity_sec=133
    )
    try:
        known_hosts.write_text(original.replace(keys[us1], keys[eu1]))
        proc = lab.cli("apply", everything, "--auto-approve", "--json", expect=1)
        result = summary(proc)
        assert result["changed"] == ["eu1", "eu2"]
        assert [f["node"] for f in result["failed"]] == ["us1"]
        error = result["failed"][0]["error"]
        assert "node us1:" in error and "does not match known_hosts" in error
        assert "refusing to connect" in error
    finally:
        known_hosts.write_text(original)
    assert lab.state().nodes["us1"].routes["lotdeploy_eu1"]["message_validity_sec"] == 120


# -- 10. a full disk --------------------------------------------------------------------------


@contextlib.contextmanager
def full_release_dir(lab: Lab, name: str) -> Iterator[None]:
    """The node's release dir on a tiny, full tmpfs (holding its releases)."""
    with full_tmpfs(lab, name, NODE_RELEASE_DIR):
        yield


@contextlib.contextmanager
def full_tmpfs(lab: Lab, name: str, where: str) -> Iterator[None]:
    """The node's directory `where` on a tiny, full tmpfs (holding what it held), in its
    sshd's mount namespace; unmounted afterwards whatever happens."""
    pid = str(lab.sshd_pid(name))
    fill = (
        f"set -e; d=$(mktemp -d); cp -a {where}/. $d/; "
        f"mount -t tmpfs -o size=512k tmpfs {where}; cp -a $d/. {where}/; rm -rf $d; "
        f"dd if=/dev/zero of={where}/fill bs=4k 2>/dev/null || true"
    )
    subprocess.run(["nsenter", "-t", pid, "-m", "sh", "-c", fill], check=True, timeout=20)
    try:
        yield
    finally:
        done = subprocess.run(["nsenter", "-t", pid, "-m", "umount", where], timeout=20)
        if done.returncode:
            subprocess.run(["nsenter", "-t", pid, "-m", "umount", "-l", where], timeout=20)


def test_a_full_disk_keeps_the_previous_release(converged: Lab) -> None:
    lab = converged
    if shutil.which("nsenter") is None:
        pytest.skip("no nsenter (util-linux)")
    previous = lab.state().nodes["eu2"].release
    everything = lab.variant(
        "all.yaml", message_validity_sec=34, cross_region_message_validity_sec=134
    )
    with full_release_dir(lab, "eu2"):
        proc = lab.cli("apply", everything, "--auto-approve", "--json", expect=1)
        result = summary(proc)
        assert result["changed"] == ["eu1", "us1"]
        [failed] = result["failed"]
        assert failed["node"] == "eu2" and failed["step"] == "files"
        assert failed["error"].startswith(f"node eu2: cannot write {NODE_RELEASE_DIR}/releases/")
        assert failed["error"].endswith("No space left on device")
        assert lab.releases("eu2").splitlines()[0] == f"releases/{previous}"
    assert lab.releases("eu2").splitlines()[0] == f"releases/{previous}"
    state = lab.state().nodes["eu2"]
    assert state.release == previous
    assert state.routes["lotdeploy_eu1"]["message_validity_sec"] == 30


# -- 11. every broker dialect -----------------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    ["json", "text,no-echo", "no-echo", "overwrite"],
)
def test_each_broker_dialect_applies(tmp_path: Path, words: str) -> None:
    skip_unless_root()
    expected = "overwrite" if "overwrite" in words else "reject"
    with lab_up(tmp_path, "--nodes", "2", "--dialect", f"lab={words}") as lab:
        lab.cli("apply", lab.site_file, "--auto-approve")
        lab.wait_mesh()
        facts = lab.state().nodes["node1"].broker
        # a first apply re-adds nothing: what a re-add does is not asked (no scratch route)
        assert facts.get("readd") == "unknown" and facts.get("reply_format")
        first = lab.variant("v1.yaml", message_validity_sec=76)  # every route re-added
        proc = lab.cli("apply", first, "--auto-approve")
        assert "2 node(s) changed (0 reloaded)" in proc.stdout
        # learned from that change, and nothing else of the record moved
        assert lab.state().nodes["node1"].broker == {**facts, "readd": expected}
        lab.wait_mesh()
        lab.cli("doctor", lab.site_file)  # doctor's scratch route agrees
        facts = lab.state().nodes["node1"].broker
        assert facts.get("readd") == expected
        changed = lab.variant("v.yaml", message_validity_sec=77)
        proc = lab.cli("apply", changed, "--auto-approve")
        assert "2 node(s) changed (0 reloaded)" in proc.stdout
        lab.cli("drift", changed)
        lab.wait_mesh()


def test_a_broker_lacking_a_key_the_routes_need_fails_with_its_message(tmp_path: Path) -> None:
    skip_unless_root()
    with lab_up(tmp_path, "--nodes", "2", "--dialect", "node2=without-USE_TLS") as lab:
        proc = lab.cli("apply", lab.site_file, "--auto-approve", expect=1)
        # asked before its first activation, the broker says it lacks the key: node2 fails
        # there, naming node and key, before any route is sent to it
        assert "node node2: capabilities failed: broker node2: broker lacks" in proc.stderr
        assert "USE_TLS" in proc.stderr
        assert "1 node(s) changed" in proc.stdout
        assert not lab.state().nodes["node2"].routes
        # and from now on plan refuses the site, naming node and key
        plan = lab.cli("plan", lab.site_file, expect=1)
        assert "node node2" in plan.stderr and "USE_TLS" in plan.stderr


# -- 12. no secret anywhere -------------------------------------------------------------------


def test_no_secret_in_any_output_or_file(lab: Lab) -> None:
    if not lab.state().nodes:
        lab.cli("apply", lab.site_file, "--auto-approve")
    lab.cli("plan", lab.site_file, "--out", lab.dir / "final.plan", expect=None)
    lab.cli("plan", lab.site_file, "--json", expect=None)
    lab.cli("apply", lab.site_file, "--auto-approve", "--json", "--refresh")
    lab.cli("drift", lab.site_file, "--json")
    lab.cli("doctor", lab.site_file, "--json")
    store = lab.workspace().secrets()
    values = {name: store.get(name).reveal() for name in store.names()}  # type: ignore[union-attr]
    values["admin password"] = Layout(lab.dir).password_file.read_text().strip()
    assert len(values) >= 5 and "cluster-password-v1" in values
    needles = {}
    for name, value in values.items():
        needles[name] = value
        body = [line for line in value.splitlines() if not line.startswith("-----")]
        # a PEM key, line by line; not its last line: that holds the public key, which
        # the node's certificate carries too
        for i, line in enumerate(body[:-1]):
            if len(line) >= 40:
                needles[f"{name} line {i}"] = line

    workspace = lab.workspace().root
    allowed = [
        workspace / "secrets.enc",
        Layout(lab.dir).password_file,
        *(Layout(lab.dir).node_sub(n, sub) for n in lab.nodes for sub in ("tls", "release")),
        *(Layout(lab.dir).node_sub(n, "broker") for n in lab.nodes),  # the broker's own store
    ]
    texts = {f"output {i}": text for i, text in enumerate(lab.outputs)}
    for path in sorted(lab.dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            if any(path == a or a in path.parents for a in allowed):
                continue
            texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    assert str(workspace / "state.json") in texts and str(lab.dir / "final.plan") in texts
    assert any(str(p).endswith("broker.log") for p in texts)
    leaks = [
        f"{secret} in {where}"
        for where, text in texts.items()
        for secret, value in needles.items()
        if value in text
    ]
    assert not leaks, leaks

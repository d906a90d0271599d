"""`lotdeploy verify` against a root lab: two regions (eu1, eu2 | us1) with 80 ms one way
between them, real sshd, real lab brokers over real TLS, the real CLI in subprocesses, the
report rendered in a real headless Chromium. One lab is shared by the module; every case
that breaks something puts it back (and waits until verify passes again) before the next.

The last case greps everything the module printed or wrote for every secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lotdeploy.apply.activate import admin_password, admin_session
from lotdeploy.broker.mqtt import MqttConnection
from lotdeploy.credentials import cluster_password
from lotdeploy.lab import labstate
from lotdeploy.lab.hosts import Layout
from lotdeploy.transport import transport_factory
from lotdeploy.transport.openssh import exit_master
from lotdeploy.verify import VerifyOptions, run_verify
from lotdeploy.verify.result import VerifyResult
from lotdeploy.verify.run import PROBE_SECRET
from tests.broker_fixtures import drain
from tests.lab_fixtures import lab_cli, skip_unless_root
from tests.test_apply import ENV, Lab, lab_up
from tests.test_verify_report import chromium_render, need_chromium

pytestmark = pytest.mark.root

#: Everything the module printed or wrote, for the secret check at the end.
OUTPUTS: list[str] = []
FILES: list[Path] = []
NODES = ["eu1", "eu2", "us1"]
ALL_LINKS = {f"{a} → {b}" for a in NODES for b in NODES if a != b}
FAST = ("--timeout", "2", "--probes", "3")


@pytest.fixture(scope="module")
def vlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    base = tmp_path_factory.mktemp("verifylab")
    with lab_up(base, "--regions", "eu:2,us:1", "--delay", "eu=80", "--delay", "us=80") as lab:
        lab.outputs = OUTPUTS
        lab.cli("apply", lab.site_file, "--auto-approve")
        lab.wait_mesh(30)
        yield lab


def verify(lab: Lab, *args: str, expect: int) -> dict[str, Any]:
    """`lotdeploy verify --json ARGS`, its result as JSON (also kept for the secret check)."""
    proc = lab.cli("verify", lab.site_file, "--json", *args, expect=expect)
    return dict(json.loads(proc.stdout))


def problems(doc: dict[str, Any]) -> set[str]:
    return {c["subject"] for c in doc["checks"] if c["status"] != "pass"}


def api_verify(lab: Lab, **options: Any) -> VerifyResult:
    site = lab.site()
    return run_verify(
        site,
        lab.workspace(),
        transport_factory(site, False),
        options=VerifyOptions(**{"timeout": 2.0, "probes": 3, **options}),
    )


def wait_passing(lab: Lab, timeout: float = 30.0) -> VerifyResult:
    """Bounded: verify (the API) until everything passes again."""
    deadline = time.monotonic() + timeout
    while True:
        result = api_verify(lab)
        if result.ok:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"verify still fails: {[c.to_json() for c in result.problems()]}")
        time.sleep(1.0)


def wait_routes(lab: Lab, want: dict[tuple[str, str], bool], timeout: float = 30.0) -> None:
    """Bounded: until each (node, route's peer) is Connected (True) or not (False)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {
            (n, p): any(
                r.get("name") == f"lotdeploy_{p}" and r.get("connection") == "Connected"
                for r in routes
            )
            for n in {n for n, _ in want}
            for routes in [lab.routes(n)]
            for p in NODES
            if (n, p) in want
        }
        if seen == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"routes not as wanted after {timeout}s: {seen} vs {want}")
        time.sleep(0.3)


def bounce(lab: Lab, node: str) -> None:
    """Reset the peers' cluster connections into `node` (`ss -K` in the node's own namespace,
    for its TLS port only) so their routes log in again at once."""
    ns = next(n.ns for n in labstate.require(lab.dir).nodes if n.name == node)
    assert ns, "root-mode lab expected"
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ss",
            "-K",
            "-tn",
            "state",
            "established",
            "sport",
            "=",
            "8883",
        ],
        check=True,
        capture_output=True,
        timeout=20,
    )


# -- 1. all good ------------------------------------------------------------------------------


def test_verify_passes_and_shows_the_regions_latency(vlab: Lab, tmp_path: Path) -> None:
    report, prom = tmp_path / "ok.html", tmp_path / "ok.prom"
    FILES.extend([report, prom])
    doc = verify(vlab, "--report", str(report), "--prometheus", str(prom), expect=0)
    assert doc["ok"] and doc["counts"]["fail"] == 0 and doc["counts"]["inconclusive"] == 0
    links = {c["subject"]: c for c in doc["checks"] if c["kind"] == "link"}
    assert set(links) == ALL_LINKS
    region = {"eu1": "eu", "eu2": "eu", "us1": "us"}
    inside, across = [], []
    for subject, check in links.items():
        a, b = subject.split(" → ")
        assert check["received"] == check["sent"] == 5 and check["loss"] == 0
        assert check["duplicates"] == 0
        (inside if region[a] == region[b] else across).append(check["latency_ms"])
    assert min(across) >= 80, links
    # well below: on a quiet machine 1-5 ms; a loaded 2-core CI box adds scheduling delay
    assert max(inside) < min(across) / 2, links
    kinds = {(c["subject"], c["kind"]) for c in doc["checks"]}
    assert {(n, k) for n in NODES for k in ("ssh", "release", "tls", "routes")} <= kinds
    tls = [c for c in doc["checks"] if c["kind"] == "tls"]
    assert all(c["days_left"] > 300 for c in tls)
    # the terminal form: node table, the matrix grouped by region, the verdict
    text = vlab.cli("verify", vlab.site_file, *FAST).stdout
    assert re.search(r"^eu  eu1 ", text, re.M) and re.search(r"^us  us1 ", text, re.M), text
    assert "Verify all checks passed" in text
    # Prometheus text format, one sample per link for up and latency, certificate expiry
    metrics = prom.read_text()
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    for name in ("lotdeploy_verify_link_up", "lotdeploy_verify_link_latency_seconds"):
        samples = [line for line in metrics.splitlines() if line.startswith(name + "{")]
        assert len(samples) == 6, samples
    assert 'lotdeploy_verify_link_up{site="lab",source="eu1",target="us1"' in metrics
    assert len(re.findall(r"^lotdeploy_verify_certificate_expiry_days\{", metrics, re.M)) == 3
    sample = re.compile(r'^[a-z_]+\{([a-z_]+="[^"]*",?)+\} -?[0-9.e+-]+$')
    assert all(sample.match(x) for x in metrics.splitlines() if not x.startswith("#")), metrics
    # the last result is kept in the workspace for plan
    last = vlab.dir / ".lotdeploy" / "verify" / "last.json"
    FILES.append(last)
    assert json.loads(last.read_text())["ok"] is True


def test_probes_leave_nothing_retained_and_the_probe_user_is_not_an_admin(vlab: Lab) -> None:
    site = vlab.site()
    workspace = vlab.workspace()
    api_verify(vlab, topic_prefix="lotdeploy/probe/")
    probe_pw = workspace.secrets().get(PROBE_SECRET)
    assert probe_pw is not None
    with contextlib.ExitStack() as stack:
        ports = {}
        for name in NODES:
            t = stack.enter_context(vlab.transport(name))
            node = site.node(name)
            ports[name] = stack.enter_context(
                t.forward(node.broker.admin_host, node.broker.admin_port)
            )

        async def look() -> tuple[dict[str, int], dict[str, list[int]]]:
            retained, refused = {}, {}
            for name, port in ports.items():
                admin = MqttConnection(
                    "127.0.0.1",
                    port,
                    client_id=f"verify-test-{name}",
                    username="root",
                    password=admin_password(site, site.node(name)),
                    connect_timeout=5,
                )
                await admin.connect()
                try:
                    await admin.subscribe([("lotdeploy/probe/#", 1), ("lotdeploy/#", 1)], 5)
                    retained[name] = len(await drain(admin, quiet=1.0))
                finally:
                    await admin.close()
                probe = MqttConnection(
                    "127.0.0.1",
                    port,
                    client_id=f"verify-test-probe-{name}",
                    username="lotdeploy_probe",
                    password=probe_pw,
                    connect_timeout=5,
                )
                await probe.connect()
                try:
                    refused[name] = await probe.subscribe(
                        [("$SYS/#", 1), ("$SYS/Coreflux/Command/Output", 1)], 5
                    )
                finally:
                    await probe.close()
            return retained, refused

        retained, refused = asyncio.run(asyncio.wait_for(look(), 60))
    assert retained == {n: 0 for n in NODES}
    assert refused == {n: [0x80, 0x80] for n in NODES}


def test_plan_repeats_the_validity_advice_of_the_last_verify(vlab: Lab) -> None:
    # a 5 s window is too short for one reconnect (advice.py): verify says so, plan repeats it
    short = vlab.variant("short.yaml", message_validity_sec=5)
    proc = vlab.cli("verify", short, *FAST, expect=0)
    assert "eu1 → eu2: MESSAGE_VALIDITY_SEC 5 s looks too short" in proc.stdout
    assert "us1 → eu1" not in proc.stdout.split("advice")[-1]  # cross-region keeps 120 s
    plan = vlab.cli("plan", short, expect=None)
    assert "advice (verify " in plan.stderr and "eu2 → eu1: MESSAGE_VALIDITY_SEC 5 s" in plan.stderr
    # the site as applied (30 s) is fine: plan gives no advice for it
    assert "advice" not in vlab.cli("plan", vlab.site_file).stderr


# -- 2. faults -------------------------------------------------------------------------------


def test_a_cut_node_fails_its_checks_and_exactly_its_links(vlab: Lab, tmp_path: Path) -> None:
    need_chromium()
    report = tmp_path / "cut.html"
    FILES.append(report)
    assert lab_cli(vlab.dir, "cut", "eu2").returncode == 0
    try:
        started = time.monotonic()
        doc = verify(vlab, *FAST, "--report", str(report), expect=1)
        took = time.monotonic() - started
    finally:
        assert lab_cli(vlab.dir, "heal", "eu2").returncode == 0
    eu2_links = {s for s in ALL_LINKS if "eu2" in s.split(" → ")}
    assert problems(doc) == {"eu2"} | eu2_links
    assert doc["failed_nodes"] == ["eu2"]
    ssh = next(c for c in doc["checks"] if c["subject"] == "eu2" and c["kind"] == "ssh")
    assert ssh["status"] == "fail" and "not reachable over SSH" in ssh["reason"]
    for subject in eu2_links:
        link = next(c for c in doc["checks"] if c["subject"] == subject and c["kind"] == "link")
        assert link["status"] == "fail" and "eu2" in link["reason"]
    assert took < 15
    # the report, in a real browser, offline: no console error, every node, every failed link
    page = chromium_render(report)
    assert page.console == [], page.console
    for name in NODES:
        assert f'data-node="{name}"' in page.dom
    for subject in eu2_links:
        assert f'data-link="{subject}"' in page.dom and f"<code>{subject}</code>" in page.dom
    wait_passing(vlab)


@pytest.mark.parametrize("kind", ["ssh", "openssh"])
def test_a_connection_dropped_mid_check_is_checked_again_on_a_new_one(vlab: Lab, kind: str) -> None:
    """The fault, injected precisely: eu2's first SSH connection is lost as its first
    command starts (what a WAN blip or a killed sshd session does): paramiko's TCP socket
    shut down, or OpenSSH's master ended. Verify only reads, so it checks eu2 once more on
    a new connection, and says so."""
    site = vlab.site()
    real = transport_factory(site, False, override=kind)
    dropped: list[Any] = []

    def lose(transport: Any) -> None:
        if kind == "ssh":
            transport._conn.client.get_transport().sock.shutdown(socket.SHUT_RDWR)
        else:
            transport.connect()
            exit_master(Path(transport._socket))

    def factory(node: Any) -> Any:
        transport = real(node)
        if node.name != "eu2" or dropped:
            return transport
        dropped.append(transport)
        original = transport.run

        def run(command: str, **kwargs: Any) -> Any:
            if len(dropped) == 1:
                dropped.append(command)
                lose(transport)
            return original(command, **kwargs)

        transport.run = run
        return transport

    result = run_verify(site, vlab.workspace(), factory, options=VerifyOptions(timeout=2.0))
    assert len(dropped) == 2, "the fault was not injected"
    assert result.ok, [c.to_json() for c in result.problems()]
    ssh = next(c for c in result.checks if c.subject == "eu2" and c.kind == "ssh")
    assert "dropped mid-check: checked again" in ssh.reason
    others = [c for c in result.checks if c.kind == "ssh" and c.subject != "eu2"]
    assert others and not any("checked again" in c.reason for c in others)


class _CuttingRelay:
    """127.0.0.1 relay to `port` that closes both sides, without passing it on, when the
    client's bytes contain `marker`: a broker session lost in the middle of its commands."""

    def __init__(self, port: int, marker: bytes) -> None:
        self.target, self.marker, self.cut = port, marker, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with client, socket.create_connection(("127.0.0.1", self.target), timeout=5) as up:
                self._pump(client, up)

    def _pump(self, client: socket.socket, up: socket.socket) -> None:
        deadline = time.monotonic() + 30
        while not self.stopping.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([client, up], [], [], 0.2)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client and self.marker in data:
                    self.cut.set()
                    return
                (up if sock is client else client).sendall(data)

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)


def test_a_broker_session_lost_mid_check_is_checked_again_on_a_new_one(vlab: Lab) -> None:
    """The fault, injected precisely: eu2's first broker session ends as it sends its
    first change (the probe user's password), its SSH connection unharmed (what a broker
    restarting, or dropping a client, does). Verify checks eu2 once more, and says so."""
    site = vlab.site()
    real = transport_factory(site, False)
    admin_port = site.node("eu2").broker.admin_port
    relays: list[_CuttingRelay] = []

    def factory(node: Any) -> Any:
        transport = real(node)
        if node.name != "eu2" or relays:
            return transport
        forward = transport.forward

        @contextlib.contextmanager
        def cut_forward(host: str, port: int) -> Iterator[int]:
            with forward(host, port) as local:
                if port != admin_port or relays:
                    yield local
                    return
                relay = _CuttingRelay(local, b"changeUserPassword")
                relays.append(relay)
                try:
                    yield relay.port
                finally:
                    relay.close()

        transport.forward = cut_forward
        return transport

    result = run_verify(site, vlab.workspace(), factory, options=VerifyOptions(timeout=2.0))
    assert relays and relays[0].cut.is_set(), "the fault was not injected"
    assert result.ok, [c.to_json() for c in result.problems()]
    ssh = next(c for c in result.checks if c.subject == "eu2" and c.kind == "ssh")
    assert "dropped mid-check: checked again" in ssh.reason


def test_a_wrong_cluster_password_fails_exactly_the_links_into_the_node(vlab: Lab) -> None:
    site, workspace = vlab.site(), vlab.workspace()
    right = cluster_password(workspace)
    with vlab.transport("us1") as t, admin_session(site, site.node("us1"), t) as client:
        client.change_user_password("cluster", type(right)("not-the-cluster-password-1"))
    try:
        bounce(vlab, "us1")  # the peers' routes log in again, and are refused
        wait_routes(
            vlab,
            {
                ("eu1", "us1"): False,
                ("eu2", "us1"): False,
                ("us1", "eu1"): True,
                ("us1", "eu2"): True,
            },
        )
        doc = verify(vlab, *FAST, expect=1)
    finally:
        with vlab.transport("us1") as t, admin_session(site, site.node("us1"), t) as client:
            client.change_user_password("cluster", right)
    assert problems(doc) == {"eu1 → us1", "eu2 → us1"}
    reasons = " ".join(c["reason"] for c in doc["checks"] if c["status"] != "pass")
    assert "bad user name or password" in reasons, reasons
    link = next(c for c in doc["checks"] if c["subject"] == "eu1 → us1" and c["kind"] == "link")
    assert "no probe arrived in 2 s; eu1's route lotdeploy_us1 is " in link["reason"]
    assert doc["failed_nodes"] == ["us1"]
    wait_passing(vlab)


def test_a_certificate_without_the_nodes_san_fails_its_tls_and_inbound_links(vlab: Lab) -> None:
    from cryptography.hazmat.primitives import serialization

    from lotdeploy.pki.issue import issue_node_cert
    from lotdeploy.pki.keys import generate_key
    from lotdeploy.pki.operations import PkiSession

    site, workspace = vlab.site(), vlab.workspace()
    node = site.node("eu1")
    pki = PkiSession(site, workspace, datetime.now(UTC))
    ident = pki.view.issuing
    assert ident is not None
    key = generate_key("ecdsa-p256")
    elsewhere = dataclasses.replace(node, address="198.18.250.250", ip_addresses=(), dns_names=())
    cert = issue_node_cert(
        site.name, elsewhere, key, pki.ca(ident), pki.ca_key(ident), 30, datetime.now(UTC)
    )
    tls_dir = Layout(vlab.dir).node_dir("eu1") / "tls"
    saved = {n: (tls_dir / n).read_bytes() for n in ("server.crt", "server.key")}
    (tls_dir / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls_dir / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    reload = node.broker.reload_command
    try:
        with vlab.transport("eu1") as t:
            t.run(reload)
        time.sleep(0.5)
        bounce(vlab, "eu1")
        wait_routes(
            vlab,
            {
                ("eu2", "eu1"): False,
                ("us1", "eu1"): False,
                ("eu1", "eu2"): True,
                ("eu1", "us1"): True,
            },
        )
        doc = verify(vlab, *FAST, expect=1)
    finally:
        for name, data in saved.items():
            (tls_dir / name).write_bytes(data)
        with vlab.transport("eu1") as t:
            t.run(reload)
    assert problems(doc) == {"eu1", "eu2 → eu1", "us1 → eu1"}
    tls = next(c for c in doc["checks"] if c["subject"] == "eu1" and c["kind"] == "tls")
    assert tls["status"] == "fail"
    assert "IP address mismatch" in tls["reason"] and "lacks SAN ip:" in tls["reason"], tls
    inbound = [c for c in doc["checks"] if c["subject"] == "eu2 → eu1" and c["status"] == "fail"]
    assert inbound and any("certificate" in c["reason"].lower() for c in inbound), inbound
    bounce(vlab, "eu1")
    wait_passing(vlab)


# -- 3. secrets --------------------------------------------------------------------------------


def test_no_secret_in_any_output(vlab: Lab, tmp_path: Path) -> None:
    # one more run writing everything, so this case stands alone
    report, prom = tmp_path / "s.html", tmp_path / "s.prom"
    proc = vlab.cli(
        "verify", vlab.site_file, *FAST, "--report", str(report), "--prometheus", str(prom)
    )
    vlab.cli("verify", vlab.site_file, "--json", *FAST)
    assert "Verify all checks passed" in proc.stdout
    workspace = vlab.workspace()
    store = workspace.secrets()
    values = [store.get(n) for n in store.names()]
    secrets = [v.reveal() for v in values if v is not None]
    secrets.append((vlab.dir / "secrets" / "admin-password").read_text().strip())
    secrets.append(ENV["LOTDEPLOY_PASSPHRASE"])
    assert store.get(PROBE_SECRET) is not None and len(secrets) >= 4
    texts = [*OUTPUTS, report.read_text(), prom.read_text()]
    texts += [f.read_text() for f in FILES if f.exists()]
    for secret in secrets:
        for text in texts:
            assert secret not in text
    assert os.stat(workspace.root / "verify" / "last.json").st_mode & 0o077 in (0o044, 0)

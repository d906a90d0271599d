"""`lotdeploy lab`: real nodes on this machine. Root tests build one 3-node, 2-region lab per
module and tear it down in a finalizer that also proves nothing was left behind."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from lotdeploy.errors import LabError
from lotdeploy.fsutil import write_marker
from lotdeploy.lab import control, hosts, labstate, netns
from lotdeploy.lab.hosts import STOCK_BASHRC, Layout
from lotdeploy.lab.labstate import LabState, Node
from lotdeploy.lab.sitefile import site_spec
from tests.lab_fixtures import (
    PROJECT,
    connect_times,
    ensure_test_user,
    lab_cli,
    leftovers,
    live_processes,
    python_for,
    skip_unless_root,
    ssh_node,
    wait_gone,
    write_self_signed,
)

# -- no root needed -----------------------------------------------------------------------------


def test_shapes() -> None:
    assert labstate.parse_shape(None, "eu:2,us:1") == [("eu1", "eu"), ("eu2", "eu"), ("us1", "us")]
    assert labstate.parse_shape(2, None) == [("node1", "lab"), ("node2", "lab")]
    for bad in ("eu", "eu:0", "EU:1", "eu:1,eu:2", "eu:x"):
        with pytest.raises(LabError):
            labstate.parse_shape(None, bad)
    with pytest.raises(LabError):
        labstate.parse_shape(2, "eu:1")
    assert labstate.parse_delays(["us=80"]) == {"us": 80}
    with pytest.raises(LabError):
        labstate.parse_delays(["us80"])


def test_subnet_avoids_machine_networks() -> None:
    taken = [ipaddress.IPv4Network("198.18.0.0/24"), ipaddress.IPv4Network("198.18.1.0/25")]
    assert str(netns.pick_subnet("198.18.0.0/15", taken)) == "198.18.2.0/24"
    with pytest.raises(LabError):
        netns.pick_subnet("198.18.0.0/24", taken)
    with pytest.raises(LabError):
        netns.pick_subnet("not-a-net", [])


def test_user_mode_site_spec(tmp_path: Path) -> None:
    state = LabState(
        lab_id="abc123",
        mode="user",
        user="alice",
        nodes=[
            Node(
                name="eu1",
                region="eu",
                address="127.0.1.11",
                ssh_port=2222,
                admin_port=11883,
                tls_port=18883,
            )
        ],
    )
    spec = site_spec(Layout(tmp_path), state)
    node = spec["nodes"][0]
    assert spec["defaults"]["ssh"]["user"] == "alice"
    assert node["port"] == 18883 and node["ssh"] == {"host": "127.0.1.11", "port": 2222}
    assert node["broker"]["admin_host"] == "127.0.1.11"
    assert node["broker"]["tls_dir"] == str(tmp_path / "nodes" / "eu1" / "tls")
    allowed_ssh = {"host", "port", "user", "key", "known_hosts", "jump"}
    assert set(node["ssh"]) <= allowed_ssh and set(spec["defaults"]["ssh"]) <= allowed_ssh


def test_commands_without_a_lab(tmp_path: Path) -> None:
    result = lab_cli(tmp_path / "none", "status")
    assert result.returncode == 1 and "no lab in" in result.stderr
    assert "Traceback" not in result.stderr
    result = lab_cli(tmp_path / "none", "down")
    assert result.returncode == 0 and "nothing to remove" in result.stdout
    for cmd in ("up", "down", "status", "delay", "cut", "heal", "partition", "ssh"):
        assert "Example:" in lab_cli(tmp_path, cmd, "--help").stdout


# -- root mode ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LabState]]:
    skip_unless_root()
    lab_dir = tmp_path_factory.mktemp("labroot") / "lab"
    try:
        state = control.up(lab_dir, labstate.parse_shape(None, "eu:2,us:1"))
        yield lab_dir, state
    finally:
        control.down(lab_dir)
        left = wait_gone(lab_dir)
        assert not left, f"lab down left {left}"


def _ns(state: LabState, name: str) -> str:
    return state.node(name).ns


def _ms(times: list[float | str]) -> float:
    assert all(isinstance(t, float) for t in times), times
    return statistics.median(float(t) for t in times)


def _refused_fast(times: list[float | str]) -> bool:
    return all(isinstance(t, str) and "Refused" in t for t in times)


@pytest.mark.root
def test_ssh_strict_host_keys_on_every_node(lab: tuple[Path, LabState]) -> None:
    lab_dir, state = lab
    for node in state.nodes:
        result = ssh_node(lab_dir, node.name, "hostname -I")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [node.address]
    # A known_hosts with another key for the node is refused (strict checking is on).
    bad = lab_dir.parent / "bad_known_hosts"
    other = (lab_dir / "nodes" / "eu2" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    bad.write_text(f"{state.node('eu1').address} {' '.join(other)}\n")
    argv = control.ssh_argv(lab_dir, "eu1", ["true"])
    argv = [a.replace(str(Layout(lab_dir.resolve()).known_hosts), str(bad)) for a in argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0 and "host key" in result.stderr.lower()


@pytest.mark.root
def test_site_yaml_describes_the_lab(lab: tuple[Path, LabState]) -> None:
    lab_dir, _ = lab
    text = (lab_dir / "site.yaml").read_text()
    assert text.startswith("# Generated by `lotdeploy lab up`") and "lab down" in text
    spec = yaml.safe_load(text)
    assert [n["name"] for n in spec["nodes"]] == ["eu1", "eu2", "us1"]
    assert set(spec["regions"]) == {"eu", "us"}
    password = (lab_dir / spec["defaults"]["broker"]["admin_password_file"]).read_text().strip()
    assert password not in text
    assert (lab_dir / "secrets" / "admin-password").stat().st_mode & 0o077 == 0
    for node in spec["nodes"]:
        assert ipaddress.ip_address(node["address"]) in ipaddress.ip_network("198.18.0.0/15")


@pytest.mark.root
def test_nodes_have_separate_files(lab: tuple[Path, LabState]) -> None:
    lab_dir, _ = lab
    assert ssh_node(lab_dir, "eu1", "echo secret-eu1 > /opt/coreflux/tls/probe").returncode == 0
    assert ssh_node(lab_dir, "eu1", "cat /opt/coreflux/tls/probe").stdout.strip() == "secret-eu1"
    assert ssh_node(lab_dir, "eu2", "test ! -e /opt/coreflux/tls/probe").returncode == 0
    assert ssh_node(lab_dir, "us1", "test ! -e /opt/coreflux/tls/probe").returncode == 0
    assert not Path("/opt/coreflux/tls/probe").exists()
    # every path apply may write is private to its node: the broker's, lotdeploy's, /etc's
    for path in ("/opt/coreflux/probe", "/etc/coreflux/probe", "/opt/lotdeploy/probe"):
        assert ssh_node(lab_dir, "eu1", f"echo eu1 > {path}").returncode == 0, path
        assert ssh_node(lab_dir, "eu1", f"cat {path}").stdout.strip() == "eu1", path
        assert ssh_node(lab_dir, "eu2", f"test ! -e {path}").returncode == 0, path
        assert not Path(path).exists(), path


@pytest.mark.root
def test_a_node_login_reads_a_stock_bashrc_not_the_hosts(lab: tuple[Path, LabState]) -> None:
    """sshd runs each remote command through bash, which reads ~/.bashrc: a node's is the
    stock one (a developer's may start pyenv, 0.19 s of CPU per command), and the host's
    file is neither changed nor covered outside the nodes."""
    lab_dir, _ = lab
    home_rc = Path(os.path.expanduser("~root")) / ".bashrc"
    if not home_rc.is_file():
        pytest.skip("root has no ~/.bashrc to cover")
    before = home_rc.read_bytes()
    seen = ssh_node(lab_dir, "eu1", "cat ~/.bashrc")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.encode() == (lab_dir / "node-home" / ".bashrc").read_bytes()
    if STOCK_BASHRC.is_file():
        assert seen.stdout == STOCK_BASHRC.read_text()
    assert home_rc.read_bytes() == before  # the host still sees its own
    mounts = Path("/proc/self/mountinfo").read_text()
    assert " /root/.bashrc " not in mounts


ADMIN_PROBE = """
import sys, time
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="labprobe")
client.username_pw_set("root", open(sys.argv[1]).read().strip())
client.connect("127.0.0.1", 1883, keepalive=5)
deadline = time.monotonic() + 5
while not client.is_connected() and time.monotonic() < deadline:
    client.loop(timeout=0.1)
print("connected" if client.is_connected() else "no CONNACK")
"""


@pytest.mark.root
def test_broker_command_channel_only_on_the_nodes_loopback(lab: tuple[Path, LabState]) -> None:
    """Admin MQTT works from inside the node (127.0.0.1:1883) and is not offered to peers."""
    lab_dir, state = lab
    eu1 = state.node("eu1")
    probe = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            eu1.ns,
            sys.executable,
            "-c",
            ADMIN_PROBE,
            str(lab_dir / "secrets" / "admin-password"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert probe.stdout.strip() == "connected", probe.stderr
    assert _refused_fast(connect_times(_ns(state, "eu2"), eu1.address, 1883, 2))


@pytest.mark.root
def test_command_channel_through_an_ssh_tunnel(lab: tuple[Path, LabState]) -> None:
    """How apply will reach a broker: ssh -L to the node's own 127.0.0.1:1883, strict host
    keys, then the broker client over the tunnel."""
    from lotdeploy.broker.sync import SyncBrokerClient
    from lotdeploy.secret import Secret

    lab_dir, _state = lab
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    argv = control.ssh_argv(lab_dir, "eu2", [])
    user_at_host = argv[-1]
    tunnel = subprocess.Popen(
        [
            *argv[:-1],
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{local_port}:127.0.0.1:1883",
            user_at_host,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        hosts.wait_port("127.0.0.1", local_port, node="eu2", what="ssh tunnel", timeout=10)
        password = Secret((lab_dir / "secrets" / "admin-password").read_text().strip())
        with SyncBrokerClient("eu2", "127.0.0.1", local_port, "root", password) as client:
            assert client.list_routes() == []
    finally:
        tunnel.terminate()
        tunnel.wait(10)


def _enable_tls(lab_dir: Path, node: Node) -> Path:
    """Self-signed certificate on the node + the site's reload command: TLS on 8883."""
    spec = yaml.safe_load((lab_dir / "site.yaml").read_text())
    write_self_signed(lab_dir / "nodes" / node.name / "tls", node.address)
    result = ssh_node(lab_dir, node.name, spec["defaults"]["broker"]["reload_command"])
    assert result.returncode == 0, result.stderr
    hosts.wait_port(node.address, 8883, node=node.name, what="TLS listener", timeout=10)
    return lab_dir / "nodes" / node.name / "tls" / "ca.crt"


def _mqtt_connect(lab_dir: Path, node: Node) -> int | str:
    """CONNECT as the admin over TLS on 8883; 0 on success, else the error (bounded: 5 s)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="labtest")
    password = (lab_dir / "secrets" / "admin-password").read_text().strip()
    client.username_pw_set("root", password)
    client.tls_set(ca_certs=str(lab_dir / "nodes" / node.name / "tls" / "ca.crt"))
    try:
        client.connect(node.address, 8883, keepalive=5)
    except OSError as exc:
        return type(exc).__name__
    try:
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        return 0 if client.is_connected() else "no CONNACK"
    finally:
        client.disconnect()


@pytest.mark.root
def test_reload_command_opens_tls_listener(lab: tuple[Path, LabState]) -> None:
    """Certificates put in the node's TLS dir + the site's reload_command -> TLS on 8883."""
    lab_dir, state = lab
    us1 = state.node("us1")
    _enable_tls(lab_dir, us1)
    assert _mqtt_connect(lab_dir, us1) == 0
    assert ssh_node(lab_dir, "eu1", "test ! -e /opt/coreflux/tls/server.crt").returncode == 0


@pytest.mark.root
def test_delay_shows_on_tcp_connect(lab: tuple[Path, LabState]) -> None:
    lab_dir, state = lab
    us1, eu2 = state.node("us1"), state.node("eu2")
    control.set_delay(lab_dir, "us1", 80)
    try:
        delayed = _ms(connect_times(_ns(state, "eu1"), us1.address, 22))
        plain = _ms(connect_times(_ns(state, "eu1"), eu2.address, 22))
        assert 75 <= delayed < 200, delayed
        assert plain < 20, plain
        assert "80ms" in lab_cli(lab_dir, "status").stdout
    finally:
        control.set_delay(lab_dir, "us1", 0)
    assert _ms(connect_times(_ns(state, "eu1"), us1.address, 22)) < 20


@pytest.mark.root
def test_region_delay_spares_links_inside_the_region(lab: tuple[Path, LabState]) -> None:
    lab_dir, state = lab
    control.set_delay(lab_dir, "eu", 40)
    try:
        assert 35 <= _ms(connect_times(_ns(state, "us1"), state.node("eu1").address, 22)) < 150
        assert _ms(connect_times(_ns(state, "eu2"), state.node("eu1").address, 22)) < 20
    finally:
        control.set_delay(lab_dir, "eu", 0)


@pytest.mark.root
def test_cut_fails_fast_and_heal_restores(lab: tuple[Path, LabState]) -> None:
    lab_dir, state = lab
    eu2 = state.node("eu2")
    _enable_tls(lab_dir, eu2)
    _enable_tls(lab_dir, state.node("us1"))
    result = lab_cli(lab_dir, "cut", "eu2")
    assert result.returncode == 0, result.stderr
    try:
        start = time.monotonic()
        assert ssh_node(lab_dir, "eu2", "true").returncode != 0
        assert time.monotonic() - start < 3
        assert _refused_fast(connect_times(_ns(state, "eu1"), eu2.address, 8883, 3))
        assert _refused_fast(connect_times(_ns(state, "eu2"), state.node("us1").address, 22, 3))
        start = time.monotonic()
        assert _mqtt_connect(lab_dir, eu2) != 0
        assert time.monotonic() - start < 2
        assert _mqtt_connect(lab_dir, state.node("us1")) == 0
        assert ssh_node(lab_dir, "eu1", "true").returncode == 0
        assert "cut" in lab_cli(lab_dir, "status").stdout
    finally:
        assert lab_cli(lab_dir, "heal", "eu2").returncode == 0
    assert ssh_node(lab_dir, "eu2", "true").returncode == 0


@pytest.mark.root
def test_partition_cuts_exactly_one_pair(lab: tuple[Path, LabState]) -> None:
    lab_dir, state = lab
    eu1, eu2, us1 = (state.node(n) for n in ("eu1", "eu2", "us1"))
    assert lab_cli(lab_dir, "partition", "eu1", "us1").returncode == 0
    try:
        assert _refused_fast(connect_times(eu1.ns, us1.address, 22, 2))
        assert _refused_fast(connect_times(us1.ns, eu1.address, 22, 2))
        assert _ms(connect_times(eu1.ns, eu2.address, 22, 2)) < 50
        assert _ms(connect_times(eu2.ns, us1.address, 22, 2)) < 50
        assert _ms(connect_times(None, us1.address, 22, 2)) < 50
        assert _ms(connect_times(None, eu1.address, 22, 2)) < 50
    finally:
        assert lab_cli(lab_dir, "heal", "eu1").returncode == 0
    assert _ms(connect_times(eu1.ns, us1.address, 22, 2)) < 50


@pytest.mark.root
def test_up_is_idempotent_and_refuses_another_shape(lab: tuple[Path, LabState]) -> None:
    lab_dir, _ = lab
    before = labstate.require(lab_dir).pids
    again = lab_cli(lab_dir, "up", "--regions", "eu:2,us:1")
    assert again.returncode == 0 and "already up" in again.stdout
    assert labstate.require(lab_dir).pids == before
    other = lab_cli(lab_dir, "up", "--nodes", "2")
    assert other.returncode == 1 and "already exists" in other.stderr
    assert "Traceback" not in other.stderr
    status = lab_cli(lab_dir, "status").stdout.splitlines()
    assert status[0].split() == ["NODE", "ADDRESS", "REGION", "SSHD", "BROKER", "DELAY", "CUT"]
    assert [line.split()[0] for line in status[1:]] == ["eu1", "eu2", "us1"]
    assert all(line.split()[3] == "up" for line in status[1:])


@pytest.mark.root
def test_down_after_up_killed_half_way(
    lab: tuple[Path, LabState], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second lab coexists with the first; killed mid-`up`, `down` still removes it all."""
    lab_dir = tmp_path_factory.mktemp("labkill") / "lab"
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lotdeploy.lab", "up", "--nodes", "4", "--dir", str(lab_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            state = labstate.load(lab_dir) if lab_dir.exists() else None
            if state is not None and any(k.startswith("sshd:") for k in state.pids):
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert labstate.load(lab_dir) is not None
    assert leftovers(lab_dir)  # something was made
    result = lab_cli(lab_dir, "down")
    assert result.returncode == 0, result.stderr
    left = wait_gone(lab_dir)
    assert not left, left
    # The first lab is untouched.
    assert ssh_node(lab[0], "us1", "true").returncode == 0


# -- user mode (no root) ------------------------------------------------------------------------


@pytest.fixture
def user_lab() -> Iterator[tuple[Path, str, str]]:
    """A lab directory owned by the unprivileged test user (who must be able to enter it)."""
    skip_unless_root()  # needed to create the user and to runuser
    if not shutil.which("runuser"):
        pytest.skip("runuser missing")
    user = ensure_test_user()
    python = python_for(user)
    base = Path(tempfile.mkdtemp(prefix="lotlab-user-"))
    os.chmod(base, 0o755)
    lab_dir = base / "lab"
    lab_dir.mkdir()
    shutil.chown(lab_dir, user)
    try:
        yield lab_dir, user, python
    finally:
        lab_cli(lab_dir, "down", user=user, python=python)
        left = wait_gone(lab_dir)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, left


@pytest.mark.root
def test_user_mode_lab_as_unprivileged_user(user_lab: tuple[Path, str, str]) -> None:
    lab_dir, user, python = user_lab
    up = lab_cli(lab_dir, "up", "--nodes", "2", user=user, python=python)
    assert up.returncode == 0, up.stderr
    assert "user" in up.stdout
    spec = yaml.safe_load((lab_dir / "site.yaml").read_text())
    assert spec["defaults"]["ssh"]["user"] == user
    for node in spec["nodes"]:
        assert node["address"].startswith("127.0.")
        assert node["ssh"]["port"] >= 1024 and node["port"] >= 1024
    whoami = ssh_node(lab_dir, "node1", "whoami", user=user, python=python)
    assert whoami.returncode == 0 and whoami.stdout.strip() == user, whoami.stderr
    assert lab_cli(lab_dir, "cut", "node2", user=user, python=python).returncode == 0
    start = time.monotonic()
    assert ssh_node(lab_dir, "node2", "true", user=user, python=python).returncode != 0
    assert time.monotonic() - start < 3
    assert ssh_node(lab_dir, "node1", "true", user=user, python=python).returncode == 0
    assert lab_cli(lab_dir, "heal", "node2", user=user, python=python).returncode == 0
    assert ssh_node(lab_dir, "node2", "true", user=user, python=python).returncode == 0
    assert lab_cli(lab_dir, "delay", "node2", "80", user=user, python=python).returncode == 0
    start = time.monotonic()
    assert ssh_node(lab_dir, "node2", "true", user=user, python=python).returncode == 0
    assert time.monotonic() - start >= 0.16  # at least two delayed round trips
    down = lab_cli(lab_dir, "down", user=user, python=python)
    assert down.returncode == 0, down.stderr
    assert not live_processes(
        [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-u", user], capture_output=True, text=True, check=False
            ).stdout.split()
        ]
    )


def test_down_refuses_root_lab_for_non_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control.os, "geteuid", lambda: 1000)
    labstate.save(tmp_path, LabState(lab_id="x", mode="root", nodes=[]))
    write_marker(tmp_path / control.MARKER, "lab", lab_id="x")  # what `lab up` writes first
    with pytest.raises(LabError, match="made as root"):
        control.down(tmp_path)
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / ".lab" / "state.json").unlink()

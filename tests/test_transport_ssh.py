"""The SSH transport against real sshd: a 2-node root lab once per module, always torn down
(and proven gone); plus the settings precedence and error texts that need no server."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import paramiko
import pytest

from lotdeploy import protocol
from lotdeploy.lab import control, labstate
from lotdeploy.lab.hosts import NODE_RUN_DIR, Layout
from lotdeploy.lab.labstate import LabState
from lotdeploy.model import Node, Site, SshTarget
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.transport.base import HostKeyError, TransportError, opened
from lotdeploy.transport.ssh import SshTransport, command_label
from tests.lab_fixtures import lab_cli, skip_unless_root, wait_gone

# -- no server needed ---------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return path


def test_ssh_config_fills_in_where_the_spec_is_silent(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "Host web1\n  HostName 10.9.8.7\n  Port 2222\n  User deploy\n"
        "  UserKnownHostsFile ~/kh-from-config\n  ProxyJump ops@bastion:2200\n"
        "Host bastion\n  HostName 10.9.0.1\n",
    )
    t = SshTransport("web1", SshTarget(host="web1"), ssh_config=config)
    hop, jump, proxy, known_hosts = t._resolve()
    assert (hop.host, hop.port, hop.user) == ("10.9.8.7", 2222, "deploy")
    assert jump is not None and (jump.host, jump.port, jump.user) == ("10.9.0.1", 2200, "ops")
    assert proxy is None
    assert known_hosts == Path("~/kh-from-config").expanduser()


def test_the_spec_wins_over_ssh_config(tmp_path: Path) -> None:
    config = _config(
        tmp_path, "Host web1\n  Port 2222\n  User deploy\n  ProxyJump other\n  HostName 10.9.8.7\n"
    )
    target = SshTarget(
        host="web1",
        port=2200,
        user="admin",
        known_hosts=Path("kh"),
        jump="bastion",
    )
    t = SshTransport("web1", target, ssh_config=config, base_dir=tmp_path)
    hop, jump, _, known_hosts = t._resolve()
    assert (hop.port, hop.user) == (2200, "admin")
    # no user@ in the jump: the jump host's ssh config User, else the node's user
    assert jump is not None and (jump.host, jump.port, jump.user) == ("bastion", 22, "admin")
    assert known_hosts == tmp_path / "kh"


def test_no_ssh_config_and_defaults(tmp_path: Path) -> None:
    t = SshTransport("n", SshTarget(host="10.1.1.1"), ssh_config=_config(tmp_path, ""))
    hop, jump, proxy, known_hosts = t._resolve()
    assert (hop.host, hop.port, hop.user, jump, proxy) == ("10.1.1.1", 22, "root", None, None)
    assert known_hosts == Path("~/.ssh/known_hosts").expanduser()
    with pytest.raises(TransportError, match="only one jump host"):
        SshTransport(
            "n", SshTarget(host="h", jump="a,b"), ssh_config=_config(tmp_path, "")
        )._resolve()
    with pytest.raises(TransportError, match="cannot read ssh config"):
        SshTransport("n", SshTarget(host="h"), ssh_config=tmp_path / "missing")._resolve()


def test_openssh_and_ansible_resolve_settings_as_the_ssh_transport_does(tmp_path: Path) -> None:
    """One resolution for every transport: where the spec is silent the ssh config's Port,
    User, UserKnownHostsFile and ProxyJump apply to OpenSSH and the inventory too, passed
    explicitly, and the real `ssh -G` (which reads the same file, connects nowhere) agrees."""
    from lotdeploy.ansible.inventory import host_vars
    from lotdeploy.transport.sshopts import ssh_options

    if shutil.which("ssh") is None:
        pytest.skip("no ssh")
    config = _config(
        tmp_path,
        "Host web1\n  HostName 10.9.8.7\n  Port 2222\n  User deploy\n"
        "  UserKnownHostsFile ~/kh-from-config\n  ProxyJump ops@bastion:2200\n"
        "Host web2\n  HostName 10.9.8.8\n  Port 2222\n  User deploy\n",
    )
    spec = tmp_path / "site.yaml"
    spec.write_text(
        "site: s\nnodes:\n"
        "  - {name: web1, address: 198.18.0.11, ssh: {host: web1}}\n"
        "  - {name: web2, address: 198.18.0.12,"
        " ssh: {host: web2, port: 2200, user: admin, known_hosts: kh}}\n"
    )
    site = load_site(spec).site
    for node in site.nodes:
        ssh = SshTransport.for_node(node, ssh_config=config, base_dir=site.base_dir)
        hop, jump, _, known_hosts = ssh._resolve()
        options = ssh_options(site, node, ssh_config=config)
        assert (options.port, options.user) == (hop.port, hop.user)
        assert options.known_hosts == str(known_hosts)
        shown = subprocess.run(
            [*options.argv(), "-G"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.splitlines()
        assert f"hostname {hop.host}" in shown and f"port {hop.port}" in shown
        assert f"user {hop.user}" in shown
        if jump is None:
            assert options.jump is None
            assert not any(x.startswith(("proxycommand", "proxyjump")) for x in shown)
            continue
        assert options.jump == f"{jump.user}@bastion:{jump.port}"
        proxy = next(x for x in shown if x.startswith("proxycommand "))
        assert "-p 2200 -l ops" in proxy and "proxyjump" not in " ".join(shown)
    web1 = host_vars(site, site.node("web1"))
    assert (web1["ansible_port"], web1["ansible_user"]) == (22, "root")  # no -F: ssh's own
    assert host_vars(site, site.node("web2"))["ansible_port"] == 2200


def test_command_label_is_short() -> None:
    assert command_label("kill -HUP 42") == "kill -HUP …"
    assert command_label("true") == "true"
    assert command_label("sh -c 'a very long script'") == "sh -c …"
    assert command_label("x" * 500 + " y").startswith("x" * 40)
    assert len(command_label("x" * 500 + " y")) < 60


def test_an_encrypted_key_is_refused_clearly(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen")
    key = tmp_path / "id_ed25519"
    passphrase = "correct horse battery"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)],
        check=True,
        timeout=30,
    )
    t = SshTransport(
        "n1", SshTarget(host="127.0.0.1", port=9, key=key), ssh_config=_config(tmp_path, "")
    )
    with pytest.raises(TransportError) as info:
        t.connect()
    text = str(info.value)
    assert "node n1" in text and str(key) in text and "encrypted" in text
    assert "passphrases are not supported" in text and passphrase not in text
    t.close()


def test_connection_refused_on_loopback(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = SshTransport(
        "n1",
        SshTarget(host="127.0.0.1", port=port, known_hosts=tmp_path / "kh"),
        ssh_config=_config(tmp_path, ""),
        connect_timeout=2,
    )
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        t.connect()
    assert time.monotonic() - started < 5
    assert f"node n1: cannot connect to 127.0.0.1:{port}: Connection refused" in str(info.value)
    t.close()
    t.close()


def test_a_broken_handshake_is_one_line_without_paramikos_traceback(tmp_path: Path) -> None:
    """A peer that breaks off the key exchange: paramiko logs it at ERROR with a traceback,
    which the CLI's stderr handler would print beside lotdeploy's own line. Run as the CLI
    runs (its logging set up), in a process of its own."""
    script = f"""
import socket, sys, threading
from pathlib import Path
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
def serve():
    peer, _ = server.accept()
    peer.sendall(b"SSH-2.0-OpenSSH_9.2\\r\\n")
    peer.recv(100)
    peer.sendall(b"\\x00\\x00\\x00\\x0c\\x0a\\x14" + b"not-a-kexinit!")
    peer.close()
threading.Thread(target=serve, daemon=True).start()
from lotdeploy.cli.app import scrub_all_logging
scrub_all_logging()
from lotdeploy.model import SshTarget
from lotdeploy.transport.base import TransportError
from lotdeploy.transport.ssh import SshTransport
here = Path({str(tmp_path)!r})
(here / "cfg").write_text("")
target = SshTarget(host="127.0.0.1", port=server.getsockname()[1], known_hosts=here / "kh")
transport = SshTransport("n1", target, ssh_config=here / "cfg", connect_timeout=2)
try:
    transport.connect()
except TransportError as error:
    print(error, file=sys.stderr)
transport.close()
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert proc.stderr.startswith("node n1: cannot connect to 127.0.0.1:"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


# -- against a root lab -------------------------------------------------------------------------


@dataclasses.dataclass
class Lab:
    dir: Path
    state: LabState
    site: Site
    ssh_config: Path

    def node(self, name: str) -> Node:
        return self.site.node(name)

    def transport(self, name: str, **changes: object) -> SshTransport:
        """A transport to `name`, its SshTarget changed by `changes` (known_hosts, jump...)."""
        node = self.node(name)
        target = dataclasses.replace(node.ssh, **changes)  # type: ignore[arg-type]
        return SshTransport(
            name,
            target,
            ssh_config=self.ssh_config,
            base_dir=self.site.base_dir,
            connect_timeout=5,
        )

    def ns(self, name: str) -> str:
        return self.state.node(name).ns

    def sshd_pid(self, name: str) -> int:
        return self.state.pids[f"sshd:{name}"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    base = tmp_path_factory.mktemp("sshlab")
    lab_dir = base / "lab"
    ssh_config = base / "ssh_config"  # root's real ~/.ssh/config must not matter
    ssh_config.write_text("")
    try:
        state = control.up(lab_dir, labstate.parse_shape(2, None))
        site = load_site(Layout(lab_dir).site).site
        yield Lab(lab_dir, state, site, ssh_config)
    finally:
        control.down(lab_dir)
        left = wait_gone(lab_dir)
        assert not left, f"lab down left {left}"


@pytest.fixture
def node1(lab: Lab) -> Iterator[SshTransport]:
    with opened(
        SshTransport.for_node(
            lab.node("node1"), base_dir=lab.site.base_dir, ssh_config=lab.ssh_config
        )
    ) as t:
        assert isinstance(t, SshTransport)
        yield t


def _established_ssh(lab: Lab, name: str) -> list[str]:
    """Established TCP connections to the node's sshd, as its namespace sees them."""
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns(name),
            "ss",
            "-Htn",
            "state",
            "established",
            "( sport = :22 )",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.root
def test_run(node1: SshTransport) -> None:
    result = node1.run("echo out; echo err >&2")
    assert (result.exit_status, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert node1.run("exit 3", check=False).exit_status == 3
    long_tail = "x" * 300
    with pytest.raises(TransportError) as info:
        node1.run(f"cat /no-such-file; : {long_tail}; exit 2")
    text = str(info.value)
    assert text.startswith("node node1: `cat /no-such-file;") and "exited with status 2" in text
    assert text.endswith("cat: /no-such-file: No such file or directory")  # the stderr tail
    assert long_tail not in text  # never the whole command


@pytest.mark.root
def test_run_scrubs_secrets_from_messages(node1: SshTransport) -> None:
    secret = Secret("do-not-show-this-value-9f3a")
    with pytest.raises(TransportError) as info:
        node1.run(f"echo {secret.reveal()} >&2; exit 1")
    assert secret.reveal() not in str(info.value) and "(sensitive)" in str(info.value)
    result = node1.run(f"echo {secret.reveal()}")
    assert secret.reveal() not in result.stdout


@pytest.mark.root
def test_run_timeout_is_bounded_and_the_connection_survives(node1: SshTransport) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"`sleep 30` did not finish within 1 s"):
        node1.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 5
    assert node1.run("echo still here").stdout == "still here\n"


@pytest.mark.root
def test_put_get_round_trip(node1: SshTransport) -> None:
    node1.run("rm -rf /tmp/lotdeploy-t && mkdir -p /tmp/lotdeploy-t")
    data = bytes(range(256)) * 1000
    for mode in (0o600, 0o644, 0o755, 0o400):
        path = f"/tmp/lotdeploy-t/f{mode:o}"
        node1.put(data, path, mode)
        assert node1.get(path) == data
        assert node1.run(f"stat -c %a {path}").stdout.strip() == f"{mode:o}"
    node1.put(b"second", "/tmp/lotdeploy-t/f644", 0o640)  # replaced whole, new mode
    assert node1.get("/tmp/lotdeploy-t/f644") == b"second"
    assert node1.run("stat -c %a /tmp/lotdeploy-t/f644").stdout.strip() == "640"
    node1.put(b"", "/tmp/lotdeploy-t/empty", 0o600)
    assert node1.get("/tmp/lotdeploy-t/empty") == b""
    # no temporary file left behind
    assert ".tmp" not in node1.run("ls -A /tmp/lotdeploy-t").stdout


@pytest.mark.root
def test_get_missing_large_and_directory(node1: SshTransport) -> None:
    assert node1.get("/tmp/lotdeploy-no-such-file") is None
    node1.put(b"x" * 2048, "/tmp/lotdeploy-big", 0o600)
    with pytest.raises(TransportError, match="/tmp/lotdeploy-big is 2048 bytes, more than"):
        node1.get("/tmp/lotdeploy-big", max_bytes=1024)
    with pytest.raises(TransportError, match="cannot read /tmp: it is a directory"):
        node1.get("/tmp")


@pytest.mark.root
def test_put_errors_name_the_path_and_the_cause(node1: SshTransport) -> None:
    with pytest.raises(TransportError) as info:
        node1.put(b"x", "/no-such-dir/file", 0o600)
    assert str(info.value) == (
        "node node1: cannot write /no-such-dir/file: No such file or directory"
    )
    node1.run("mkdir -p /tmp/lotdeploy-isdir")
    with pytest.raises(TransportError, match="cannot write /tmp/lotdeploy-isdir: Is a directory"):
        node1.put(b"x", "/tmp/lotdeploy-isdir", 0o600)


@contextlib.contextmanager
def _node_mount(lab: Lab, name: str, where: str, options: str) -> Iterator[str]:
    """A tiny tmpfs at `where` (under /run/coreflux, the node's run dir) in the mount
    namespace of the node's sshd, so the node's SFTP server sees it and the host does not."""
    sub = where.removeprefix(NODE_RUN_DIR + "/")
    (Layout(lab.dir).node_sub(name, "run") / sub).mkdir(parents=True, exist_ok=True)
    pid = str(lab.sshd_pid(name))
    subprocess.run(
        ["nsenter", "-t", pid, "-m", "mount", "-t", "tmpfs", "-o", options, "tmpfs", where],
        check=True,
        timeout=10,
    )
    try:
        yield where
    finally:
        subprocess.run(["nsenter", "-t", pid, "-m", "umount", where], check=False, timeout=10)


@pytest.mark.root
def test_put_full_and_read_only_filesystems(lab: Lab, node1: SshTransport) -> None:
    if shutil.which("nsenter") is None:
        pytest.skip("no nsenter (util-linux)")
    run_dir = NODE_RUN_DIR
    with _node_mount(lab, "node1", f"{run_dir}/full", "size=16k"):
        with pytest.raises(TransportError) as info:
            node1.put(b"x" * 200_000, f"{run_dir}/full/big", 0o600)
        assert str(info.value) == (
            f"node node1: cannot write {run_dir}/full/big: No space left on device"
        )
        assert node1.run(f"ls -A {run_dir}/full").stdout == ""  # the partial file is gone
    with _node_mount(lab, "node1", f"{run_dir}/ro", "ro,size=16k"):
        with pytest.raises(TransportError) as info:
            node1.put(b"x", f"{run_dir}/ro/file", 0o600)
        assert str(info.value) == (
            f"node node1: cannot write {run_dir}/ro/file: Read-only file system"
        )


@pytest.mark.root
def test_forward_to_the_broker_admin_port(lab: Lab, node1: SshTransport) -> None:
    password = Layout(lab.dir).password_file.read_text().strip()
    with node1.forward(protocol.DEFAULT_ADMIN_HOST, protocol.DEFAULT_ADMIN_PORT) as port:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="transport-test")
        client.username_pw_set(protocol.DEFAULT_ADMIN_USER, password)
        codes: list[int] = []
        client.on_connect = lambda c, u, f, rc, p: codes.append(rc.value)
        client.connect("127.0.0.1", port, keepalive=10)
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            client.loop(timeout=0.2)
        client.disconnect()
        assert codes == [0]
        # a second client over the same forward, raw: CONNACK "not authorised" without login
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0]))
            assert raw.recv(4)[:1] == b"\x20"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the listener is gone after the context
    refused = r"cannot forward to 127.0.0.1:9 \(as seen from"
    with pytest.raises(TransportError, match=refused), node1.forward("127.0.0.1", 9):
        pass


def _mqtt_connect(client_id: str, user: str, password: str) -> bytes:
    """A raw MQTT 3.1.1 CONNECT with a login (clean session, keepalive 30 s)."""

    def field(text: str) -> bytes:
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    body = (
        field("MQTT") + bytes([4, 0xC2, 0, 30]) + field(client_id) + field(user) + field(password)
    )
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


@pytest.mark.root
def test_a_forward_stopped_mid_tunnel_leaves_each_channel_to_its_reader(
    lab: Lab, node1: SshTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko's Channel.close() closes the pipe a reader waits on; a reader's next recv()
    then reads a byte from that closed descriptor, which by then may belong to another
    connection (admin sessions were cut "by peer" that way). So only the thread that reads a
    tunnel's channel closes it, also when the forward is stopped with tunnels open."""
    password = Layout(lab.dir).password_file.read_text().strip()
    closers: list[str] = []
    close = paramiko.Channel.close

    def recording_close(channel: paramiko.Channel) -> None:
        if sys._getframe(1).f_code.co_name != "__del__":  # collected: nobody reads it
            closers.append(threading.current_thread().name)
        close(channel)

    monkeypatch.setattr(paramiko.Channel, "close", recording_close)
    with node1.forward(protocol.DEFAULT_ADMIN_HOST, protocol.DEFAULT_ADMIN_PORT) as port:
        tunnels = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        # every tunnel carries a logged-in session (CONNACK accepted came through it), so
        # nothing ends it but the stop, and its reader waits on the channel
        for number, raw in enumerate(tunnels):
            raw.sendall(_mqtt_connect(f"tunnel-{number}", protocol.DEFAULT_ADMIN_USER, password))
            assert raw.recv(4) == bytes([0x20, 2, 0, 0])
    for raw in tunnels:
        raw.settimeout(5)
        assert raw.recv(16) == b""  # each tunnel was ended by the stop
        raw.close()
    assert len(closers) == 3
    assert all(name.endswith("-pump") for name in closers), closers


@pytest.mark.root
def test_one_connection_reused_for_every_step(lab: Lab) -> None:
    before = len(_established_ssh(lab, "node2"))
    t = lab.transport("node2")
    try:
        t.connect()
        conn = t._conn
        t.connect()
        assert t._conn is conn
        for i in range(5):
            t.run(f"echo {i}")
        t.put(b"data", "/tmp/lotdeploy-reuse", 0o600)
        assert t.get("/tmp/lotdeploy-reuse") == b"data"
        with t.forward("127.0.0.1", protocol.DEFAULT_ADMIN_PORT) as port:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            t.run("true")
            assert len(_established_ssh(lab, "node2")) == before + 1
    finally:
        t.close()
        t.close()
    deadline = time.monotonic() + 5
    while len(_established_ssh(lab, "node2")) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_established_ssh(lab, "node2")) == before


def _known_hosts_copy(
    lab: Lab, tmp_path: Path, keep: str | None, replace: str | None = None
) -> Path:
    """A copy of the lab's known_hosts with only `keep`'s line, or with `replace`'s key
    swapped for a fresh one."""
    lines = Layout(lab.dir).known_hosts.read_text().splitlines()
    out = []
    for line in lines:
        host = line.split()[0]
        if replace is not None and host == lab.node(replace).ssh.host:
            fresh = tmp_path / "other_key"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fresh)],
                check=True,
                timeout=30,
            )
            out.append(f"{host} {' '.join(fresh.with_suffix('.pub').read_text().split()[:2])}")
        elif keep is None or host == lab.node(keep).ssh.host:
            out.append(line)
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.mark.root
def test_a_mismatched_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    known = _known_hosts_copy(lab, tmp_path, keep=None, replace="node1")
    address = lab.node("node1").ssh.host
    for accept_new in (False, True):
        t = lab.transport("node1", known_hosts=known)
        t.accept_new_host_keys = accept_new
        with pytest.raises(HostKeyError) as info:
            t.connect()
        assert str(info.value).startswith(
            f"node node1: host key for {address} does not match known_hosts {known}: "
            "refusing to connect"
        )
        t.close()
    assert known.read_text().count(address) == 1  # nothing was added


@pytest.mark.root
def test_an_unknown_host_is_refused_unless_accept_new(lab: Lab, tmp_path: Path) -> None:
    known = _known_hosts_copy(lab, tmp_path, keep="node2")
    address = lab.node("node1").ssh.host
    t = lab.transport("node1", known_hosts=known)
    with pytest.raises(HostKeyError) as info:
        t.connect()
    assert f"host key for {address} is not in known_hosts {known}" in str(info.value)
    assert "add it, or run with --accept-new-host-keys" in str(info.value)
    missing = lab.transport("node1", known_hosts=tmp_path / "none")
    with pytest.raises(HostKeyError, match="the file does not exist"):
        missing.connect()
    # the explicit opt-in: appended, connected; afterwards strict mode knows it
    t = lab.transport("node1", known_hosts=known)
    t.accept_new_host_keys = True
    with opened(t):
        assert t.run("echo ok").stdout == "ok\n"
    real = next(
        line
        for line in Layout(lab.dir).known_hosts.read_text().splitlines()
        if line.startswith(address + " ")
    )
    assert real in known.read_text().splitlines()
    with opened(lab.transport("node1", known_hosts=known)) as again:
        assert again.run("true").ok


@pytest.mark.root
def test_jump_host(lab: Lab, tmp_path: Path) -> None:
    one, two = lab.node("node1").ssh.host, lab.node("node2").ssh.host
    t = lab.transport("node2", jump=f"root@{one}:22")
    with opened(t):
        # node2 sees the session coming from node1, not from the host
        assert t.run("echo $SSH_CONNECTION").stdout.split()[0] == one
        t.put(b"via jump", "/tmp/lotdeploy-jump", 0o600)
        assert t.get("/tmp/lotdeploy-jump") == b"via jump"
    # the jump host's key is checked as strictly: unknown jump host -> refused
    known = _known_hosts_copy(lab, tmp_path, keep="node2")
    with pytest.raises(HostKeyError, match=f"jump host {one}:22: host key for {one} is not in"):
        lab.transport("node2", jump=one, known_hosts=known).connect()
    # ProxyJump from the ssh config, where the spec names no jump
    config = tmp_path / "ssh_config"
    config.write_text(f"Host lab-two\n  HostName {two}\n  ProxyJump {one}\n")
    via_config = SshTransport(
        "node2",
        dataclasses.replace(lab.node("node2").ssh, host="lab-two"),
        ssh_config=config,
        base_dir=lab.site.base_dir,
        connect_timeout=5,
    )
    with opened(via_config):
        assert via_config.run("echo $SSH_CONNECTION").stdout.split()[0] == one
    # a jump host that cannot reach the target
    with pytest.raises(TransportError, match=f"jump host {one}:22 cannot reach {two}:2: "):
        lab.transport("node2", jump=one, port=2).connect()


@pytest.mark.root
def test_authentication_failure(lab: Lab, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    address = lab.node("node1").ssh.host
    with pytest.raises(TransportError) as info:
        lab.transport("node1", key=key).connect()
    assert f"authentication to {address}:22 as root with key {key} failed" in str(info.value)


@pytest.mark.root
def test_unreachable_address_is_bounded(lab: Lab) -> None:
    import ipaddress

    net = ipaddress.ip_network(lab.state.subnet)
    nobody = str(net.network_address + 200)  # in the lab's subnet, no node there
    t = lab.transport("node1", host=nobody)
    t.connect_timeout = 2
    started = time.monotonic()
    with pytest.raises(TransportError, match=f"cannot connect to {nobody}:22: "):
        t.connect()
    assert time.monotonic() - started < 8


@pytest.mark.root
def test_a_cut_node_fails_in_bounded_time(lab: Lab) -> None:
    live = lab.transport("node2")
    live.connect()
    try:
        result = lab_cli(lab.dir, "cut", "node2")
        assert result.returncode == 0, result.stderr
        started = time.monotonic()
        with pytest.raises(TransportError, match="node node2: "):
            live.run("echo hello", timeout=5)
        assert time.monotonic() - started < 10
        fresh = lab.transport("node2")
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"cannot connect to [0-9.]+:22: "):
            fresh.connect()
        assert time.monotonic() - started < 10
        fresh.close()
    finally:
        live.close()
        healed = lab_cli(lab.dir, "heal", "node2")
        assert healed.returncode == 0, healed.stderr
    with opened(lab.transport("node2")) as again:
        assert again.run("true").ok

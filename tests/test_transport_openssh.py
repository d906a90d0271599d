"""`transport: openssh` against a root lab: the whole job over the `ssh` command, its masters
kept between commands (LOTDEPLOY_SSH_PERSIST) and reused by the next command, never shared
across options, closed with the command when persistence is off, and ended by the test.
Its control directory is refused unless it is private."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from lotdeploy.errors import LotdeployError
from lotdeploy.transport.openssh import control_directory, exit_masters
from tests.lab_fixtures import skip_unless_root
from tests.test_apply import ENV, lab_up


def masters(runtime: Path) -> dict[str, int]:
    """Socket name -> pid of every live master in `runtime`'s lotdeploy-ssh."""
    found: dict[str, int] = {}
    sockets = runtime / "lotdeploy-ssh"
    for path in sorted(sockets.iterdir()) if sockets.is_dir() else []:
        check = subprocess.run(
            ["ssh", "-o", f"ControlPath={path}", "-O", "check", "x"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        pid = re.search(r"pid=(\d+)", check.stderr)
        if check.returncode == 0 and pid:
            found[path.name] = int(pid.group(1))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a master forks away from us: no one of ours reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def end_masters(runtime: Path) -> None:
    exit_masters(runtime / "lotdeploy-ssh")


@pytest.mark.root
def test_the_job_over_openssh_reuses_the_masters_of_the_command_before(tmp_path: Path) -> None:
    skip_unless_root()
    runtime = Path(tempfile.mkdtemp(prefix="ld-run-", dir="/tmp"))  # short: socket paths
    env = {"XDG_RUNTIME_DIR": str(runtime), "LOTDEPLOY_SSH_PERSIST": "120"}
    try:
        with lab_up(tmp_path, "--nodes", "2") as lab:
            doc = yaml.safe_load(lab.site_file.read_text())
            doc["transport"] = "openssh"
            site = lab.dir / "openssh.yaml"
            site.write_text(yaml.safe_dump(doc, sort_keys=False))
            applied = lab.cli("apply", site, "--auto-approve", env=env)
            assert "2 node(s) changed" in applied.stdout, applied.stdout
            lab.wait_mesh()
            first = masters(runtime)
            assert len(first) == 2, first  # one per node, left for the next command
            # the next commands find them: the very same master processes
            lab.cli("drift", site, env=env)
            lab.cli("status", site, env=env)
            lab.cli("verify", site, env=env)
            assert "No changes" in lab.cli("apply", site, "--auto-approve", env=env).stdout
            assert masters(runtime) == first
            # another key (or user, or known_hosts) never shares a master: another socket
            shutil.copy2(lab.dir / "keys" / "id_ed25519", lab.dir / "keys" / "other_key")
            doc["defaults"]["ssh"]["key"] = "keys/other_key"
            other_site = lab.dir / "other-key.yaml"
            other_site.write_text(yaml.safe_dump(doc, sort_keys=False))
            lab.cli("drift", other_site, env=env)
            assert set(first) < set(masters(runtime)), masters(runtime)
            end_masters(runtime)
            # persistence off: the command's own master, gone with it
            lab.cli("drift", site, env={**env, "LOTDEPLOY_SSH_PERSIST": "0"})
            assert masters(runtime) == {}
            bad = lab.cli("drift", site, env={**env, "LOTDEPLOY_SSH_PERSIST": "soon"}, expect=1)
            assert "LOTDEPLOY_SSH_PERSIST must be whole seconds" in bad.stderr
            assert "Traceback" not in bad.stderr
            password = lab.workspace().secrets().get("cluster-password-v1")
            assert password is not None
            for secret in (password.reveal(), ENV["LOTDEPLOY_PASSPHRASE"]):
                assert not [i for i, text in enumerate(lab.outputs) if secret in text]
    finally:
        end_masters(runtime)
        found = masters(runtime)
        shutil.rmtree(runtime, ignore_errors=True)
    assert found == {}


def test_a_control_directory_others_may_enter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ld-run-", dir="/tmp"))
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        made = control_directory()
        assert made == runtime / "lotdeploy-ssh" and made.stat().st_mode & 0o777 == 0o700
        os.chmod(made, 0o755)
        with pytest.raises(LotdeployError, match="mode 0700"):
            control_directory()
        os.rmdir(made)
        elsewhere = runtime / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        made.symlink_to(elsewhere)  # a link planted in its place is not followed
        with pytest.raises(LotdeployError, match="mode 0700"):
            control_directory()
        # a runtime directory too deep for a socket path: the short fallback in /tmp
        fallback = Path(f"/tmp/lotdeploy-ssh-{os.geteuid()}")
        there = fallback.exists()
        deep = runtime / ("d" * 70)
        deep.mkdir()
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
        assert control_directory() == fallback
        open_to_others = runtime / "shared"  # a runtime directory others may write to
        open_to_others.mkdir(mode=0o777)
        os.chmod(open_to_others, 0o777)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(open_to_others))
        assert control_directory() == fallback
        if not there:
            fallback.rmdir()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.root
def test_a_forward_whose_port_was_taken_meanwhile_takes_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master binds the forward's port itself, so the port is picked free first; when
    something takes it in between (seen with four nodes forwarding at once), the master
    says "Port forwarding failed" and another port is tried, not the command failed."""
    skip_unless_root()
    from lotdeploy import protocol
    from lotdeploy.transport import openssh
    from lotdeploy.transport.base import opened
    from lotdeploy.transport.sshopts import ssh_options

    with lab_up(tmp_path, "--nodes", "1") as lab, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        picks = iter([taken.getsockname()[1], taken.getsockname()[1]])
        free = openssh._free_port
        monkeypatch.setattr(openssh, "_free_port", lambda: next(picks, None) or free())
        site = lab.site()
        node = site.node(lab.nodes[0])
        transport = openssh.OpenSshTransport(node.name, ssh_options(site, node))
        with (
            opened(transport),
            transport.forward(protocol.DEFAULT_ADMIN_HOST, protocol.DEFAULT_ADMIN_PORT) as port,
        ):
            assert port != taken.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0]))
                assert raw.recv(4)[:1] == b"\x20"  # the broker answered through it


@pytest.mark.root
def test_host_keys_are_refused_in_the_words_of_the_ssh_transport(tmp_path: Path) -> None:
    """A changed host key and an unknown one read as the ssh transport says them (the
    operator learns which it is, and what to do), with OpenSSH's own words after."""
    skip_unless_root()
    import dataclasses

    from lotdeploy.transport.base import HostKeyError
    from lotdeploy.transport.openssh import OpenSshTransport
    from lotdeploy.transport.sshopts import ssh_options

    with lab_up(tmp_path, "--nodes", "1") as lab:
        site = lab.site()
        node = site.node(lab.nodes[0])
        options = ssh_options(site, node)
        host, _, key = Path(options.known_hosts).read_text().split(maxsplit=2)
        other = tmp_path / "other"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
            check=True,
            timeout=30,
        )
        changed = tmp_path / "known_changed"
        changed.write_text(
            f"{host} {other.with_suffix('.pub').read_text().split()[0]} "
            f"{other.with_suffix('.pub').read_text().split()[1]}\n"
        )
        cases = {
            changed: f"host key for {host} does not match known_hosts {changed}: refusing to "
            "connect (",
            tmp_path / "none": f"host key for {host} is not in known_hosts {tmp_path / 'none'} "
            "(the file does not exist); add it, or run with --accept-new-host-keys (",
        }
        for known, said in cases.items():
            transport = OpenSshTransport(
                node.name, dataclasses.replace(options, known_hosts=str(known))
            )
            with pytest.raises(HostKeyError) as info:
                transport.connect()
            transport.close()
            assert str(info.value).startswith(f"node {node.name}: {said}"), str(info.value)
        assert key  # the lab's own line was there to replace


def test_no_ssh_command_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """openssh is the default transport: a controller without the `ssh` command gets the
    package to install and the other choice, never a traceback."""
    from lotdeploy.transport.base import TransportError
    from lotdeploy.transport.openssh import OpenSshTransport
    from lotdeploy.transport.sshopts import SshOptions

    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh on it
    options = SshOptions("127.0.0.1", 22, "root", None, str(tmp_path / "kh"), None)
    with pytest.raises(TransportError) as info:
        OpenSshTransport("n1", options, persist=60).connect()
    assert str(info.value) == (
        "node n1: the ssh command is not installed (Debian package openssh-client): install "
        "it, or choose `transport: ssh` (fabric/paramiko) in the site or --transport ssh"
    )


@pytest.mark.root
def test_a_master_that_idled_out_is_started_again_and_one_lost_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within one command: a kept master that ended by its idle timeout between two calls
    (the operator took long to say yes) is started again, as nothing ran on it; one that
    ended under a call is that call's error and every later call's, until close()."""
    skip_unless_root()
    from lotdeploy.transport.base import TransportError
    from lotdeploy.transport.openssh import OpenSshTransport, exit_master
    from lotdeploy.transport.sshopts import ssh_options

    runtime = Path(tempfile.mkdtemp(prefix="ld-run-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    try:
        with lab_up(tmp_path, "--nodes", "1") as lab:
            site = lab.site()
            node = site.node(lab.nodes[0])
            transport = OpenSshTransport(node.name, ssh_options(site, node), persist=2)
            assert transport.run("echo one").stdout == "one\n"
            first = masters(runtime)
            (pid,) = first.values()
            deadline = time.monotonic() + 15  # ControlPersist=2s; watched by its pid, as
            while _running(pid) and time.monotonic() < deadline:  # `-O check` is activity
                time.sleep(0.2)
            assert not _running(pid), "the master did not idle out"
            assert transport.run("echo two").stdout == "two\n"  # a new master, said nothing
            assert masters(runtime) and masters(runtime) != first
            # lost under a call (what a node gone does): an error now and on the next call
            real = transport._base

            def losing(master: bool = False) -> list[str]:
                exit_master(Path(transport._socket))
                return real(master)

            monkeypatch.setattr(transport, "_base", losing)
            with pytest.raises(TransportError, match="was lost"):
                transport.run("echo three")
            monkeypatch.setattr(transport, "_base", real)
            with pytest.raises(TransportError, match="was lost"):
                transport.run("echo four")
            transport.close()
            assert transport.run("echo five").stdout == "five\n"
            transport.close()
    finally:
        end_masters(runtime)
        left = masters(runtime)
        shutil.rmtree(runtime, ignore_errors=True)
    assert left == {}


@pytest.mark.root
def test_warmed_sessions_connect_in_the_background_and_say_an_error_where_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Sessions.warm` (a refreshing apply calls it at its start): each node's SSH handshake
    runs in the background while the command plans; the phase that needs the node finds the
    connection made, or meets the error the handshake met (once: the next phase tries again).
    """
    skip_unless_root()
    from lotdeploy.cli.common import node_sessions
    from lotdeploy.lab import control
    from lotdeploy.spec import load_site
    from lotdeploy.transport.base import TransportError

    runtime = Path(tempfile.mkdtemp(prefix="ld-run-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    try:
        with lab_up(tmp_path, "--nodes", "2") as lab:
            good, bad = lab.nodes[0], lab.nodes[1]
            control.set_delay(lab.dir, good, 300)  # a handshake of ~12 round trips: ~3.5 s
            doc = yaml.safe_load(lab.site_file.read_text())
            for entry in doc["nodes"]:
                if entry["name"] == bad:
                    entry["ssh"]["port"] = 1  # nothing listens there: refused
            path = lab.dir / "warm.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            site = load_site(path).site
            with node_sessions(site, False, "openssh") as sessions:
                sessions.warm(site.nodes, parallelism=1)  # one at a time: both within 6 s
                time.sleep(6)  # the command's own work, meanwhile
                started = time.monotonic()
                session = sessions(site.node(good))
                session.connect()
                assert time.monotonic() - started < 0.5
                assert session.run("echo hi").stdout == "hi\n"
                for _ in range(2):  # the background's error, then a new attempt's
                    with pytest.raises(TransportError, match="cannot connect") as err:
                        sessions(site.node(bad)).connect()
                    assert bad in str(err.value)
    finally:
        end_masters(runtime)
        shutil.rmtree(runtime, ignore_errors=True)

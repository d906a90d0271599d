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

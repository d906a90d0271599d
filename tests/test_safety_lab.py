"""Safe on every surface, on the node side, against a 1-node root lab (real sshd, the lab
broker, real ansible-runner): no secret readable by another user at any moment of an upload,
whatever the transport; site values reach the node's shell and Ansible as data; a node's
output is bounded. The lab is torn down (and proven gone) also when a case fails.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lotdeploy.transport.base import Transport, TransportError, opened
from lotdeploy.transport.openssh import OpenSshTransport
from lotdeploy.transport.ssh import SshTransport
from lotdeploy.transport.sshopts import ssh_options
from tests.lab_fixtures import ensure_test_user, python_for, skip_unless_root
from tests.test_apply import Lab, lab_up

pytestmark = pytest.mark.root

#: Opens every file under ROOT, as fast as it can, until STOP exists; prints what it could.
READER = r"""
import json, os, sys
root, stop = sys.argv[1], sys.argv[2]
opened, scans = set(), 0
print("ready", flush=True)
while not os.path.exists(stop):
    scans += 1
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                with open(os.path.join(folder, name), "rb") as handle:
                    handle.read(1)
                opened.add(os.path.join(folder, name))
            except OSError:
                pass
print(json.dumps({"scans": scans, "opened": sorted(opened)}))
"""
#: What must never be readable: the TLS key, the routes (the cluster password), the archive
#: holding both, and any temporary of theirs (their names hold these words). Certificates
#: are public: their temporaries may be read once they have their mode (0644).
SECRET_WORDS = ("key", "routes.lot", ".tar")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    with lab_up(tmp_path_factory.mktemp("safetylab"), "--nodes", "1") as made:
        yield made


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may enter and list (as a node's /opt often is), on the node:
    the lab's nodes share the host's /tmp."""
    path = Path(tempfile.mkdtemp(prefix="lotdeploy-shared-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def reader_polling(root: Path) -> Iterator[dict[str, Any]]:
    """The unprivileged user opening every file under `root` while the block runs; the
    dict gets what it could open (`opened`) and how often it scanned (`scans`)."""
    user = ensure_test_user()
    stop = root.parent / f".stop-{secrets.token_hex(4)}"
    proc = subprocess.Popen(
        ["runuser", "-u", user, "--", python_for(user), "-c", READER, str(root), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    found: dict[str, Any] = {}
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield found
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=60)
        stop.unlink()
        found.update(json.loads(out))


def _transport(lab: Lab, kind: str) -> Transport:
    site = lab.site()
    node = site.node(lab.nodes[0])
    if kind == "ssh":
        return SshTransport.for_node(node, base_dir=site.base_dir)
    return OpenSshTransport(node.name, ssh_options(site, node))


@pytest.mark.parametrize(("kind", "uploads"), [("ssh", 300), ("openssh", 80)])
def test_no_other_user_can_open_an_upload_at_any_moment(
    lab: Lab, shared: Path, kind: str, uploads: int
) -> None:
    """Many uploads of a key (mode 0600) into a directory others may list, an unprivileged
    reader opening every file there meanwhile: it never opens one (a temporary made with the
    server's default mode 0644 and restricted afterwards would be opened)."""
    data = secrets.token_bytes(32 * 1024)
    with opened(_transport(lab, kind)) as transport, reader_polling(shared) as seen:
        for _ in range(uploads):
            transport.put(data, f"{shared}/server.key", 0o600)
    assert seen["scans"] > 50 and seen["opened"] == [], seen
    assert (shared / "server.key").read_bytes() == data
    assert [p.name for p in shared.iterdir()] == ["server.key"]  # no temporary left


@pytest.mark.parametrize("kind", ["ssh", "openssh"])
def test_a_node_flooding_its_output_is_stopped(lab: Lab, kind: str) -> None:
    with opened(_transport(lab, kind)) as transport:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"`head -c …` wrote more than 4 MiB of output"):
            transport.run("head -c 500000000 /dev/zero")
        assert time.monotonic() - started < 20
        assert transport.run("echo still here").stdout == "still here\n"


def test_site_values_are_data_on_every_path(lab: Lab, shared: Path) -> None:
    """A reload_command that is a Jinja lookup, applied over SSH (node commands quoted with
    shlex) and twice over Ansible (real ansible-runner; values !unsafe): the reload fails on
    the node (its text is not a command), nothing runs the lookup anywhere. Meanwhile an
    unprivileged reader polls the release and TLS directories (others may list them): it
    opens no key, no routes, no archive, no temporary. Pruning old releases (four entries
    in releases/ by the end) removes releases only, not a directory someone put there."""
    pwned = Path(f"/tmp/lotdeploy-pwned-{secrets.token_hex(4)}")
    hostile = f'{{{{ lookup("pipe", "touch {pwned}") }}}}'
    opened_secrets: list[str] = []
    theirs = shared / "release" / "releases" / "notes"  # not a release: pruning keeps it
    theirs.mkdir(parents=True)
    (theirs / "todo.txt").write_text("mine\n")
    try:
        for number, transport in enumerate(("ssh", "ansible", "ansible")):
            tls = shared / f"tls-{number}"  # new TLS files each time: the reload always runs
            tls.mkdir(mode=0o755)
            variant = lab.variant(f"hostile-{number}.yaml")  # the lab's site, but for:
            text = variant.read_text()
            for key, value in (
                ("release_dir", f"{shared}/release"),
                ("tls_dir", str(tls)),
                ("reload_command", hostile),
            ):
                start = text.index(f"    {key}: ")
                end = text.index("\n", start)
                text = text[:start] + f"    {key}: {json.dumps(value)}" + text[end:]
            variant.write_text(text)
            with reader_polling(shared) as seen:
                proc = lab.cli(
                    "apply", variant, "--auto-approve", "--transport", transport, expect=None
                )
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
            assert "lookup" in proc.stdout + proc.stderr or "reload" in proc.stdout + proc.stderr
            assert not pwned.exists(), f"the lookup ran ({transport})"
            key = tls / "server.key"
            assert key.is_file() and key.stat().st_mode & 0o077 == 0, proc.stdout + proc.stderr
            opened_secrets += [
                p for p in seen["opened"] if any(w in Path(p).name for w in SECRET_WORDS)
            ]
        assert opened_secrets == [], opened_secrets
        assert (theirs / "todo.txt").read_text() == "mine\n"
        upload = shared / "release" / "releases" / ".lotdeploy-upload"  # deploy.yml's
        assert stat.S_IMODE(upload.stat().st_mode) == 0o700 and not upload.is_symlink()
    finally:
        pwned.unlink(missing_ok=True)
        lab.cli("apply", lab.site_file, "--auto-approve", expect=None)

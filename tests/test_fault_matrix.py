"""The fault matrix (docs/reliability.md "Fault matrix"): every fault an operator's apply can
meet, injected for real on a root lab, and the promised outcome checked the same way each
time:

* a clear error naming the node (for a node's fault) and the cause, never a traceback;
* no secret in anything printed (checked once for the whole module, at the end);
* nothing half-written: the state document reads and validates, its node records say what
  the nodes run, no temporary is left in the workspace;
* a rerun after the fault is removed converges: `apply` exits 0 and `drift` is clean.

Faults are injected at the edges only: the lab's own controls (cut, heal, kill and revive a
broker), a firewall rule in a node's namespace, a tiny full tmpfs, a file changed, a signal
sent when apply's JSON events show it reached a given step on a given node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lotdeploy.apply.activate import admin_password, admin_session
from lotdeploy.fsutil import is_temporary
from lotdeploy.lab import labstate
from lotdeploy.lab.control import kill_broker
from lotdeploy.lab.hosts import NODE_RELEASE_DIR, NODE_TLS_DIR
from lotdeploy.state import StateStore
from tests.lab_fixtures import lab_cli, skip_unless_root
from tests.test_apply import ENV, QUICK_LOCK, Lab, full_tmpfs, lab_up, summary

pytestmark = pytest.mark.root

OUTPUTS: list[str] = []
#: the validity a change alternates through, so every case has something to apply
_VALIDITY = iter(range(60, 200))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    with lab_up(tmp_path_factory.mktemp("faultlab"), "--regions", "eu:2,us:1") as made:
        made.outputs = OUTPUTS
        made.cli("apply", made.site_file, "--auto-approve")
        yield made


@pytest.fixture
def converged(lab: Lab) -> Lab:
    """The lab on its own site (every case ends converged on some site: the offline plan
    says whether it is this one, drift whether the nodes still run it)."""
    plan = lab.cli("plan", lab.site_file, "--detailed-exitcode", expect=None)
    if plan.returncode != 0 or lab.cli("drift", lab.site_file, expect=None).returncode != 0:
        lab.cli("apply", lab.site_file, "--auto-approve")
        lab.cli("drift", lab.site_file)
    return lab


def _change(lab: Lab) -> Path:
    """A site that differs from what the nodes run (a new validity: new releases, routes)."""
    doc = yaml.safe_load(lab.site_file.read_text())
    doc["defaults"]["message_validity_sec"] = next(_VALIDITY)
    doc["defaults"]["cross_region_message_validity_sec"] = next(_VALIDITY)
    path = lab.dir / "changed.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _failed(proc: subprocess.CompletedProcess[str], node: str | None, cause: str) -> None:
    """The promised error: exit 1, the node and the cause named, no traceback."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}\n{text}"
    assert "Traceback" not in text and "internal error" not in text, text
    if node is not None:
        assert f"node {node}" in text or f"{node}:" in text, text
    assert cause in text, f"{cause!r} not in\n{text}"


def _consistent(lab: Lab, killed: bool = False) -> None:
    """The state reads and validates, and no temporary is left in the workspace. Right
    after a SIGKILL (`killed`), atomic_write's own temporaries may be (a write cut short:
    the file it was writing is whole, and the next write sweeps them); nothing else."""
    state = StateStore(lab.workspace()).read()
    assert state.serial > 0
    left = [p.name for p in lab.workspace().root.rglob("*.tmp")]
    if killed:
        left = [name for name in left if not is_temporary(name)]
    assert not left, left


def _converges(lab: Lab, site: Path) -> None:
    lab.cli("apply", site, "--auto-approve")
    lab.cli("drift", site)


def _sh(lab: Lab, node: str, command: str) -> str:
    with lab.transport(node) as t:
        return t.run(command).stdout


def _in_namespace(lab: Lab, node: str, *argv: str) -> None:
    ns = labstate.require(lab.dir).node(node).ns
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, timeout=20)


# -- the node goes away ------------------------------------------------------------------------


def test_a_node_cut_before_apply_fails_alone(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    assert lab_cli(lab.dir, "cut", "us1").returncode == 0
    try:
        proc = lab.cli("apply", site, "--auto-approve", expect=None)
        _failed(proc, "us1", "cannot connect")
        assert "2 node(s) changed" in proc.stdout
    finally:
        assert lab_cli(lab.dir, "heal", "us1").returncode == 0
    _consistent(lab)
    _converges(lab, site)


@contextlib.contextmanager
def _apply_until(
    lab: Lab, site: Path, node: str, step: str, *args: str
) -> Iterator[subprocess.Popen[str]]:
    """`apply --json` running until its events show `node` starting `step` (bounded)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lotdeploy", "apply", str(site), "--auto-approve", "--json", *args],
        cwd=lab.dir,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            seen.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("node") == node and event.get("step") == step:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{node} never reached {step}: {seen}")
        else:
            raise AssertionError(f"apply ended before {node} reached {step}: {seen}")
        yield proc
    finally:
        if proc.poll() is None:
            try:
                out, err = proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        else:
            out, err = proc.communicate()
        lab.outputs += ["".join(seen) + out, err]
        proc.stdout_text = "".join(seen) + out  # type: ignore[attr-defined]
        proc.stderr_text = err  # type: ignore[attr-defined]


def _finished(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        getattr(proc, "stdout_text", ""),
        getattr(proc, "stderr_text", ""),
    )


def test_a_node_cut_during_apply_fails_alone_and_a_rerun_converges(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    # us1 300 ms away, so its apply is still under way when the cut lands (an apply of a
    # near node is over before `lab cut` has run)
    assert lab_cli(lab.dir, "delay", "us1", "300").returncode == 0
    try:
        with _apply_until(lab, site, "us1", "files") as proc:
            assert lab_cli(lab.dir, "cut", "us1").returncode == 0
    finally:
        assert lab_cli(lab.dir, "heal", "us1").returncode == 0
        assert lab_cli(lab.dir, "delay", "us1", "0").returncode == 0
    result = _finished(proc)
    assert result.returncode == 1
    failed = {f["node"]: f for f in summary(result)["failed"]}
    assert list(failed) == ["us1"] and failed["us1"]["error"], failed  # it fails alone
    _consistent(lab)
    _converges(lab, site)


def test_a_node_cut_after_apply_is_named_by_the_next_one(converged: Lab) -> None:
    lab = converged
    assert lab_cli(lab.dir, "cut", "eu2").returncode == 0
    try:
        proc = lab.cli("apply", lab.site_file, "--auto-approve", expect=None)
        _failed(proc, "eu2", "could not be read")
        assert "No changes. " not in proc.stdout
        assert "No changes on the nodes read; could not read eu2." in proc.stdout
    finally:
        assert lab_cli(lab.dir, "heal", "eu2").returncode == 0
    _consistent(lab)
    _converges(lab, lab.site_file)


def test_a_node_cut_is_named_by_a_rollout_apply_too(converged: Lab) -> None:
    """The same for a site with a rollout (and so for a take-over): never "No changes" while
    a node could not be read (a rollout with changes goes on and its wave meets the node:
    test_rollout's cut-node case)."""
    lab = converged
    doc = yaml.safe_load(lab.site_file.read_text())
    doc["rollout"] = {"waves": [{"name": "canary", "select": ["eu1"]}]}
    rolling = lab.dir / "rolling.yaml"
    rolling.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert lab_cli(lab.dir, "cut", "eu2").returncode == 0
    try:
        proc = lab.cli("apply", rolling, "--auto-approve", expect=1)
        assert "No changes. " not in proc.stdout  # the plan says what it read: not that
        assert "node eu2: could not be read" in proc.stderr
        assert "the unread ones are not known to match" in proc.stderr
    finally:
        assert lab_cli(lab.dir, "heal", "eu2").returncode == 0
    _consistent(lab)
    _converges(lab, rolling)


def test_a_broker_killed_mid_activation_fails_its_node_and_comes_back(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    # eu2 300 ms away, so its pipelined route commands are still in flight when the broker
    # dies; killed in-process (a `lab kill` subprocess may start after the step is over)
    assert lab_cli(lab.dir, "delay", "eu2", "300").returncode == 0
    try:
        with _apply_until(lab, site, "eu2", "routes") as proc:
            kill_broker(lab.dir, "eu2")
    finally:
        assert lab_cli(lab.dir, "revive", "eu2").returncode == 0
        assert lab_cli(lab.dir, "delay", "eu2", "0").returncode == 0
    result = _finished(proc)
    assert result.returncode == 1 and "eu2" in {f["node"] for f in summary(result)["failed"]}
    _consistent(lab)
    _converges(lab, site)


def test_sshd_unreachable_fails_that_node_with_the_cause(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    rule = ["-p", "tcp", "--dport", "22", "-j", "REJECT", "--reject-with", "tcp-reset"]
    _in_namespace(lab, "eu1", "iptables", "-w", "10", "-I", "INPUT", *rule)
    try:
        proc = lab.cli("apply", site, "--auto-approve", expect=None)
        _failed(proc, "eu1", "Connection refused")
    finally:
        _in_namespace(lab, "eu1", "iptables", "-w", "10", "-D", "INPUT", *rule)
    _consistent(lab)
    _converges(lab, site)


def test_a_changed_host_key_refuses_that_node(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    known = lab.dir / "known_hosts"
    original = known.read_text()
    address = lab.site().node("us1").address
    lines = original.splitlines()
    other = next(line for line in lines if not line.startswith(address + " "))
    forged = [
        f"{address} {other.split(' ', 1)[1]}" if line.startswith(address + " ") else line
        for line in lines
    ]
    known.write_text("\n".join(forged) + "\n")
    try:
        proc = lab.cli("apply", site, "--auto-approve", expect=None)
        _failed(proc, "us1", "host key")
    finally:
        known.write_text(original)
    _consistent(lab)
    _converges(lab, site)


# -- what a node runs is not what lotdeploy put there -----------------------------------------


def _certificate(lab: Lab, expired: bool) -> bytes:
    """A certificate for eu1 that the site's CA did not issue (or one that has expired)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eu1")])
    now = datetime.now(UTC)
    span = (
        (now - timedelta(days=30), now - timedelta(days=1))
        if expired
        else (now, now + timedelta(days=30))
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(span[0])
        .not_valid_after(span[1])
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("expired", [False, True], ids=["wrong-ca", "expired"])
def test_a_wrong_or_expired_certificate_on_a_node_is_put_back(
    converged: Lab, expired: bool
) -> None:
    lab = converged
    pem = _certificate(lab, expired)
    with lab.transport("eu1") as t:
        t.put(pem, f"{NODE_TLS_DIR}/server.crt", 0o644)
    drift = lab.cli("drift", lab.site_file, expect=2)
    assert f"file {NODE_TLS_DIR}/server.crt: changed" in drift.stdout
    proc = lab.cli("apply", lab.site_file, "--auto-approve")
    assert "changed on the node" in proc.stdout
    lab.cli("verify", lab.site_file)
    _consistent(lab)
    lab.cli("drift", lab.site_file)


# -- credentials ------------------------------------------------------------------------------


def test_a_wrong_admin_password_fails_every_node_without_showing_it(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    path = lab.dir / "secrets" / "admin-password"
    original = path.read_text()
    path.write_text("not-the-admin-password-0123\n")
    try:
        proc = lab.cli("apply", site, "--auto-approve", expect=None)
        _failed(proc, "eu1", "bad user name or password")
        assert "not-the-admin-password-0123" not in proc.stdout + proc.stderr
    finally:
        path.write_text(original)
    _consistent(lab)
    _converges(lab, site)


def test_a_wrong_passphrase_changes_nothing(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    serial = lab.state().serial
    proc = subprocess.run(
        [sys.executable, "-m", "lotdeploy", "apply", str(site), "--auto-approve"],
        cwd=lab.dir,
        env={**os.environ, "LOTDEPLOY_PASSPHRASE": "wrong passphrase, long enough"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lab.outputs += [proc.stdout, proc.stderr]
    _failed(proc, None, "wrong passphrase")
    assert lab.state().serial == serial
    _consistent(lab)
    _converges(lab, site)


@pytest.mark.parametrize("what", ["state.json", "secrets.enc"])
def test_a_corrupted_workspace_file_is_one_line_and_nothing_is_written(
    converged: Lab, what: str
) -> None:
    lab = converged
    site = _change(lab)
    path = lab.workspace().root / what
    original = path.read_bytes()
    if what == "state.json":  # cut short, as a crash or a full disk would leave a copy
        damaged = bytearray(original[: len(original) // 2])
    else:  # one byte changed: the store's authentication tag no longer matches
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x55
    path.write_bytes(bytes(damaged))
    try:
        proc = lab.cli("apply", site, "--auto-approve", expect=None)
        _failed(proc, None, what)
        assert len((proc.stderr.strip() or "x").splitlines()) <= 3, proc.stderr
        assert path.read_bytes() == bytes(damaged)  # nothing written over it
    finally:
        path.write_bytes(original)
    _consistent(lab)
    _converges(lab, site)


# -- runs that overlap, and runs that stop half-way ------------------------------------------


HOLD_LOCK = """
import sys, time
from pathlib import Path
from lotdeploy.workspace import Workspace
with Workspace(Path(sys.argv[1])).lock("apply"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_concurrent_apply_is_refused_naming_the_holder(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lab.workspace().root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = lab.cli("apply", site, "--auto-approve", expect=None, env=QUICK_LOCK)
        _failed(proc, None, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait(10)
    _consistent(lab)
    _converges(lab, site)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
@pytest.mark.parametrize("step", ["files", "users", "routes"])
def test_an_apply_stopped_at_each_step_leaves_a_true_state_and_resumes(
    converged: Lab, sig: signal.Signals, step: str
) -> None:
    lab = converged
    site = _change(lab)
    ws = lab.site()
    if step == "users":  # a user to put back, so the step runs
        with lab.transport("eu1") as t, admin_session(ws, ws.node("eu1"), t) as client:
            client.remove_user("cluster")
    with _apply_until(lab, site, "eu1", step) as proc:
        proc.send_signal(sig)
    assert proc.returncode != 0
    text = getattr(proc, "stdout_text", "") + getattr(proc, "stderr_text", "")
    assert "Traceback" not in text
    _consistent(lab, killed=sig == signal.SIGKILL)
    plan = lab.cli("plan", site, "--refresh", "--detailed-exitcode", expect=None)
    assert plan.returncode in (0, 2), plan.stderr
    _converges(lab, site)
    _consistent(lab)  # the rerun swept what the kill left
    lab.cli("apply", lab.site_file, "--auto-approve")


# -- disks that are full ----------------------------------------------------------------------


def test_a_full_disk_on_a_node_keeps_its_previous_release(converged: Lab) -> None:
    lab = converged
    if shutil.which("nsenter") is None:
        pytest.skip("no nsenter (util-linux)")
    site = _change(lab)
    before = lab.state().nodes["eu2"].release
    with full_tmpfs(lab, "eu2", NODE_RELEASE_DIR):
        proc = lab.cli("apply", site, "--auto-approve", expect=None)
        _failed(proc, "eu2", "No space left on device")
    assert lab.state().nodes["eu2"].release == before
    _consistent(lab)
    _converges(lab, site)


def test_a_full_workspace_disk_is_one_line_and_the_state_stays_whole(converged: Lab) -> None:
    lab = converged
    site = _change(lab)
    mount = Path(tempfile.mkdtemp(prefix="ld-fullws-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        check=True,
        timeout=20,
    )
    try:
        workspace = mount / "ws"
        shutil.copytree(lab.workspace().root, workspace, ignore=shutil.ignore_patterns("lock"))
        state_before = (workspace / "state.json").read_bytes()
        with contextlib.suppress(OSError), open(mount / "fill", "wb") as fh:
            fh.write(b"\0" * (2 << 20))
        proc = lab.cli("apply", site, "--auto-approve", "--workspace", workspace, expect=None)
        _failed(proc, None, "No space left on device")
        assert (workspace / "state.json").read_bytes() in (state_before,) or json.loads(
            (workspace / "state.json").read_text()
        )
        StateStore(_workspace_at(workspace)).read()  # whole and valid
    finally:
        subprocess.run(["umount", str(mount)], timeout=20, check=False)
        shutil.rmtree(mount, ignore_errors=True)
    _consistent(lab)
    _converges(lab, site)


def _workspace_at(root: Path) -> Any:
    from lotdeploy.secret import Secret
    from lotdeploy.workspace import Workspace

    return Workspace(root, passphrase_provider=lambda _: Secret(ENV["LOTDEPLOY_PASSPHRASE"]))


# -- no secret anywhere -----------------------------------------------------------------------


def test_no_secret_in_any_output(lab: Lab) -> None:
    store = lab.workspace().secrets()
    values = [v.reveal() for n in store.names() if (v := store.get(n)) is not None]
    site = lab.site()
    values += [admin_password(site, site.node(lab.nodes[0])).reveal(), ENV["LOTDEPLOY_PASSPHRASE"]]
    text = "\n".join(OUTPUTS)
    assert OUTPUTS and values
    for value in values:
        assert value not in text

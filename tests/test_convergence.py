"""Apply converges on what is live: "Apply complete" and "No changes" are never false.

Against a root lab (eu1, eu2, us1: real sshd, real lab brokers, real TLS), through the real
CLI. Each case is one way lotdeploy used to say all was well while a node differed from
the site (issue 18): a route or a user removed by hand, renamed or moved files, a status
that hid missing routes, an edited or foreign saved plan, a rollout bypassed by a plain
apply, a confirm-or-revert timer of a killed run, a TLS install that failed after
`current` moved, a rollback to a damaged release, a lock broken under a live run, a
killed run's children, and release clean-up that touched what was not its own.

The lab is shared by the module; every case starts from the site applied and drift clean
(`converged`) and leaves it so. The last case greps everything printed for every secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from lotdeploy.apply.activate import admin_password, admin_session
from lotdeploy.lab.hosts import NODE_RELEASE_DIR, NODE_TLS_DIR
from lotdeploy.rollout.confirm import arm
from tests.lab_fixtures import skip_unless_root
from tests.test_apply import ENV, QUICK_LOCK, Lab, full_tmpfs, lab_up, summary, wait_for

pytestmark = pytest.mark.root

OUTPUTS: list[str] = []
WAVES = [{"name": "canary", "select": ["eu1"]}, {"name": "second", "select": ["eu2"]}]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    with lab_up(tmp_path_factory.mktemp("convergelab"), "--regions", "eu:2,us:1") as made:
        made.outputs = OUTPUTS
        made.cli("apply", made.site_file, "--auto-approve")
        yield made


@pytest.fixture
def converged(lab: Lab) -> Lab:
    """The lab on its own site, every node read and drift clean."""
    lab.cli("apply", lab.site_file, "--auto-approve", "--refresh")
    lab.cli("drift", lab.site_file)
    return lab


def _site(lab: Lab, name: str, **changes: Any) -> Path:
    """A copy of the lab's site with `defaults` (and `defaults.broker` for broker keys)
    changed; `rollout=` sets the rollout section."""
    doc = yaml.safe_load(lab.site_file.read_text())
    for key, value in changes.items():
        if key == "rollout":
            doc["rollout"] = value
        elif key in ("cert_file", "key_file", "tls_dir", "release_dir"):
            doc["defaults"]["broker"][key] = value
        else:
            doc["defaults"][key] = value
    path = lab.dir / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _sh(lab: Lab, node: str, command: str) -> str:
    with lab.transport(node) as t:
        return t.run(command).stdout


# -- an independent client: paho-mqtt over each node's TLS listener ----------------------------


def _every_message_once(lab: Lab, count: int = 5) -> None:
    """Publish `count` messages on every node and prove each subscriber got every message
    exactly once, with a plain paho-mqtt client over each broker's TLS listener (none of
    lotdeploy's code on the path)."""
    site = lab.site()
    password = admin_password(site, site.node(lab.nodes[0])).reveal()
    ca = Path(tempfile.mkdtemp()) / "ca.crt"
    ca.write_text(_sh(lab, lab.nodes[0], f"cat {NODE_TLS_DIR}/ca.crt"))
    context = ssl.create_default_context(cafile=str(ca))
    received: dict[str, Counter[str]] = {n: Counter() for n in lab.nodes}
    lock = threading.Lock()
    clients: list[paho.Client] = []

    def client(name: str, role: str) -> paho.Client:
        node = site.node(name)
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"conv-{role}-{name}")
        c.username_pw_set("root", password)
        c.tls_set_context(context)
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        c.connect(node.address, node.port, keepalive=30)
        c.loop_start()
        clients.append(c)
        assert connected.wait(10), f"paho could not connect to {name}"
        return c

    try:
        for name in lab.nodes:
            sub = client(name, "sub")

            def on_message(_c: Any, _u: Any, msg: Any, name: str = name) -> None:
                with lock:
                    received[name][msg.payload.decode()] += 1

            sub.on_message = on_message
            done = threading.Event()
            sub.on_subscribe = lambda *a, done=done: done.set()
            sub.subscribe("conv-test/#", qos=1)
            assert done.wait(10)
        for name in lab.nodes:
            pub = client(name, "pub")
            for k in range(count):
                pub.publish(f"conv-test/{name}", f"{name}:{k}", qos=1).wait_for_publish(10)
        expected = Counter(f"{n}:{k}" for n in lab.nodes for k in range(count))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with lock:
                if all(received[n] == expected for n in lab.nodes):
                    break
            time.sleep(0.2)
        time.sleep(1.0)  # a duplicate would come late
        with lock:
            for name in lab.nodes:
                assert received[name] == expected, f"{name} got {dict(received[name])}"
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()


# -- 1. a route and a user removed by hand -----------------------------------------------------


def test_a_route_and_a_user_removed_by_hand_are_put_back_and_every_message_arrives_once(
    converged: Lab,
) -> None:
    lab = converged
    site = lab.site()
    with lab.transport("eu2") as t, admin_session(site, site.node("eu2"), t) as client:
        client.remove_route("lotdeploy_us1")
    with lab.transport("eu1") as t, admin_session(site, site.node("eu1"), t) as client:
        client.remove_user("cluster")
    drift = lab.cli("drift", lab.site_file, expect=2)
    assert "eu2: route lotdeploy_us1: missing on the broker" in drift.stdout
    assert "eu1: user cluster: the broker refuses its login" in drift.stdout
    # status saw the missing route as nothing wrong before: now it is exit 2
    status = lab.cli("status", lab.site_file, "--json", expect=2)
    assert json.loads(status.stdout)["eu2"]["missing"] == ["lotdeploy_us1"]
    proc = lab.cli("apply", lab.site_file, "--auto-approve")
    assert "+ user cluster" in proc.stdout and "the broker refuses its login" in proc.stdout
    assert "+ route lotdeploy_us1" in proc.stdout
    assert "Apply complete: 2 node(s) changed" in proc.stdout
    lab.cli("drift", lab.site_file)
    lab.cli("status", lab.site_file)
    _every_message_once(lab)


def test_refresh_only_records_what_the_nodes_run_and_the_next_plan_puts_it_back(
    converged: Lab,
) -> None:
    lab = converged
    site = lab.site()
    with lab.transport("us1") as t, admin_session(site, site.node("us1"), t) as client:
        client.remove_route("lotdeploy_eu1")
    serial = lab.state().serial
    proc = lab.cli("apply", lab.site_file, "--refresh-only", "--auto-approve")
    assert "~ node us1: route/lotdeploy_eu1: missing" in proc.stdout
    record = lab.state().nodes["us1"]
    assert "lotdeploy_eu1" in record.routes and record.drift == {"route/lotdeploy_eu1": "missing"}
    assert lab.state().serial == serial + 1
    # an offline plan now knows, and says what it takes
    plan = lab.cli("plan", lab.site_file, "--detailed-exitcode", expect=2)
    assert "offline:" in plan.stdout and "+ route lotdeploy_eu1" in plan.stdout
    # nothing changed on the node
    lab.cli("drift", lab.site_file, expect=2)
    proc = lab.cli("apply", lab.site_file, "--auto-approve")
    assert "1 node(s) changed" in proc.stdout
    assert lab.state().nodes["us1"].drift == {}
    assert (
        "No changes to record"
        in lab.cli("apply", lab.site_file, "--refresh-only", "--auto-approve").stdout
    )


# -- 2. the whole release is desired state: names, directories -------------------------------


def test_renamed_tls_files_are_deployed_and_the_old_ones_removed(converged: Lab) -> None:
    lab = converged
    renamed = _site(lab, "renamed.yaml", cert_file="node.crt", key_file="node.key")
    plan = lab.cli("plan", renamed)
    assert f"+ file {NODE_TLS_DIR}/node.crt" in plan.stdout
    assert f"- file {NODE_TLS_DIR}/server.key" in plan.stdout
    lab.cli("apply", renamed, "--auto-approve")
    listing = _sh(lab, "eu1", f"stat -c '%n %a' {NODE_TLS_DIR}/*")
    assert f"{NODE_TLS_DIR}/node.crt 644" in listing and f"{NODE_TLS_DIR}/node.key 600" in listing
    assert "server.crt" not in listing and "server.key" not in listing
    lab.cli("drift", renamed)
    assert "No changes" in lab.cli("apply", renamed, "--auto-approve").stdout
    # and back: the broker's own names again
    lab.cli("apply", lab.site_file, "--auto-approve")
    listing = _sh(lab, "eu1", f"ls {NODE_TLS_DIR}")
    assert "server.crt" in listing and "node.crt" not in listing


def test_moved_directories_are_deployed_and_only_what_was_ours_is_removed(converged: Lab) -> None:
    lab = converged
    new_tls, new_release = "/etc/coreflux/tls2", "/etc/coreflux/lotdeploy2"
    for node in lab.nodes:  # the operator points the broker at its new TLS directory
        _sh(lab, node, f"mkdir -p {new_tls}")
    # an operator's own files beside lotdeploy's releases
    _sh(
        lab,
        "eu1",
        f"echo notes > {NODE_RELEASE_DIR}/releases/NOTES; mkdir -p "
        f"{NODE_RELEASE_DIR}/releases/0123456789abcdef",
    )
    moved = _site(lab, "moved.yaml", tls_dir=new_tls, release_dir=new_release)
    plan = lab.cli("plan", moved)
    assert f"+ file {new_release}/current/routes.lot" in plan.stdout
    assert f"- file {NODE_RELEASE_DIR}/current/routes.lot" in plan.stdout
    assert f"+ file {new_tls}/server.crt" in plan.stdout
    lab.cli("apply", moved, "--auto-approve")
    for node in lab.nodes:
        assert _sh(lab, node, f"readlink {new_release}/current").startswith("releases/")
        assert "server.key" in _sh(lab, node, f"ls {new_tls}")
        assert "server.key" not in _sh(lab, node, f"ls {NODE_TLS_DIR}")
        assert "current" not in _sh(lab, node, f"ls {NODE_RELEASE_DIR}")
    # what was not lotdeploy's stays: a file, and a directory without a manifest
    assert _sh(lab, "eu1", f"ls {NODE_RELEASE_DIR}/releases").split() == [
        "0123456789abcdef",
        "NOTES",
    ]
    lab.cli("drift", moved)
    assert "No changes" in lab.cli("apply", moved, "--auto-approve").stdout
    lab.cli("apply", lab.site_file, "--auto-approve")  # and back
    assert "server.key" in _sh(lab, "eu2", f"ls {NODE_TLS_DIR}")
    _sh(lab, "eu1", f"rm -rf {NODE_RELEASE_DIR}/releases/NOTES {NODE_RELEASE_DIR}/releases/0123*")


# -- 3. saved plans are exact -----------------------------------------------------------------


def test_an_edited_or_foreign_saved_plan_is_refused(
    converged: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lotdeploy.plan import document

    lab = converged
    changed = _site(lab, "saved.yaml", message_validity_sec=41)
    saved = lab.dir / "review.plan"
    lab.cli("plan", changed, "--out", saved)
    doc = json.loads(saved.read_text())
    doc["changes"][0]["payload"]["broker_address"] = "198.18.0.99"
    edited = lab.dir / "edited.plan"
    edited.write_text(json.dumps(doc))
    proc = lab.cli("apply", edited, expect=1)
    assert "edited after it was saved" in proc.stderr and "nothing was applied" in proc.stderr
    # edited, with a digest forged to match: what it says is not what apply would do
    doc = json.loads(saved.read_text())
    doc["changes"][0]["payload"]["message_validity_sec"] = 999
    doc["changes"][0]["attributes"]["MESSAGE_VALIDITY_SEC"]["after"] = "999"
    with monkeypatch.context() as patched:
        patched.setattr(document, "_checked", lambda plan, doc, digest: plan)
        doc["digest"] = document.plan_digest(document.plan_from_document(doc), in_order=True)
    edited.write_text(json.dumps(doc))
    proc = lab.cli("apply", edited, expect=1)
    assert "the saved plan is stale, nothing was applied" in proc.stderr
    assert "MESSAGE_VALIDITY_SEC 999 -> 41" in proc.stderr
    # another workspace of the same site: its plans do not apply here
    other = lab.dir / "other"
    other.mkdir(exist_ok=True)
    shutil.copy(changed, other / "site.yaml")
    for extra in ("keys", "secrets", "known_hosts"):
        source = lab.dir / extra
        target = other / extra
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copy(source, target)
    foreign = lab.dir / "foreign.plan"
    lab.cli("plan", other / "site.yaml", "--out", foreign)
    proc = lab.cli("apply", foreign, "--workspace", lab.workspace().root, expect=1)
    assert "made in another workspace" in proc.stderr
    # the reviewed plan itself applies
    lab.cli("apply", saved)
    assert lab.state().nodes["eu1"].routes["lotdeploy_eu2"]["message_validity_sec"] == 41


# -- 4. a paused rollout owns the site ---------------------------------------------------------


def test_a_paused_rollout_cannot_be_bypassed_and_continue_converges(converged: Lab) -> None:
    lab = converged
    rolling = _site(lab, "rolling.yaml", message_validity_sec=44, rollout={"waves": WAVES})
    plain = _site(lab, "plain.yaml", message_validity_sec=44)
    proc = lab.cli("apply", rolling, "--auto-approve", "--pause-after", "canary")
    assert "Rollout paused" in proc.stdout
    refused = lab.cli("apply", plain, "--auto-approve", expect=1)
    assert "a rollout paused after wave canary" in refused.stderr
    assert "--continue" in refused.stderr and "--abandon-rollout" in refused.stderr
    assert lab.state().nodes["eu2"].routes["lotdeploy_eu1"]["message_validity_sec"] == 30
    proc = lab.cli("apply", rolling, "--auto-approve", "--continue")
    assert "Rollout complete" in proc.stdout
    assert "No changes" in lab.cli("apply", plain, "--auto-approve").stdout
    # paused again, then dropped on purpose: the plain apply goes on
    back = _site(lab, "back.yaml", rollout={"waves": WAVES})
    lab.cli("apply", back, "--auto-approve", "--pause-after", "canary")
    proc = lab.cli("apply", lab.site_file, "--auto-approve", "--abandon-rollout")
    assert "abandoned rollout" in proc.stderr and "Apply complete" in proc.stdout
    assert lab.state().rollout is None


# -- 5. a timer belongs to one switch ------------------------------------------------------------


def test_a_killed_runs_confirm_timer_is_disarmed_before_it_reverts(converged: Lab) -> None:
    lab = converged
    # give eu1 a release before this one, as a killed confirm-or-revert apply would leave
    lab.cli("apply", _site(lab, "older.yaml", message_validity_sec=46), "--auto-approve")
    lab.cli("apply", lab.site_file, "--auto-approve")
    record = lab.state().nodes["eu1"]
    assert record.previous_release and record.release
    site = lab.site()
    with lab.transport("eu1") as transport:  # armed by a run that was killed before confirm
        arm(transport, site.node("eu1"), record.previous_release, record.release, 8)
    started = time.monotonic()
    plan = lab.cli("plan", lab.site_file, "--refresh", "--detailed-exitcode", expect=2)
    assert "confirm-or-revert timer" in plan.stdout
    proc = lab.cli("apply", lab.site_file, "--auto-approve")
    assert "timer is still armed: disarmed" in proc.stdout
    time.sleep(max(0.0, 8 + 3 - (time.monotonic() - started)))
    assert _sh(lab, "eu1", f"readlink {NODE_RELEASE_DIR}/current").strip() == (
        f"releases/{record.release}"
    )
    assert "last-revert" not in _sh(lab, "eu1", f"ls {NODE_RELEASE_DIR}")
    lab.cli("drift", lab.site_file)


# -- 6. `current` moves last; rollback checks its target ----------------------------------------


def test_a_failed_tls_install_leaves_the_old_release_current(converged: Lab) -> None:
    lab = converged
    if shutil.which("nsenter") is None:
        pytest.skip("no nsenter (util-linux)")
    before = lab.state().nodes["eu2"].release
    changed = _site(lab, "tlsfail.yaml", message_validity_sec=47)
    _sh(lab, "eu2", f"echo x >> {NODE_TLS_DIR}/server.crt")  # the certificate goes again
    with full_tmpfs(lab, "eu2", NODE_TLS_DIR):
        proc = lab.cli("apply", changed, "--auto-approve", "--json", expect=1)
        [failed] = summary(proc)["failed"]
        assert failed["node"] == "eu2" and "No space left on device" in failed["error"]
        assert _sh(lab, "eu2", f"readlink {NODE_RELEASE_DIR}/current").strip() == (
            f"releases/{before}"
        )
    assert lab.state().nodes["eu2"].release == before
    assert lab.cli("plan", changed, "--refresh", "--detailed-exitcode", expect=2)
    lab.cli("apply", changed, "--auto-approve")
    lab.cli("drift", changed)


def test_a_rollback_to_a_damaged_release_is_refused_before_it_switches(converged: Lab) -> None:
    lab = converged
    lab.cli(
        "apply", _site(lab, "prev.yaml", cross_region_message_validity_sec=148), "--auto-approve"
    )
    lab.cli("apply", lab.site_file, "--auto-approve")
    record = lab.state().nodes["us1"]
    assert record.previous_release
    _sh(lab, "us1", f"echo x >> {NODE_RELEASE_DIR}/releases/{record.previous_release}/routes.lot")
    proc = lab.cli("rollback", lab.site_file, "--limit", "us1", expect=1)
    assert f"release {record.previous_release} on the node is damaged" in proc.stderr
    assert "routes.lot" in proc.stderr and "nothing was switched" in proc.stderr
    assert _sh(lab, "us1", f"readlink {NODE_RELEASE_DIR}/current").strip() == (
        f"releases/{record.release}"
    )
    assert lab.state().nodes["us1"].release == record.release
    assert "No changes" in lab.cli("apply", lab.site_file, "--auto-approve").stdout


# -- 7. release clean-up touches only lotdeploy's own ------------------------------------------


def test_release_clean_up_keeps_what_is_not_lotdeploys_and_removes_killed_uploads(
    converged: Lab,
) -> None:
    lab = converged
    releases = f"{NODE_RELEASE_DIR}/releases"
    stale = f"{releases}/.0123456789abcdef.deadbeef.tmp.tar"
    _sh(
        lab,
        "eu1",
        f"echo mine > {releases}/operator.txt; mkdir -p {releases}/keep-me; "
        f"echo key-and-password > {stale}",
    )
    for validity in (51, 52, 53, 54):  # more releases than it keeps
        lab.cli(
            "apply",
            _site(lab, f"v{validity}.yaml", message_validity_sec=validity),
            "--auto-approve",
            "--limit",
            "eu1",
        )
    kept = _sh(lab, "eu1", f"ls -A {releases}").split()
    assert "operator.txt" in kept and "keep-me" in kept
    assert not any(name.endswith(".tar") or name.endswith(".tmp") for name in kept)
    assert len([n for n in kept if re.fullmatch(r"[0-9a-f]{16}", n)]) == 3
    # a symlinked releases/ is never written through
    _sh(lab, "eu1", f"mv {releases} {releases}.real && ln -s {releases}.real {releases}")
    try:
        proc = lab.cli(
            "apply",
            _site(lab, "v55.yaml", message_validity_sec=55),
            "--auto-approve",
            "--limit",
            "eu1",
            expect=1,
        )
        assert "is a symbolic link" in proc.stderr
    finally:
        _sh(lab, "eu1", f"rm {releases} && mv {releases}.real {releases}")
    _sh(lab, "eu1", f"rm -rf {releases}/operator.txt {releases}/keep-me")
    lab.cli("apply", lab.site_file, "--auto-approve")


# -- 8. locks mean something; children stop with lotdeploy -------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from lotdeploy.workspace import Workspace
with Workspace(Path(sys.argv[1])).lock("apply"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_force_unlock_refuses_a_live_holder(converged: Lab) -> None:
    lab = converged
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lab.workspace().root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = lab.cli("apply", lab.site_file, "--auto-approve", expect=1, env=QUICK_LOCK)
        lock_id = re.search(r"force-unlock (\S+) SITE", refused.stderr)
        assert lock_id, refused.stderr
        proc = lab.cli("force-unlock", lock_id.group(1), lab.site_file, expect=1)
        assert "held right now by a running process" in proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and "--force" in proc.stderr
    finally:
        holder.kill()
        holder.wait(10)
    # its holder gone, the record is removed without --force
    assert "removed the lock" in lab.cli("force-unlock", lock_id.group(1), lab.site_file).stdout


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, whole command line) of every process, read from /proc (`ps`
    cuts command lines to $COLUMNS when it is set, and the names looked for come late)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        found[int(entry.name)] = (ppid, argv.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _descendants(root: int) -> dict[int, str]:
    table = _processes()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, args) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = args
                frontier.append(pid)
    return found


def _masters_to(lab: Lab) -> set[int]:
    """Pids of SSH control masters (Ansible's ControlPersist, lotdeploy's) to this lab's
    nodes."""
    addresses = [n.address for n in lab.site().nodes]
    return {
        pid
        for pid, (_, args) in _processes().items()
        if "ControlPersist" in args and any(a in args for a in addresses)
    }


def test_a_killed_apply_takes_ansible_playbook_and_ssh_masters_with_it(converged: Lab) -> None:
    lab = converged
    pytest.importorskip("ansible_runner")
    changed = _site(lab, "killed.yaml", message_validity_sec=56)
    log_path = lab.dir / "killed-apply.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lotdeploy",
            "apply",
            str(changed),
            "--auto-approve",
            "--transport",
            "ansible",
        ],
        cwd=lab.dir,
        env={**os.environ, **ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def playbook_started() -> bool:
        if proc.poll() is not None:  # over before it got there: say why
            raise AssertionError(f"apply exited {proc.returncode}:\n{log_path.read_text()}")
        return any("ansible-playbook" in a for a in _descendants(proc.pid).values())

    # kept by the commands before (the default transport's masters outlive a command by
    # design: docs/transport.md); only those this run started must go with it
    kept = _masters_to(lab)
    try:
        wait_for(playbook_started, 120, "ansible-playbook to start")
        started = _descendants(proc.pid)  # what this run started: it must all go with it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(
            lambda: not set(started) & set(_processes()) and not _masters_to(lab) - kept,
            15,
            "ansible-playbook, its processes and the SSH masters to stop",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        lab.outputs.append(log_path.read_text())
    # the next apply takes over (the kernel dropped the lock) and converges
    lab.cli("apply", changed, "--auto-approve")
    lab.cli("drift", changed)


# -- 9. no secret anywhere ---------------------------------------------------------------------


def test_no_secret_in_any_output(lab: Lab) -> None:
    store = lab.workspace().secrets()
    values = [v.reveal() for n in store.names() if (v := store.get(n)) is not None]
    site = lab.site()
    values.append(admin_password(site, site.node(lab.nodes[0])).reveal())
    values.append(ENV["LOTDEPLOY_PASSPHRASE"])
    text = "\n".join(OUTPUTS)
    assert OUTPUTS and values
    for value in values:
        assert value not in text
    for event in (e for out in OUTPUTS for e in _json_lines(out)):
        assert not any(value in json.dumps(event) for value in values)


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                yield json.loads(line)

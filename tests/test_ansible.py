"""The Ansible transport against a root lab: real sshd, real lab brokers, real ansible-runner
and ansible-playbook, the real CLI in subprocesses. One 3-node lab (eu1, eu2, us1) is shared
by the module; cases that change it put it back (over SSH, the fast path) before they end.

Parity with the SSH transport is checked on the node itself: the same release id, the same
files with the same modes and owners, the same routes and users.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from lotdeploy.ansible import PLAYBOOKS
from lotdeploy.ansible.deliver import bundle_files, run_vars
from lotdeploy.ansible.inventory import inventory_text
from lotdeploy.ansible.runner import PlaybookRun, PrivateDataDir, run_playbook
from lotdeploy.lab.hosts import NODE_RELEASE_DIR, Layout
from lotdeploy.render import iter_bundles
from lotdeploy.state import StateStore
from tests.lab_fixtures import lab_cli, skip_unless_root
from tests.test_apply import Lab, events, lab_up, steps_of, summary

pytestmark = pytest.mark.root

BIN = Path(sys.executable).parent
OUTPUTS: list[str] = []
TLS_DIR = "/opt/coreflux/tls"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    with lab_up(tmp_path_factory.mktemp("ansiblelab"), "--regions", "eu:2,us:1") as made:
        made.outputs = OUTPUTS
        yield made


def _variant(lab: Lab, name: str, change: Any) -> Path:
    doc = yaml.safe_load(lab.site_file.read_text())
    change(doc)
    path = lab.dir / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _validity(lab: Lab, seconds: int) -> Path:
    """A variant in which every route changes (so every node gets a new release)."""
    return _variant(
        lab,
        f"validity-{seconds}.yaml",
        lambda d: d["defaults"].update(
            message_validity_sec=seconds, cross_region_message_validity_sec=seconds + 60
        ),
    )


def snapshot(lab: Lab, name: str) -> dict[str, Any]:
    """What a node has, as the transports left it: current, the release's files (mode,
    owner, sha256), the release directory's mode, the TLS files (mode, owner, sha256)."""
    script = (
        f"cd {NODE_RELEASE_DIR} && rid=$(readlink current) && echo current=$rid && "
        'stat -c "dir %a %u:%g" "$rid" && '
        'for f in "$rid"/* ' + TLS_DIR + "/*; do "
        'echo "file $f $(stat -c "%a %u:%g" "$f") $(sha256sum < "$f" | cut -c1-64)"; done'
    )
    with lab.transport(name) as t:
        out = t.run(script).stdout.splitlines()
    return {"lines": sorted(out)}


def node_states(lab: Lab) -> dict[str, Any]:
    state = lab.state()
    status = lab.cli("status", lab.site_file).stdout
    return {
        "nodes": {n: snapshot(lab, n) for n in lab.nodes},
        "records": {
            n: {
                "release": state.nodes[n].release,
                "files": state.nodes[n].files,
                "routes": sorted(state.nodes[n].routes),
                "users": state.nodes[n].users,
            }
            for n in lab.nodes
        },
        "routes": sorted(line.split()[:3] for line in status.splitlines()[1:] if line.strip()),
    }


def deploy_direct(
    lab: Lab, site_file: Path | None = None, *, check: bool = False, playbook: str = "deploy.yml"
) -> PlaybookRun:
    """deploy.yml (or another playbook) through ansible-runner, as `apply` runs it; for
    rollback.yml each host goes back to the previous release the state records."""
    site = lab.site(site_file)
    workspace = lab.workspace()
    bundles = {b.node: b for b in iter_bundles(site, workspace, datetime.now(UTC))}
    state = lab.state()
    host_vars = {n: run_vars(bundles[n], False) for n in lab.nodes}
    if playbook == "rollback.yml":
        host_vars = {
            n: {"lotdeploy_rollback_release": state.nodes[n].previous_release} for n in lab.nodes
        }
    run = run_playbook(
        PrivateDataDir(workspace.root),
        playbook,
        inventory_text(site),
        lab.nodes,
        run_vars=host_vars,
        files={n: bundle_files(bundles[n]) for n in lab.nodes},
        check=check,
        diff=check,
    )
    OUTPUTS.append((run.artifact_dir / "stdout").read_text())
    return run


def verify_over(lab: Lab, transport: str) -> None:
    """`lotdeploy verify`'s own checks (run_verify) through the given transport's channel."""
    from lotdeploy.transport import transport_factory
    from lotdeploy.verify import run_verify

    site = lab.site()
    result = run_verify(site, lab.workspace(), transport_factory(site, False, transport))
    assert result.ok, json.dumps(result.to_json(), indent=1)[:3000]


def restore(lab: Lab) -> None:
    """Back to the site (over SSH), drift clean."""
    lab.cli("apply", lab.site_file, "--auto-approve", "--refresh", "--transport", "ssh")
    lab.cli("drift", lab.site_file)


# -- static: the inventory and the playbooks ------------------------------------------------


def test_playbooks_are_one_copy_shipped_in_the_package() -> None:
    top = Path(__file__).resolve().parent.parent / "playbooks"
    assert top.is_symlink() and top.resolve() == PLAYBOOKS
    assert {p.name for p in PLAYBOOKS.glob("*.yml")} == {
        "deploy.yml",
        "rollback.yml",
        "facts.yml",
        "activate.yml",
        "verify.yml",
    }
    assert {p.name for p in (PLAYBOOKS / "tasks").glob("*.yml")} == {
        "files.yml",
        "reload.yml",
        "activate.yml",
        "gate.yml",
    }


def test_ansible_lint_passes_on_the_playbooks() -> None:
    proc = subprocess.run(
        [
            str(BIN / "ansible-lint"),
            "-q",
            "--offline",
            "deploy.yml",
            "rollback.yml",
            "facts.yml",
            "activate.yml",
            "verify.yml",
        ],
        cwd=PLAYBOOKS,
        capture_output=True,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            # the lotdeploy.coreflux modules activate.yml and verify.yml use
            "ANSIBLE_COLLECTIONS_PATH": str(PLAYBOOKS.parent.parent / "collections"),
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inventory_is_accepted_by_ansible_inventory(lab: Lab) -> None:
    out = lab.dir / "inventory.yml"
    lab.cli("inventory", lab.site_file, "--out", out)
    listed = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(out), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(listed.stdout)
    assert set(data["region_eu"]["hosts"]) == {"eu1", "eu2"} and data["region_us"]["hosts"] == [
        "us1"
    ]
    assert set(data["site_lab"]["hosts"]) == set(lab.nodes)
    eu1 = data["_meta"]["hostvars"]["eu1"]
    assert eu1["ansible_host"] == lab.site().node("eu1").ssh.host and eu1["ansible_user"] == "root"
    assert eu1["ansible_ssh_private_key_file"] == str(lab.dir / "keys" / "id_ed25519")
    args = eu1["ansible_ssh_common_args"]
    assert (
        "StrictHostKeyChecking=yes" in args and f"UserKnownHostsFile={lab.dir}/known_hosts" in args
    )
    assert eu1["lotdeploy_tls_dir"] == TLS_DIR and eu1["lotdeploy_release_dir"] == NODE_RELEASE_DIR
    password = Layout(lab.dir).password_file.read_text().strip()
    assert password not in out.read_text()


def test_inventory_groups_tags_and_a_jump_host(lab: Lab) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["nodes"][0]["tags"] = ["edge", "blue-green"]
        doc["nodes"][1]["ssh"]["jump"] = "ops@198.18.9.13:2222"

    site = lab.site(_variant(lab, "tags.yaml", change))
    doc = yaml.safe_load(inventory_text(site))
    children = doc["all"]["children"]
    assert children["tag_edge"]["hosts"] == {"eu1": None}
    assert children["tag_blue_green"]["hosts"] == {"eu1": None}
    args = children["site_lab"]["hosts"]["eu2"]["ansible_ssh_common_args"]
    assert "ProxyCommand=" in args and "-p 2222 -l ops" in args and "-W %h:%p 198.18.9.13" in args
    assert args.count("StrictHostKeyChecking=yes") == 2  # the jump host is checked strictly too


# -- apply through Ansible --------------------------------------------------------------------


def test_apply_via_ansible_makes_a_working_mesh(lab: Lab) -> None:
    proc = lab.cli("apply", lab.site_file, "--auto-approve", "--transport", "ansible", "--json")
    steps = steps_of(proc)
    files = [e for e in steps if e["step"] == "files" and e["status"] == "ok"]
    assert sorted(e["node"] for e in files) == lab.nodes
    assert all("uploaded, reloaded" in e["detail"] and "ansible run" in e["detail"] for e in files)
    assert summary(proc)["failed"] == [] and summary(proc)["changed"] == lab.nodes
    lab.wait_mesh()
    from tests.test_apply import _messages_reach_every_node_once

    _messages_reach_every_node_once(lab)
    state = lab.state()
    for name in lab.nodes:
        assert state.nodes[name].users == ["cluster"] and not state.nodes[name].pending
    lab.cli("drift", lab.site_file, "--transport", "ansible")
    verify_over(lab, "ansible")
    runs = lab.cli("ansible-runs", lab.site_file).stdout
    assert "successful" in runs and "deploy" in runs
    # a second apply: nothing to do, whichever transport
    assert (
        "No changes"
        in lab.cli("apply", lab.site_file, "--auto-approve", "--transport", "ansible").stdout
    )


def test_a_rollout_delivers_every_wave_through_ansible(lab: Lab) -> None:
    """`transport: ansible` holds for every wave of a rollout (it once fell back to plain
    OpenSSH for the files): each wave's files step is an ansible-runner run."""
    rolling = _variant(
        lab,
        "rolling.yaml",
        lambda d: (
            d.update(
                transport="ansible",
                rollout={"waves": [{"name": "first", "select": ["eu1"]}], "gate_timeout_sec": 30},
            )
            or d["defaults"].update(message_validity_sec=33, cross_region_message_validity_sec=133)
        ),
    )
    proc = lab.cli("apply", rolling, "--auto-approve", "--json")
    files = [e for e in steps_of(proc) if e["step"] == "files" and e["status"] == "ok"]
    assert sorted(e["node"] for e in files) == lab.nodes
    assert all("ansible run" in e["detail"] for e in files), files
    waves = [e for e in events(proc) if e.get("event") == "wave" and e.get("status") == "ok"]
    assert [w["wave"] for w in waves] == ["first", "rest"]
    lab.cli("drift", rolling)
    lab.cli("apply", lab.site_file, "--auto-approve")  # back to the lab's own site


def test_a_rerun_of_deploy_is_changed_zero_and_touches_nothing(lab: Lab) -> None:
    before = {n: (snapshot(lab, n), lab.reloads(n)) for n in lab.nodes}
    run = deploy_direct(lab)
    assert run.status == "successful" and run.changed == 0, run.hosts
    assert all(run.stats["changed"].get(n, 0) == 0 for n in lab.nodes)
    assert {n: (snapshot(lab, n), lab.reloads(n)) for n in lab.nodes} == before
    assert not (lab.workspace().root / "ansible" / "bundles").exists()


def test_check_mode_changes_nothing(lab: Lab) -> None:
    before = {n: snapshot(lab, n) for n in lab.nodes}
    run = deploy_direct(lab, _validity(lab, 45), check=True)
    assert run.status == "successful"
    assert all(
        "Install the release, switch current, place the TLS files" in h.changed_tasks
        for h in run.hosts.values()
    )
    assert {n: snapshot(lab, n) for n in lab.nodes} == before
    lab.cli("drift", lab.site_file)


def test_parity_with_the_ssh_transport_and_switching_is_a_no_op(lab: Lab) -> None:
    by_ansible = node_states(lab)
    # the same site, delivered over SSH from scratch: nodes and state wiped of lotdeploy
    for name in lab.nodes:
        with lab.transport(name) as t:
            t.run(f"rm -rf {NODE_RELEASE_DIR}/current {NODE_RELEASE_DIR}/releases {TLS_DIR}/*")
    with StateStore(lab.workspace()).transaction() as state:
        state.nodes.clear()  # what lotdeploy recorded of the nodes (PKI and credentials stay)
    proc = lab.cli("apply", lab.site_file, "--auto-approve", "--transport", "ssh")
    assert "3 node(s) changed (3 reloaded), 0 failed" in proc.stdout
    lab.wait_mesh()
    by_ssh = node_states(lab)
    assert by_ssh == by_ansible
    verify_over(lab, "ssh")
    # switching back: plan finds nothing to do, and Ansible finds every file as it wants it
    assert (
        "No changes"
        in lab.cli("apply", lab.site_file, "--auto-approve", "--transport", "ansible").stdout
    )
    assert deploy_direct(lab).changed == 0


def test_a_host_key_mismatch_fails_that_host_only(lab: Lab) -> None:
    known = (lab.dir / "known_hosts").read_text().splitlines()
    eu2 = lab.site().node("eu2").ssh.host
    other = lab.dir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = other.with_suffix(".pub").read_text().split()[:2]
    bad = [
        f"{line.split()[0]} {' '.join(fake)}" if line.split()[0] == eu2 else line for line in known
    ]
    (lab.dir / "known_hosts.bad").write_text("\n".join(bad) + "\n")

    def change(doc: dict[str, Any]) -> None:
        doc["defaults"]["ssh"]["known_hosts"] = "known_hosts.bad"
        doc["defaults"].update(message_validity_sec=50, cross_region_message_validity_sec=110)

    proc = lab.cli(
        "apply",
        _variant(lab, "badkey.yaml", change),
        "--auto-approve",
        "--transport",
        "ansible",
        "--json",
        expect=1,
    )
    failed = {f["node"]: f for f in summary(proc)["failed"]}
    assert set(failed) == {"eu2"}, failed
    assert (
        failed["eu2"]["step"] == "files"
        and "Host key verification failed" in failed["eu2"]["error"]
    )
    assert summary(proc)["changed"] == ["eu1", "us1"]
    restore(lab)


def test_a_cut_node_fails_that_node_only_and_a_rerun_converges(lab: Lab) -> None:
    changed = _validity(lab, 55)
    assert lab_cli(lab.dir, "cut", "us1").returncode == 0
    try:
        proc = lab.cli(
            "apply", changed, "--auto-approve", "--transport", "ansible", "--json", expect=1
        )
    finally:
        assert lab_cli(lab.dir, "heal", "us1").returncode == 0
    failed = {f["node"]: f for f in summary(proc)["failed"]}
    assert set(failed) == {"us1"} and "unreachable" in failed["us1"]["error"], failed
    assert not (lab.workspace().root / "ansible" / "bundles").exists()  # removed on failure
    assert summary(proc)["changed"] == ["eu1", "eu2"]
    proc = lab.cli("apply", changed, "--auto-approve", "--transport", "ansible", "--json")
    assert summary(proc)["failed"] == []
    lab.cli("drift", changed)
    restore(lab)


def test_rollback_restores_the_previous_release(lab: Lab) -> None:
    before = {n: snapshot(lab, n)["lines"] for n in lab.nodes}
    lab.cli("apply", _validity(lab, 65), "--auto-approve", "--transport", "ssh")
    assert {n: snapshot(lab, n)["lines"] for n in lab.nodes} != before
    reloads = {n: lab.reloads(n) for n in lab.nodes}
    run = deploy_direct(lab, playbook="rollback.yml")
    assert run.status == "successful", run.hosts
    assert {n: snapshot(lab, n)["lines"] for n in lab.nodes} == before
    # only the certificates/keys matter for a reload: same TLS files, so no reload
    assert {n: lab.reloads(n) for n in lab.nodes} == reloads
    restore(lab)


def test_the_export_deploys_with_plain_ansible_playbook(lab: Lab) -> None:
    vault = lab.dir / "vault-password"
    vault.write_text("a vault password for the test\n")
    out = lab.dir / "export"
    changed = _validity(lab, 75)
    lab.cli("export-ansible", changed, out, "--vault-password-file", vault)
    assert (out / "README.md").is_file() and "What still needs lotdeploy" in (
        out / "README.md"
    ).read_text()
    key = out / "bundles" / "eu1" / "server.key"
    assert key.read_text().startswith("$ANSIBLE_VAULT") and (key.stat().st_mode & 0o777) == 0o600
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("LOTDEPLOY_PASSPHRASE", None)
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "inventory",
            "deploy.yml",
            "--vault-password-file",
            str(vault),
        ],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    OUTPUTS.extend([proc.stdout, proc.stderr])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = lab.site(changed)
    bundles = {b.node: b for b in iter_bundles(site, lab.workspace(), datetime.now(UTC))}
    from lotdeploy.node.release import release_id

    for name in lab.nodes:
        assert snapshot(lab, name)["lines"][0] == f"current=releases/{release_id(bundles[name])}"
    # lotdeploy then only activates: the files are in place already
    proc = lab.cli("apply", changed, "--auto-approve", "--json")
    assert all(
        "already on the node" in e["detail"]
        for e in steps_of(proc)
        if e["step"] == "files" and e["status"] == "ok"
    )
    restore(lab)


def test_no_secret_in_artifacts_events_or_the_private_data_directory(lab: Lab) -> None:
    """Last: every run of the module (applies, --check --diff, rollback, failures) left its
    artifacts and events in the private data directory; grep them all, and every output."""
    if not lab.state().nodes:
        lab.cli("apply", lab.site_file, "--auto-approve", "--transport", "ansible", "--json")
    store = lab.workspace().secrets()
    values = {name: store.get(name).reveal() for name in store.names()}  # type: ignore[union-attr]
    values["admin password"] = Layout(lab.dir).password_file.read_text().strip()
    from tests.conftest import TEST_PASSPHRASE

    values["passphrase"] = TEST_PASSPHRASE
    needles = {}
    for name, value in values.items():
        needles[name] = value
        body = [line for line in value.splitlines() if not line.startswith("-----")]
        for i, line in enumerate(body[:-1]):
            if len(line) >= 40:
                needles[f"{name} line {i}"] = line
    pdd = lab.workspace().root / "ansible"
    files = [p for p in pdd.rglob("*") if p.is_file()]
    assert any(p.name == "stdout" for p in files) and any("job_events" in p.parts for p in files)
    assert any(p.name == "command" for p in files) and (pdd / "runs.jsonl").is_file()
    texts = {str(p): p.read_bytes().decode("utf-8", errors="replace") for p in files}
    texts.update({f"output {i}": text for i, text in enumerate(OUTPUTS)})
    for path in (lab.dir / "export").rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    leaks = [f"{s} in {w}" for w, t in texts.items() for s, v in needles.items() if v in t]
    assert not leaks, leaks
    assert not (pdd / "bundles").exists()
    assert oct(pdd.stat().st_mode & 0o777) == "0o700"
    restore(lab)
    shutil.rmtree(lab.dir / "export", ignore_errors=True)


# -- the site's `transport:` and `ansible:` settings -----------------------------------------

SITE = """site: s
nodes:
  - {name: a, address: 10.0.0.1}
  - {name: b, address: 10.0.0.2}
"""


def test_the_site_chooses_the_transport_and_a_wrong_one_names_its_line(tmp_path: Path) -> None:
    from lotdeploy.errors import SpecError
    from lotdeploy.spec import load_site_text

    assert load_site_text(SITE, "site.yaml", tmp_path).site.transport == "openssh"
    text = SITE + "transport: ansible\nansible:\n  vault_password_file: vault.txt\n"
    site = load_site_text(text, "site.yaml", tmp_path).site
    assert site.transport == "ansible" and site.ansible_vault_password_file == Path("vault.txt")
    assert site.ansible_python_interpreter == "/usr/bin/python3"
    # the transport is not part of what the site means: the same digest
    assert site.digest() == load_site_text(SITE, "site.yaml", tmp_path).site.digest()
    with pytest.raises(SpecError) as info:
        load_site_text(SITE + "transport: ftp\n", "site.yaml", tmp_path)
    assert "site.yaml:5:" in str(info.value) and "transport" in str(info.value)
    with pytest.raises(SpecError) as info:
        load_site_text(SITE + "ansible:\n  forks: 3\n", "site.yaml", tmp_path)
    assert "site.yaml:6:" in str(info.value)


def test_a_playbook_run_killed_before_its_recap_fails_every_host_it_started() -> None:
    """No recap (`playbook_on_stats`) and no success: killed or timed out mid-play. A host
    it had started on is never a success (its `current` may not have switched)."""
    from lotdeploy.ansible.runner import HostResult, judge_hosts

    started = {"eu1": HostResult("eu1", seen=True), "eu2": HostResult("eu2")}
    judge_hosts(started, {}, "timeout", 254)
    assert not started["eu1"].ok and "timeout (rc 254) before the play finished" in str(
        started["eu1"].error
    )
    assert not started["eu2"].ok
    done = {"eu1": HostResult("eu1", seen=True), "eu2": HostResult("eu2", seen=True)}
    judge_hosts(done, {"failures": {"eu2": 1}, "ok": {"eu1": 3}}, "failed", 2)
    assert done["eu1"].ok and not done["eu2"].ok
    clean = {"eu1": HostResult("eu1", seen=True)}
    judge_hosts(clean, {}, "successful", 0)
    assert clean["eu1"].ok

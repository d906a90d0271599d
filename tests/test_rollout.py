"""Rollouts against a root lab (eu1, eu2, us1, us2): real sshd, real lab brokers, real TLS,
the real CLI in subprocesses, the real gate (`lotdeploy verify` on the nodes applied so far).

One lab is shared by the module; each case starts from the lab's own site applied and drift
clean. The last case greps everything the module printed or wrote for every secret the
workspace held at any point (rotations drop old passwords, so they are collected as we go).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from lotdeploy.errors import LotdeployError
from lotdeploy.lab.hosts import NODE_RELEASE_DIR, Layout
from lotdeploy.node.release import release_id
from lotdeploy.render import iter_bundles
from lotdeploy.rollout.confirm import arm, confirm
from lotdeploy.transport.ssh import SshTransport
from tests.lab_fixtures import lab_cli, skip_unless_root
from tests.test_apply import Lab, events, lab_up

pytestmark = pytest.mark.root

OUTPUTS: list[str] = []
SECRETS: dict[str, str] = {}

WAVES = [
    {"name": "canary", "select": ["eu1"]},
    {"name": "second", "select": ["eu2", "us1"]},
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    with lab_up(tmp_path_factory.mktemp("rolloutlab"), "--regions", "eu:2,us:2") as made:
        made.outputs = OUTPUTS
        made.cli("apply", made.site_file, "--auto-approve")
        yield made


@pytest.fixture
def converged(lab: Lab) -> Lab:
    """The lab back on its own site (every case ends drift clean, so the state is true)."""
    lab.cli("apply", lab.site_file, "--auto-approve")
    _remember_secrets(lab)
    return lab


def _site_with(lab: Lab, name: str, rollout: dict[str, Any], **defaults: Any) -> Path:
    doc = yaml.safe_load(lab.site_file.read_text())
    doc["defaults"].update(defaults)
    doc["rollout"] = rollout
    path = lab.dir / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _remember_secrets(lab: Lab) -> None:
    store = lab.workspace().secrets()
    for name in store.names():
        value = store.get(name)
        if value is not None:
            SECRETS[f"{name}#{len(SECRETS)}"] = value.reveal()


def _of(proc: subprocess.CompletedProcess[str], kind: str) -> list[dict[str, Any]]:
    return [e for e in events(proc) if e.get("event") == kind]


def _rollout_summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    found = [e for e in events(proc) if e.get("event") == "summary"]
    assert len(found) == 1, proc.stdout
    rollout: dict[str, Any] = found[0]["rollout"]
    return rollout


# -- 1. a second wave meets a cut node ---------------------------------------------------------


def test_a_wave_meeting_a_cut_node_stops_rolls_back_and_verifies(converged: Lab) -> None:
    lab = converged
    site = _site_with(lab, "cut.yaml", {"waves": WAVES}, message_validity_sec=45)
    before = {n: r.release for n, r in lab.state().nodes.items()}
    proc = lab.cli("apply", site, "--auto-approve", "--json", "--pause-after", "canary")
    assert _rollout_summary(proc)["status"] == "paused"
    assert [g["status"] for g in _of(proc, "gate") if g["status"] != "start"] == ["ok"]
    canary_release = lab.state().nodes["eu1"].release
    assert canary_release != before["eu1"]

    assert lab_cli(lab.dir, "cut", "us1").returncode == 0
    try:
        proc = lab.cli("apply", site, "--auto-approve", "--json", "--continue", expect=1)
    finally:
        assert lab_cli(lab.dir, "heal", "us1").returncode == 0
    summary = _rollout_summary(proc)
    assert summary["status"] == "rolled-back", summary
    second = summary["waves"][0]
    assert second["name"] == "second" and not second["ok"]
    assert list(second["failed"]) == ["us1"] and "cannot connect" in second["failed"]["us1"]
    assert "50%" in summary["reason"] and "budget of 0%" in summary["reason"]
    # the wave's gate left the cut node out and passed on the rest; eu2 was put back
    assert second["gate"]["ok"]
    (restored,) = summary["rolled_back"]
    assert restored["node"] == "eu2" and restored["ok"] and restored["to"] == before["eu2"]
    assert "routes: 1 re-added" in restored["detail"] or "routes: 2 re-added" in restored["detail"]
    assert summary["restore_gate"]["ok"] and summary["restore_gate"]["checked"] > 0
    rollback = [e for e in _of(proc, "rollback") if e["status"] != "start"]
    assert rollback and rollback[0]["status"] == "ok"
    state = lab.state()
    assert state.rollout is None  # undone: the next apply starts a new rollout
    assert state.nodes["eu1"].release == canary_release  # the first wave stays, verified
    assert state.nodes["eu2"].release == before["eu2"]
    assert state.nodes["us1"].release == before["us1"]
    assert state.nodes["eu2"].routes["lotdeploy_eu1"]["message_validity_sec"] == 30
    assert state.nodes["eu1"].routes["lotdeploy_eu2"]["message_validity_sec"] == 45
    lab.cli("drift", site)  # what the state says is what the nodes run
    plan = json.loads(lab.cli("plan", site, "--json", expect=None).stdout)
    assert sorted(plan["steps"]) == ["eu2", "us1", "us2"]  # the way back forward


# -- 2. pause survives the process; continue finishes ------------------------------------------


def test_pause_survives_a_new_process_and_continue_finishes(converged: Lab) -> None:
    lab = converged
    site = _site_with(lab, "pause.yaml", {"waves": WAVES}, message_validity_sec=50)
    proc = lab.cli("apply", site, "--auto-approve", "--pause-after", "second")
    assert "Rollout paused" in proc.stdout and "--continue" in proc.stdout
    record = lab.state().rollout
    assert record is not None and record.status == "paused" and record.done == 2
    assert [w["name"] for w in record.waves] == ["canary", "second", "rest"]
    # another process sees it: a plain apply is refused and says what to do
    refused = lab.cli("apply", site, "--auto-approve", expect=1)
    assert "a rollout paused after wave second" in refused.stderr
    assert "--continue" in refused.stderr and "rollback" in refused.stderr
    state = lab.state()
    assert state.nodes["us1"].routes["lotdeploy_us2"]["message_validity_sec"] == 50
    assert state.nodes["us2"].routes["lotdeploy_us1"]["message_validity_sec"] == 30
    proc = lab.cli("apply", site, "--auto-approve", "--json", "--continue")
    summary = _rollout_summary(proc)
    assert summary["status"] == "complete" and [w["name"] for w in summary["waves"]] == ["rest"]
    assert all(w["gate"]["ok"] for w in summary["waves"])
    assert lab.state().rollout is None
    lab.cli("drift", site)
    lab.wait_mesh()
    assert "No changes" in lab.cli("apply", site, "--auto-approve").stdout


# -- 3. rollback by hand -----------------------------------------------------------------------


def test_rollback_by_hand_restores_and_the_plan_shows_the_way_forward(converged: Lab) -> None:
    lab = converged
    site = _site_with(
        lab, "hand.yaml", {"waves": WAVES, "rollback": "manual"}, message_validity_sec=55
    )
    before = lab.state().nodes["us2"].release
    lab.cli("apply", site, "--auto-approve")
    assert lab.state().nodes["us2"].release != before
    proc = lab.cli("rollback", site, "--limit", "us2", "--json")
    (restored,) = json.loads(proc.stdout)["restored"]
    assert restored["ok"] and restored["to"] == before
    assert json.loads(proc.stdout)["check"]["ok"]
    plan = json.loads(lab.cli("plan", site, "--json", expect=None).stdout)
    assert sorted(plan["steps"]) == ["us2"]
    lab.cli("drift", site)
    # a release the node no longer keeps is refused by name
    proc = lab.cli("rollback", site, "--limit", "us1", "--to", "0123456789abcdef", expect=1)
    assert "release 0123456789abcdef is no longer on the node" in proc.stderr


# -- 4. rotations wave by wave -----------------------------------------------------------------


def test_rotations_roll_out_wave_by_wave_with_the_gate_passing(converged: Lab) -> None:
    """A credential rotation and a CA rotation at once, each phase rolled out in two waves:
    after the first wave half the cluster runs the new phase and half the old, and the gate
    proves every link between them (and within each half)."""
    lab = converged
    site = _site_with(lab, "rot.yaml", {"waves": [{"name": "eu", "select": ["eu"]}]})
    for phase in (1, 2, 3):
        lab.cli("creds", "rotate", site)
        lab.cli("certs", "rotate-ca", site)
        _remember_secrets(lab)
        proc = lab.cli("apply", site, "--auto-approve", "--json")
        summary = _rollout_summary(proc)
        assert summary["status"] == "complete", summary
        assert [w["name"] for w in summary["waves"]] == ["eu", "rest"], phase
        for wave in summary["waves"]:
            assert wave["gate"]["ok"] and wave["gate"]["checked"] >= 8, (phase, wave)
            assert not wave["failed"], (phase, wave)
        state = lab.state()
        for kind in ("creds", "ca"):
            rotation = state.rotation(kind)
            assert rotation is not None and rotation.pending(lab.nodes) == [], (phase, kind)
    for command in (("creds", "rotate"), ("certs", "rotate-ca")):
        finished = lab.cli(*command, site)
        assert "finished" in finished.stdout
    assert lab.state().credential_version == 2
    lab.cli("drift", site)


# -- 5. confirm or revert ---------------------------------------------------------------------


def test_an_unconfirmed_switch_is_reverted_by_the_node_which_says_why(converged: Lab) -> None:
    """The node-side timer, for real: eu1 is switched by apply and armed, then cut off so the
    controller cannot confirm; the node goes back on its own and leaves a report, which the
    next rollout shows before it finishes the revert (routes, state) and applies again."""
    lab = converged
    plain = lab.variant("switch.yaml", message_validity_sec=35)
    rolling = _site_with(lab, "confirm.yaml", {"confirm_timeout_sec": 10}, message_validity_sec=35)
    workspace = lab.workspace()
    site = lab.site(plain)
    previous = lab.state().nodes["eu1"].release
    assert previous is not None
    bundle = next(b for b in iter_bundles(site, workspace, datetime.now(UTC)) if b.node == "eu1")
    new = release_id(bundle)
    # the switch, then the timer as apply_confirmed arms it (an apply disarms every timer it
    # did not arm itself before it switches: tests/test_convergence.py); armed after the
    # switch, the timer counts from now
    lab.cli("apply", plain, "--auto-approve", "--limit", "eu1")
    assert lab.state().nodes["eu1"].release == new
    with lab.transport("eu1") as transport:
        armed = arm(transport, site.node("eu1"), previous, new, 10)
    started = time.monotonic()
    assert lab_cli(lab.dir, "cut", "eu1").returncode == 0
    try:
        with pytest.raises(LotdeployError, match="eu1"):
            confirm(site, armed, SshTransport.for_node(site.node("eu1"), base_dir=site.base_dir))
        time.sleep(max(0.0, 10 + 3 - (time.monotonic() - started)))
    finally:
        assert lab_cli(lab.dir, "heal", "eu1").returncode == 0
    with lab.transport("eu1") as transport:
        assert transport.run(f"readlink {NODE_RELEASE_DIR}/current").stdout.strip() == (
            f"releases/{previous}"
        )
    # the next rollout hears why, finishes the revert, applies, and confirms this time
    # (the state still says eu1 runs the new release: the operator refreshes, as after any
    # drift; when apply itself failed to confirm, it marked the node for the next apply)
    proc = lab.cli("apply", rolling, "--auto-approve", "--json", "--limit", "eu1", "--refresh")
    reverted = [e for e in events(proc) if e.get("step") == "reverted"]
    assert len(reverted) == 1 and reverted[0]["node"] == "eu1"
    assert f"release {new} was not confirmed within 10 s" in reverted[0]["detail"]
    assert f"went back to release {previous}" in reverted[0]["detail"]
    confirmed = [e for e in events(proc) if e.get("step") == "confirm"]
    assert confirmed and all(e["status"] == "ok" for e in confirmed)
    assert _rollout_summary(proc)["status"] == "complete"
    lab.cli("drift", rolling)


# -- 5. no secret anywhere ---------------------------------------------------------------------


def test_no_secret_in_any_output(lab: Lab) -> None:
    _remember_secrets(lab)
    values = dict(SECRETS)
    values["admin password"] = Layout(lab.dir).password_file.read_text().strip()
    needles = {}
    for name, value in values.items():
        body = [line for line in value.splitlines() if not line.startswith("-----")]
        needles[name] = value
        for i, line in enumerate(body[:-1]):
            if len(line) >= 40:
                needles[f"{name} line {i}"] = line
    assert any(n.startswith("cluster-password-v1") for n in needles)
    texts = {f"output {i}": text for i, text in enumerate(lab.outputs)}
    state = lab.workspace().root / "state.json"
    texts[str(state)] = state.read_text()
    assert len(texts) > 10
    leaks = [f"{s} in {w}" for w, t in texts.items() for s, v in needles.items() if v in t]
    assert not leaks, leaks

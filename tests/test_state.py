"""The one state document: transactions, serials, validation, migration from old files."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from lotdeploy.errors import LotdeployError, WorkspaceError
from lotdeploy.plan.document import plan_document
from lotdeploy.plan.make import make_plan
from lotdeploy.plan.text import format_text
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.state import STATE_FILE, NodeRecord, StateError, StateStore
from lotdeploy.workspace import Workspace
from tests.test_output_identity import SECRET_NOTE, normalise_plan_text

LEGACY = Path(__file__).parent / "fixtures" / "legacy-workspace"
LEGACY_PASSPHRASE = "legacy-fixture-passphrase"
OLD_FILES = ("state/state.json", "credentials.json", "rotation.json", "pki/index.json")


def _workspace(root: Path) -> Workspace:
    return Workspace(root, passphrase_provider=lambda creating: Secret(LEGACY_PASSPHRASE))


def _legacy_copy(tmp_path: Path) -> tuple[Path, Workspace]:
    site = tmp_path / "site.yaml"
    shutil.copy(LEGACY / "site.yaml", site)
    shutil.copytree(LEGACY / "workspace", tmp_path / ".lotdeploy")
    # release 0.1.0 made its workspaces 0700; git keeps no directory modes
    (tmp_path / ".lotdeploy").chmod(0o700)
    return site, _workspace(tmp_path / ".lotdeploy")


def same_plan_text(new: str, old: str) -> bool:
    """Equal but for what this release adds on purpose (tests/test_output_identity.py)."""
    return normalise_plan_text(new) == normalise_plan_text(old)


def _plan_now() -> datetime:
    return datetime.fromisoformat(json.loads((LEGACY / "made.json").read_text())["plan_now"])


def test_old_workspace_plans_identically_before_and_after_migration(tmp_path: Path) -> None:
    """A workspace made by release 0.1.0 (five files) gives the plan that release gave."""
    site_file, ws = _legacy_copy(tmp_path)
    site = load_site(site_file).site
    expected = (LEGACY / "expected-plan.txt").read_text()
    old_doc = json.loads((LEGACY / "expected-plan.json").read_text())

    assert same_plan_text(format_text(make_plan(site, ws, _plan_now())), expected)  # in memory
    assert not (ws.root / STATE_FILE).exists()  # reading never writes

    with StateStore(ws).transaction() as state:  # the first write migrates
        assert state.credential_version == 1 and state.rotation("creds") is not None
    assert (ws.root / STATE_FILE).exists()
    assert not any((ws.root / old).exists() for old in OLD_FILES)
    assert not (ws.root / "state").exists()

    migrated = make_plan(site, ws, _plan_now())
    assert same_plan_text(format_text(migrated), expected)
    doc = plan_document(migrated)
    # the password_source note is new on purpose (tests/test_output_identity.py)
    doc["warnings"] = [w for w in doc["warnings"] if not w.startswith(SECRET_NOTE)]
    for key in ("site", "site_digest", "nodes", "regions", "warnings", "summary"):
        assert doc[key] == old_doc[key]
    new_changes = [
        {k: v for k, v in c.items() if k not in ("key", "payload")} for c in doc["changes"]
    ]
    assert new_changes == old_doc["changes"]


def test_migration_keeps_rotations_pki_and_secrets_usable(tmp_path: Path) -> None:
    site_file, ws = _legacy_copy(tmp_path)
    site = load_site(site_file).site
    from lotdeploy.credentials import advance_creds_rotation
    from lotdeploy.rotation import load_rotation, mark_phase_applied

    for node in site.nodes:
        mark_phase_applied(ws, "creds", node.name)
    rotation = advance_creds_rotation(site, ws, _plan_now())
    assert rotation is not None and rotation.phase == 2
    assert load_rotation(ws, "creds") == rotation
    state = StateStore(ws).read()
    assert state.credential_version == 2 and state.active_ca is not None
    assert state.serial == 4  # the migrating write, two new marks, the advance


def test_every_write_increments_the_serial_and_nothing_on_error(tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws")
    store = StateStore(ws)
    assert store.read().serial == 0
    with store.transaction() as state:
        state.nodes["a"] = NodeRecord(users=["cluster"])
    assert store.read().serial == 1
    with store.transaction():
        pass  # unchanged: not written
    assert store.read().serial == 1
    before = store.path.read_bytes()
    with pytest.raises(RuntimeError), store.transaction() as state:
        state.nodes["b"] = NodeRecord()
        raise RuntimeError("boom")
    assert store.path.read_bytes() == before
    with store.transaction() as state:
        state.credential_generated = True
    assert store.read().serial == 2
    assert oct(store.path.stat().st_mode)[-3:] == "600"
    assert store.read().lineage  # one id for the life of this workspace's state


def test_nested_transactions_write_once(tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws")
    store = StateStore(ws)
    with store.transaction() as outer:
        outer.credential_generated = True
        with StateStore(ws).transaction() as inner:
            assert inner is outer
            inner.active_ca = "abc123"
        assert StateStore(ws).read().active_ca == "abc123"  # readers see the open state
    state = store.read()
    assert state.serial == 1 and state.active_ca == "abc123" and state.credential_generated


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(serial="7"), "serial"),
        (lambda d: d.update(version=99), "unknown state version"),
        (lambda d: d["credentials"].update(active_version=True), "credential version"),
        (lambda d: d["credentials"].update(active_version=5), "does not match"),
        (lambda d: d["pki"].update(active_ca="../../etc"), "CA id"),
        (lambda d: d["nodes"].update(a={"routes": {"r": {"broker_port": "1883"}}}), "wrong type"),
        (lambda d: d["nodes"].update(a={"routes": {"r": {"evil": 1}}}), "unknown attribute"),
        (lambda d: d["rotations"]["active"]["creds"].update(phase=4), "rotation phase"),
    ],
)
def test_edited_state_is_one_clear_error(tmp_path: Path, edit: object, message: str) -> None:
    ws = _workspace(tmp_path / "ws")
    store = StateStore(ws)
    with store.transaction() as state:
        from lotdeploy.state import Rotation

        state.rotations["creds"] = Rotation("creds", 1, "1", "2", "2026-01-01T00:00:00")
        state.credential_generated = True
    doc = json.loads(store.path.read_text())
    edit(doc)  # type: ignore[operator]
    store.path.write_text(json.dumps(doc))
    before = store.path.read_bytes()
    with pytest.raises(StateError) as err:
        store.read()
    text = str(err.value)
    assert message in text and str(store.path) in text and "\n" not in text
    with pytest.raises(WorkspaceError), store.transaction():
        pass
    assert store.path.read_bytes() == before


def test_damaged_old_file_names_itself(tmp_path: Path) -> None:
    _, ws = _legacy_copy(tmp_path)
    (ws.root / "rotation.json").write_text('{"version": 1, "active": {"creds": {"phase": 9}}}')
    with pytest.raises(LotdeployError, match=r"rotation\.json: the old-format rotations state"):
        StateStore(ws).read()

"""The apply engine's bookkeeping, without nodes (the lab tests are in test_apply.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from lotdeploy.apply.engine import _mark_rotations, _Run
from lotdeploy.apply.events import silent
from lotdeploy.rotation import load_rotation
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.state import NodeRecord, Rotation, StateStore
from lotdeploy.workspace import Workspace

INVENTORIES = Path(__file__).parent.parent / "inventories"


def test_a_node_left_out_by_limit_is_never_marked_as_running_a_rotation_phase(
    tmp_path: Path,
) -> None:
    site_file = tmp_path / "site.yaml"
    shutil.copy(INVENTORIES / "geo.yaml", site_file)
    site = load_site(site_file).site
    ws = Workspace(tmp_path / ".lotdeploy", passphrase_provider=lambda c: Secret("p" * 12))
    with StateStore(ws).transaction() as state:
        state.rotations["creds"] = Rotation("creds", 1, "1", "2", "2026-01-01T00:00:00")
        state.credential_generated = True
        for node in site.nodes:
            state.nodes[node.name] = NodeRecord(release="abc", routes={})
    run = _Run(site, ws, lambda node: None, silent, 1)  # type: ignore[arg-type,return-value]
    _mark_rotations(run, site, ws, {"eu1"})
    rotation = load_rotation(ws, "creds")
    assert rotation is not None and rotation.applied_nodes() == {"eu1"}

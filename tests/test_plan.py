"""The plan model: desired (pure) diffed against observed; documents that read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lotdeploy.errors import WorkspaceError
from lotdeploy.plan.changes import Change
from lotdeploy.plan.desired import CredentialFacts, DesiredRoute, desired_state
from lotdeploy.plan.diff import build_plan
from lotdeploy.plan.document import plan_from_document, read_plan, to_json, write_plan
from lotdeploy.plan.make import make_plan
from lotdeploy.plan.observed import Observed
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.workspace import Workspace

INVENTORIES = Path(__file__).parent.parent / "inventories"


@pytest.fixture
def geo(tmp_path: Path) -> Path:
    site = tmp_path / "site.yaml"
    shutil.copy(INVENTORIES / "geo.yaml", site)
    return site


def _plan(site_file: Path, observed: Observed | None = None):  # type: ignore[no-untyped-def]
    site = load_site(site_file).site
    desired = desired_state(site, CredentialFacts(generated=True))
    return site, desired, build_plan(site.name, site.digest(), desired, observed or Observed())


def test_desired_state_is_pure_and_carries_no_secret(geo: Path) -> None:
    site = load_site(geo).site
    one = desired_state(site, CredentialFacts())
    two = desired_state(site, CredentialFacts())
    assert one == two
    eu1 = one["eu1"]
    assert [r.name for r in eu1.routes] == ["lotdeploy_eu2", "lotdeploy_us1"]
    assert {f.name: (f.mode, f.secret, f.broker_reads) for f in eu1.files} == {
        "routes.lot": (0o600, True, False),
        "ca.crt": (0o644, False, True),
        "server.crt": (0o644, False, True),
        "server.key": (0o600, True, True),
    }
    assert [u.username for u in eu1.users] == ["cluster"]
    assert eu1.routes[0].password.name == "cluster-password-v1"
    during_rotation = desired_state(site, CredentialFacts(1, True, (1, 2)))
    assert [u.username for u in during_rotation["eu1"].users] == ["cluster", "cluster_v2"]


def test_first_apply_steps_then_nothing(geo: Path) -> None:
    _, desired, plan = _plan(geo)
    steps = plan.steps["eu1"]
    assert steps.files == ["routes.lot", "ca.crt", "server.crt", "server.key"]
    assert steps.routes_add == ["lotdeploy_eu2", "lotdeploy_us1"] and not steps.routes_remove
    assert steps.users_create == ["cluster"] and steps.reload
    routes = {n: {r.name: r.attrs() for r in d.routes} for n, d in desired.items()}
    applied = Observed(routes=routes, users={n: ["cluster"] for n in desired})
    _, _, again = _plan(geo, applied)
    assert not again.has_changes and again.steps == {}


def test_a_route_change_rewrites_the_route_file_without_reload(geo: Path) -> None:
    _, desired, _ = _plan(geo)
    routes = {n: {r.name: r.attrs() for r in d.routes} for n, d in desired.items()}
    routes["eu1"]["lotdeploy_us1"] = dict(routes["eu1"]["lotdeploy_us1"], broker_port=1)
    _, _, plan = _plan(geo, Observed(routes=routes, users={n: ["cluster"] for n in desired}))
    assert list(plan.steps) == ["eu1"]
    steps = plan.steps["eu1"]
    assert steps.files == ["routes.lot"] and not steps.reload
    assert steps.routes_remove == steps.routes_add == ["lotdeploy_us1"]
    change = next(c for c in plan.changes if c.kind == "route")
    assert change.key == "route/eu1/lotdeploy_us1" and isinstance(change.payload, DesiredRoute)
    assert change.payload.broker_port == 8883


def test_plan_document_reads_back_equal_and_holds_no_secret(geo: Path, tmp_path: Path) -> None:
    ws = Workspace(geo.parent / ".lotdeploy", passphrase_provider=lambda c: Secret("p" * 12))
    from lotdeploy.render import write_bundles

    write_bundles(load_site(geo).site, ws, tmp_path / "out")
    secrets = [ws.secrets().get(n) for n in ws.secrets().names()]
    site = load_site(geo).site
    routes = {n.name: {} for n in site.nodes}
    Observed(routes=routes).save(ws)
    plan = make_plan(site, ws)
    assert plan.state_serial > 0 and plan.has_changes
    path = tmp_path / "saved.plan"
    write_plan(plan, path)
    text = path.read_text()
    assert all(s is not None and s.reveal() not in text for s in secrets)
    back = read_plan(path)
    assert back == plan
    assert [c.payload for c in back.changes] == [c.payload for c in plan.changes]
    assert oct(path.stat().st_mode)[-3:] == "600"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(format_version=2),
        lambda d: d["changes"][0].update(action="explode"),
        lambda d: d["changes"][0].update(key="route/x/y"),
        lambda d: d["changes"][0]["payload"].update(password={"secret": "cluster-password-v9"}),
        lambda d: d.pop("steps"),
    ],
)
def test_a_damaged_plan_file_is_refused(geo: Path, tmp_path: Path, edit: object) -> None:
    _, _, plan = _plan(geo)
    plan.changes.sort(key=Change.sort_key)
    doc = json.loads(to_json(plan))
    edit(doc)  # type: ignore[operator]
    path = tmp_path / "bad.plan"
    path.write_text(json.dumps(doc))
    with pytest.raises(WorkspaceError, match="not a lotdeploy plan"):
        read_plan(path)
    with pytest.raises((ValueError, KeyError, TypeError)):
        plan_from_document(doc)


def test_route_payload_round_trip() -> None:
    route = DesiredRoute(
        "lotdeploy_b", "b", "eu", "in-region", "10.0.0.2", 8883, "a-to-b", "cluster", 30, True, 2
    )
    assert DesiredRoute.from_attrs(route.attrs()) == route
    assert route.password.name == "cluster-password-v2"
    assert route._replace(password_version=1).password.name == "cluster-password-v1"


def test_the_latest_plan_reference_reads_back_and_detects_staleness(
    geo: Path, tmp_path: Path
) -> None:
    from lotdeploy.apply.saved import stale_reasons
    from lotdeploy.plan.document import write_reference

    site = load_site(geo).site
    ws = Workspace(geo.parent / ".lotdeploy", passphrase_provider=lambda c: Secret("p" * 12))
    plan = make_plan(site, ws)
    path = tmp_path / "latest.json"
    write_reference(plan, path)
    saved = read_plan(path)
    assert stale_reasons(saved, make_plan(site, ws)) == []
    assert sorted(c.key for c in saved.changes) == sorted(c.key for c in plan.changes)
    Observed(routes={n.name: {} for n in site.nodes}).save(ws)  # the state moves on
    reasons = stale_reasons(saved, make_plan(site, ws))
    assert any("state moved on" in r for r in reasons)
    assert path.stat().st_size < len(to_json(plan)) / 4


def test_a_certificate_issued_but_not_on_its_node_is_planned(geo: Path, passphrase: str) -> None:
    """Apply issues due certificates for every node; a node an apply left out (--limit, a
    wave, a failure) must still get its new certificate from the next plan."""
    from datetime import UTC, datetime

    from lotdeploy.render import iter_bundles, prepare_workspace
    from lotdeploy.state import NodeRecord, StateStore

    site = load_site(geo).site
    workspace = Workspace.for_site(geo)
    now = datetime.now(UTC)
    prepare_workspace(site, workspace, now)
    desired = desired_state(site, CredentialFacts(generated=True))
    with StateStore(workspace).transaction() as state:
        state.credential_generated = True
        for bundle in iter_bundles(site, workspace, now):
            record = state.nodes.setdefault(bundle.node, NodeRecord())
            record.files = {
                f.name: {"sha256": f.sha256, "mode": f"{f.mode:04o}"} for f in bundle.files
            }
            record.routes = {r.name: r.attrs() for r in desired[bundle.node].routes}
            record.users = ["cluster"]
            record.applied_at = now.isoformat()
    assert not make_plan(site, workspace, now).has_changes
    cert = site.node("eu1").broker.cert_file
    with StateStore(workspace).transaction() as state:
        state.nodes["eu1"].files[cert]["sha256"] = "0" * 64  # the node runs an older one
    plan = make_plan(site, workspace, now)
    changed = [c for c in plan.changes if c.kind == "certificate"]
    assert [(c.node, c.action) for c in changed] == [("eu1", "update")]
    assert "not yet on the node" in changed[0].reason
    assert set(plan.steps) == {"eu1"}
    assert cert in plan.steps["eu1"].files and plan.steps["eu1"].reload

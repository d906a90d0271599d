"""The password's source (lotdeploy.routesecret), pure: the choice per node, the route
text with GET SECRET, the plan's lines, drift's comparable form and lint's note."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lotdeploy.broker.session import text_names
from lotdeploy.compiler import compile_node
from lotdeploy.lot import lint_text, parse
from lotdeploy.lot.ast import SecretRef
from lotdeploy.plan.changes import route_attrs
from lotdeploy.plan.desired import CredentialFacts, DesiredRoute, desired_state
from lotdeploy.plan.diff import NodeSteps, build_plan
from lotdeploy.plan.document import read_plan, write_plan
from lotdeploy.plan.live import NodeLive, reconcile, secrets_read
from lotdeploy.plan.observed import Observed
from lotdeploy.plan.text import steps_text
from lotdeploy.routecode import comparable_attrs, comparable_code
from lotdeploy.routesecret import broker_secret_name, choose, plan_notes
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.state import NodeRecord

SITE = Path(__file__).resolve().parent.parent / "inventories" / "plant-a.yaml"
PASSWORD = Secret("a-cluster-password-for-the-test-0123")


def test_the_choice_per_setting_and_fact() -> None:
    node = load_site(SITE).site.nodes[0]
    auto, required, inline = (
        node,
        replace(node, password_source="secret-store"),
        replace(node, password_source="inline"),
    )
    assert choose(auto, {"secret_store": True}).store
    assert not choose(auto, {"secret_store": False}).store
    unknown = choose(auto, None)
    assert not unknown.store and unknown.unknown and not unknown.problem
    assert not choose(inline, {"secret_store": True}).store
    assert choose(required, None).store and not choose(required, None).problem
    lacking = choose(required, {"secret_store": False})
    assert lacking.problem and f"node {node.name}" in lacking.problem
    assert plan_notes({node.name: unknown}, [node.name])
    assert not plan_notes({node.name: unknown}, [])  # nothing written there: nothing said


def test_routes_read_get_secret_and_the_file_holds_no_password() -> None:
    site = load_site(SITE).site
    node = site.nodes[0]
    secret = broker_secret_name(2)
    artifact = compile_node(site, node, PASSWORD, 2, secret)
    assert PASSWORD.reveal() not in artifact.text
    routes = parse(artifact.text, "routes.lot")
    assert routes == artifact.routes
    for route in routes:
        assert route.blocks[0].get("PASSWORD") == SecretRef(secret)
    inline = compile_node(site, node, PASSWORD, 2)
    assert PASSWORD.reveal() in inline.text and "GET SECRET" not in inline.text
    # lint takes GET SECRET as intended only when the site asks for it: one note
    default = [d for d in lint_text(artifact.text) if d.severity != "error"]
    assert {d.severity for d in default} == {"warning"}
    asked = lint_text(artifact.text, password_secret=True)
    assert [d.severity for d in asked] == ["note"] and "assumption" in asked[0].message


def test_plan_shows_the_secret_and_the_switch_without_any_value() -> None:
    site = load_site(SITE).site
    credentials = CredentialFacts(1, True, (1,))
    name = site.nodes[0].name
    inline = desired_state(site, credentials)
    stored = desired_state(site, credentials, frozenset({name}))
    recorded = {n: {r.name: r.attrs() for r in node.routes} for n, node in inline.items()}
    observed = Observed(routes=recorded, applied=set(recorded))
    plan = build_plan(site.name, site.digest(), stored, observed)
    secret = broker_secret_name(1)
    lines = [(c.action, c.kind, c.name, c.node) for c in plan.changes]
    assert ("create", "secret", secret, name) in lines
    updates = [c for c in plan.changes if c.kind == "route"]
    assert updates and {c.node for c in updates} == {name}
    shown = {a.name: a for a in updates[0].shown()}
    assert shown["PASSWORD"].after == f'GET SECRET "{secret}"'
    assert shown["PASSWORD"].before == "(sensitive)"
    assert plan.steps[name].routes_add
    # an old record (no password_secret) reads back as inline
    route = stored[name].routes[0]
    assert DesiredRoute.from_attrs(inline[name].routes[0].attrs()).password_secret == ""
    assert DesiredRoute.from_attrs(route.attrs()) == route
    assert route_attrs(route.attrs(), route.attrs()) == ()


def test_drift_compares_get_secret_code_with_its_record() -> None:
    site = load_site(SITE).site
    node = site.nodes[0]
    secret = broker_secret_name(1)
    artifact = compile_node(site, node, PASSWORD, 1, secret)
    stored = desired_state(site, CredentialFacts(1, True, (1,)), frozenset({node.name}))
    for text, route in zip(
        artifact.text.split("\n\n// ")[1:], stored[node.name].routes, strict=True
    ):
        code = text.split("\n", 1)[1]
        assert comparable_code(code) == comparable_attrs(route.attrs())


def test_a_secret_missing_from_the_broker_is_drift_that_the_plan_sets_again(tmp_path: Path) -> None:
    site = load_site(SITE).site
    name = site.nodes[0].name
    stored = desired_state(site, CredentialFacts(1, True, (1,)), frozenset({name}))
    record = NodeRecord(routes={r.name: r.attrs() for r in stored[name].routes})
    secret = broker_secret_name(1)
    assert secrets_read(record) == {secret}
    live = NodeLive(release=None, routes=None, secrets=[])
    paths = {"release_dir": "/opt/lotdeploy", "tls_dir": "/etc/coreflux/tls"}
    drift, found = reconcile(record, live, comparable_attrs, paths)
    assert drift == {f"secret/{secret}": "missing"}
    assert found and found[0].startswith(f"secret {secret}: missing")
    # a store that has it, or one not read: nothing
    assert reconcile(record, replace(live, secrets=[secret]), comparable_attrs, paths)[0] == {}
    assert reconcile(record, replace(live, secrets=None), comparable_attrs, paths)[0] == {}
    routes = {n: {r.name: r.attrs() for r in node.routes} for n, node in stored.items()}
    observed = Observed(routes=routes, applied=set(routes), drift={name: drift})
    plan = build_plan(site.name, site.digest(), stored, observed)
    (change,) = plan.changes
    assert (change.action, change.kind, change.name, change.node) == (
        "create",
        "secret",
        secret,
        name,
    )
    assert "set again" in change.reason
    step = plan.steps[name]
    assert step.secrets_set == [secret] and not step.routes_add and step
    assert step.to_json()["secrets_set"] == [secret]
    assert "secrets_set" not in NodeSteps(name).to_json()  # absent when empty
    assert "secret set again " + secret in steps_text(step)
    # a saved plan carries the step and reads back to the same plan (digest included)
    saved = tmp_path / "plan.json"
    write_plan(plan, saved)
    assert read_plan(saved).steps[name].secrets_set == [secret]


def test_a_text_listing_gives_its_names_or_none_never_an_empty_store() -> None:
    """A 1.x broker answers -listSecrets in text: its names are read after the colon, an
    explicit count of none is an empty store; any other text is "not read" (None), never
    "the store is empty" (which a refresh would report as every secret missing)."""
    assert text_names("1 secret(s): lotdeploy_cluster_v1") == ["lotdeploy_cluster_v1"]
    assert text_names("2 route(s): a, b") == ["a", "b"]
    assert text_names("0 secret(s)") == []  # an explicit count of none: an empty store
    assert text_names("Secrets listed") is None

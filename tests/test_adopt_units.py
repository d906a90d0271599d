"""Audit, import and ownership without a network: the findings and the inference on surveyed
clusters made in memory, the binding of a site to adopted routes, the one ownership rule,
route code compared by its values, the state record, and the CLI's refusals.

The same on real brokers: tests/test_adopt.py (the vendor's example, the take-over) and
tests/test_adopt_messy.py (every problem audit finds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lotdeploy.adopt.findings import audit
from lotdeploy.adopt.infer import infer, node_names
from lotdeploy.adopt.survey import Credential, LiveRoute, Member, NodeSurvey, Survey
from lotdeploy.lab.fixtures import VENDOR_PASSWORD
from lotdeploy.ownership import PREFIX_ONLY, Adoption
from lotdeploy.routecode import comparable_attrs, comparable_code, read_route
from lotdeploy.secret import Secret
from lotdeploy.sitefacts import applied_names, bind_site
from lotdeploy.spec import load_site_text
from lotdeploy.state import AdoptedRoutes, NodeRecord, Rotation, State
from tests.conftest import run_cli

ADDRESSES = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}
GOOD = "Zq8w3LmN0pXr7TyU2vBn5KcH9dFs4GjA"  # a password as lotdeploy generates them


def code(
    name: str,
    to: str,
    client: str,
    user: str = "cluster",
    password: str = GOOD,
    validity: int | None = 30,
    tls: bool = False,
    port: int = 1883,
) -> str:
    lines = [
        f"DEFINE ROUTE {name} WITH TYPE MQTT_CLUSTER",
        "    ADD CLUSTER_CONFIG",
        f'        WITH BROKER_ADDRESS "{ADDRESSES.get(to, to)}"',
        f"        WITH BROKER_PORT '{port}'",
        f'        WITH CLIENT_ID "{client}"',
        f'        WITH USERNAME "{user}"',
        f'        WITH PASSWORD "{password}"',
    ]
    if validity is not None:
        lines.append(f"        WITH MESSAGE_VALIDITY_SEC '{validity}'")
    if tls:
        lines.append("        WITH USE_TLS true")
    return "\n".join(lines)


def surveyed(routes: dict[str, list[tuple[str, str, str]]], **kw: Any) -> Survey:
    """A survey of nodes a, b, c: node -> [(route name, code, connection)]."""
    members = [Member(n, address, 1883) for n, address in ADDRESSES.items()]
    found = Survey(members, {m.name: NodeSurvey(m.name) for m in members})
    for node, listed in routes.items():
        for name, text, state in listed:
            found.nodes[node].routes.append(LiveRoute(node, name, read_route(text), state))
    for node in found.nodes.values():  # every broker accepts every credential unless told
        for listed in routes.values():
            for _, text, _ in listed:
                parsed = read_route(text)
                assert parsed is not None and parsed.password is not None
                cred = Credential(str(parsed.username), parsed.password)
                node.logins[cred] = cred not in kw.get("refused", {}).get(node.node, [])
    return found


def full_mesh(**kw: Any) -> dict[str, list[tuple[str, str, str]]]:
    return {
        n: [
            (f"Peer{p}", code(f"Peer{p}", p, f"{n}-to-{p}", **kw), "Connected")
            for p in ADDRESSES
            if p != n
        ]
        for n in ADDRESSES
    }


def kinds(found: Survey) -> list[str]:
    return sorted({f.kind for f in audit(found)})


# -- audit -------------------------------------------------------------------------------------


def test_a_consistent_tls_mesh_with_a_generated_password_has_no_finding() -> None:
    assert audit(surveyed(full_mesh(tls=True, port=8883))) == []


def test_the_vendor_example_is_clean_but_plain_text_and_its_published_password() -> None:
    found = audit(surveyed(full_mesh(password=VENDOR_PASSWORD)))
    assert sorted({f.kind for f in found}) == ["plain-text", "weak-password"]
    assert len(found) == 12  # one per route and kind
    assert all(VENDOR_PASSWORD not in f.line() for f in found)
    line = next(f for f in found if f.kind == "plain-text").line()
    assert line.startswith("node a route Peerb: plain-text: to b (10.0.0.2:1883)")


def test_every_problem_is_named_once_with_its_node_and_route() -> None:
    routes = {
        "a": [
            ("Pb", code("Pb", "b", "a-b"), "Connected"),
            ("Pb2", code("Pb2", "b", "a-b2"), "Connected"),
            ("Pc", code("Pc", "c", "dup", validity=None), "Reconnecting"),
        ],
        "b": [
            ("Pa", code("Pa", "a", "dup", user="other", password="short", validity=60), "Connected")
        ],
        "c": [("Old", code("Old", "10.9.9.9", "c-old"), "Connecting")],
    }
    found = surveyed(routes)
    found.nodes["a"].sys_readers.append("other")
    lines = {(f.kind, f.node, f.route) for f in audit(found)}
    assert ("peer-missing", "b", "") in lines  # b and c: no route either way
    assert ("one-way", "c", "") in lines  # a -> c, nothing back
    assert ("duplicate-route", "a", "Pb") in lines
    assert ("duplicate-client-id", "a", "Pc") in lines
    assert ("not-member", "c", "Old") in lines
    assert ("mixed-credentials", "b", "Pa") in lines
    assert ("validity-asymmetric", "a", "Pb") in lines
    assert ("validity-unset", "a", "Pc") in lines
    assert ("not-connected", "a", "Pc") in lines
    assert ("sys-readable", "a", "") in lines
    assert ("weak-password", "b", "Pa") in lines
    # a route to a stranger gets its not-member line only (it goes)
    assert {k for k, n, r in lines if r == "Old"} == {"not-member"}


# -- import ------------------------------------------------------------------------------------


def test_names_come_from_the_client_ids_when_they_agree() -> None:
    mesh = {
        n: [
            (f"P{p}", code(f"P{p}", p, f"Node{n.upper()}-to-Node{p.upper()}"), "Connected")
            for p in ADDRESSES
            if p != n
        ]
        for n in ADDRESSES
    }
    assert node_names(surveyed(mesh), {}) == {"a": "NodeA", "b": "NodeB", "c": "NodeC"}
    assert node_names(surveyed(mesh), {"10.0.0.3": "gamma"})["c"] == "gamma"  # --name wins
    # ids that say nothing: node1.. in address order
    plain = {
        n: [(f"P{p}", code(f"P{p}", p, f"link-{n}{p}"), "Connected") for p in ADDRESSES if p != n]
        for n in ADDRESSES
    }
    assert node_names(surveyed(plain), {}) == {"a": "node1", "b": "node2", "c": "node3"}


def _site(imported: Any) -> Any:
    import yaml

    return load_site_text(yaml.safe_dump(imported.spec), "site.yaml", Path(".")).site


def test_a_consistent_cluster_imports_with_every_route_kept_as_it_runs() -> None:
    found = surveyed(full_mesh(validity=45))
    names = {m.name: m.name for m in found.members}
    imported = infer(found, names, {}, site_name="plant")
    assert imported.spec["defaults"] == {
        "tls": False,
        "message_validity_sec": 45,
        "cross_region_message_validity_sec": 120,
    }
    assert "links" not in imported.spec
    assert imported.adopted["a"] == AdoptedRoutes(
        {"b": "Peerb", "c": "Peerc"}, {"b": "a-to-b", "c": "a-to-c"}, {}
    )
    state = State(adopted=imported.adopted, nodes=imported.records)
    site = bind_site(_site(imported), state)
    for link in site.links:  # the bound site's links are the adopted routes
        attrs = imported.records[link.source].routes[link.route_name]
        assert attrs["client_id"] == link.client_id == f"{link.source}-to-{link.target}"
        assert attrs["password_version"] == 1 and attrs["message_validity_sec"] == 45
    assert imported.records["a"].users == ["cluster"]


def test_an_inconsistent_cluster_imports_what_the_plan_puts_right() -> None:
    routes = {
        "a": [
            ("Pb", code("Pb", "b", "a-to-b"), "Connected"),
            ("Pb2", code("Pb2", "b", "x"), "Connected"),
            ("Pc", code("Pc", "c", "a-to-c", validity=None), "Connected"),
        ],
        "b": [("Pa", code("Pa", "a", "b-to-a", validity=60), "Connected")],
        "c": [("Old", code("Old", "10.9.9.9", "c-old"), "Connecting")],
    }
    found = surveyed(routes, refused={"c": [Credential("cluster", Secret(GOOD))]})
    imported = infer(found, {m.name: m.name for m in found.members}, {})
    assert imported.adopted["a"].remove == {
        "Pb2": "a second route to b beside Pb: every message went twice"
    }
    assert "no node of the cluster" in imported.adopted["c"].remove["Old"]
    assert imported.spec["links"] == [{"between": ["a", "b"], "message_validity_sec": 60}]
    assert "message_validity_sec" not in imported.records["a"].routes["Pc"]
    assert imported.records["c"].drift == {"user/cluster": "refused"}
    kept = infer(found, {m.name: m.name for m in found.members}, {}, keep_strays=True)
    assert "c" not in kept.adopted and "Old" in kept.notes[0]


# -- binding and ownership ---------------------------------------------------------------------

SITE = """
site: plant
nodes:
  - {name: a, address: 10.0.0.1}
  - {name: b, address: 10.0.0.2}
  - {name: c, address: 10.0.0.3}
"""


def test_bound_names_stay_unique_and_the_renaming_phase_drops_them() -> None:
    site = load_site_text(SITE, "site.yaml", Path(".")).site
    adopted = {
        # b's adopted id is a's, and a's route to c is named like lotdeploy's own
        "a": AdoptedRoutes({"b": "Hand", "c": "lotdeploy_b"}, {"b": "same", "c": "a-to-c"}),
        "b": AdoptedRoutes({"a": "Back"}, {"a": "same"}, {"Stray": "goes elsewhere"}),
    }
    state = State(adopted=adopted)
    bound = bind_site(site, state)
    links = {(k.source, k.target): (k.route_name, k.client_id) for k in bound.links}
    assert links["a", "b"] == ("Hand", "same")
    assert links["b", "a"] == ("Back", "b-to-a")  # the id taken first keeps it
    assert links["a", "c"] == ("lotdeploy_b", "a-to-c")
    assert links["c", "a"] == ("lotdeploy_a", "c-to-a")  # not adopted: lotdeploy's own
    assert bound.digest() != site.digest() and bind_site(bound, state) is bound
    assert bound.ownership.owns("b", "Stray") and bound.ownership.owns("a", "Hand")
    assert not bound.ownership.owns("a", "Back") and not PREFIX_ONLY.owns("a", "Hand")
    assert bind_site(site, State()) is site  # nothing to bind: the spec's own site
    state.rotations["names"] = Rotation("names", 2, "adopted", "lotdeploy", "now")
    renamed = bind_site(site, state)
    assert {k.route_name for k in renamed.links_from("a")} == {"lotdeploy_b", "lotdeploy_c"}
    assert renamed.ownership.owns("a", "Hand") and renamed.ownership.owns("b", "Back")


def test_the_tls_accept_phase_keeps_peers_on_their_plain_port() -> None:
    site = load_site_text(SITE + "defaults: {tls: true}\n", "site.yaml", Path(".")).site
    state = State()
    state.rotations["tls"] = Rotation(
        "tls", 1, "plain", "tls", "now", detail={"ports": {"b": 1884}}
    )
    bound = bind_site(site, state)
    assert (bound.node("b").route_port, bound.node("b").route_tls) == (1884, False)
    assert (bound.node("a").route_port, bound.node("a").route_tls) == (8883, True)
    assert bound.node("b").tls  # its certificate and TLS listener come in this phase
    state.rotations["tls"].phase = 2
    assert bind_site(site, state) is site


def test_applied_names_follow_the_records() -> None:
    state = State(nodes={"a": NodeRecord(routes={"Hand": {"peer": "b"}, "Stray": {}})})
    assert applied_names(state) == {("a", "b"): "Hand"}


def test_an_adoption_hashes_by_content() -> None:
    one = Adoption({"a": {"b": ("R", "id")}}, {"a": frozenset({"X"})})
    two = Adoption({"a": {"b": ("R", "id")}}, {"a": frozenset({"X"})})
    assert one == two and hash(one) == hash(two) and one.ownership.owns("a", "X")


# -- route code by its values ------------------------------------------------------------------


def test_route_code_is_compared_by_its_values_whatever_its_layout() -> None:
    vendor = code("R", "b", "a-to-b", password=VENDOR_PASSWORD)
    shuffled = (
        "DEFINE ROUTE R WITH TYPE MQTT_CLUSTER\n  ADD CLUSTER_CONFIG\n"
        '        WITH CLIENT_ID "a-to-b"\n        WITH MESSAGE_VALIDITY_SEC 30\n'
        '        WITH BROKER_PORT 1883\n        WITH BROKER_ADDRESS "10.0.0.2"\n'
        '        WITH PASSWORD "another one"\n        WITH USERNAME "cluster"\n'
        "        WITH USE_TLS false\n"
    )
    assert comparable_code(vendor) == comparable_code(shuffled)
    assert VENDOR_PASSWORD not in comparable_code(vendor)
    attrs = {
        "name": "R",
        "broker_address": "10.0.0.2",
        "broker_port": 1883,
        "client_id": "a-to-b",
        "username": "cluster",
        "message_validity_sec": 30,
        "use_tls": False,
    }
    assert comparable_attrs(attrs) == comparable_code(vendor)
    assert comparable_attrs({**attrs, "message_validity_sec": 31}) != comparable_code(vendor)
    unset = {k: v for k, v in attrs.items() if k != "message_validity_sec"}
    assert comparable_attrs(unset) == comparable_code(code("R", "b", "a-to-b", validity=None))


# -- the state record --------------------------------------------------------------------------


def test_the_adopted_record_round_trips_and_refuses_a_bad_name() -> None:
    state = State(adopted={"a": AdoptedRoutes({"b": "Hand"}, {"b": "a-b"}, {"X": "why"})})
    state.credential_adopted = True
    again = State.from_json(state.to_json())
    assert again.adopted == state.adopted and again.credential_adopted
    doc = state.to_json()
    doc["adopted"]["a"]["routes"]["b"] = "not a name"
    with pytest.raises(ValueError, match="route name"):
        State.from_json(doc)


# -- the CLI's refusals ------------------------------------------------------------------------


def test_an_import_mapping_that_names_no_node_is_refused(tmp_path: Path) -> None:
    from lotdeploy.adopt.importer import write_import
    from lotdeploy.errors import LotdeployError
    from lotdeploy.workspace import Workspace

    out = tmp_path / "plant" / "site.yaml"
    workspace = Workspace.for_site(out, passphrase_provider=lambda _: Secret("x" * 20))
    found = surveyed(full_mesh())
    with pytest.raises(LotdeployError, match=r"--region eu=10\.9\.0\.0/16: no node"):
        write_import(found, out, workspace, regions={"10.9.0.0/16": "eu"})
    with pytest.raises(LotdeployError, match=r"--name 10\.0\.0\.9=x: no node"):
        write_import(found, out, workspace, names={"10.0.0.9": "x"})
    assert not out.exists() and not workspace.secrets_path.exists()


def test_audit_takes_the_admin_password_only_by_reference(tmp_path: Path) -> None:
    proc = run_cli("audit", "127.0.0.1:1")
    assert proc.returncode == 1 and "--admin-password-file" in proc.stderr
    proc = run_cli("audit", "127.0.0.1:99999", "--admin-password-env", "X")
    assert proc.returncode == 1 and "port must be a number" in proc.stderr
    empty = tmp_path / "pw"
    empty.write_text("\n")
    proc = run_cli("audit", "127.0.0.1:1", "--admin-password-file", empty)
    assert proc.returncode == 1 and "is empty" in proc.stderr
    assert "Traceback" not in proc.stderr
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    proc = run_cli("audit", site, "--admin-password-file", empty)
    assert proc.returncode == 1 and "go with addresses" in proc.stderr


def test_an_unreachable_broker_is_an_error_of_its_node(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("whatever-admin-password\n")
    proc = run_cli("audit", "127.0.0.1:9", "--admin-password-file", pw)  # nothing listens
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "node 127.0.0.1:9: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "whatever-admin-password" not in proc.stdout + proc.stderr

"""Fast paths agree with the general code they stand in for (same bytes, same results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lotdeploy.plan.changes import Change
from lotdeploy.plan.desired import DesiredRoute
from lotdeploy.plan.document import _change_document, change_line
from lotdeploy.secret import dumps


def _route(**overrides: object) -> DesiredRoute:
    attrs: dict[str, object] = {
        "name": "lotdeploy_n001",
        "peer": "n001",
        "peer_region": "eu",
        "link_class": "in-region",
        "broker_address": "10.0.1.1",
        "broker_port": 1883,
        "client_id": "n000-to-n001",
        "username": "cluster",
        "message_validity_sec": 30,
        "use_tls": False,
        "password_version": 1,
    }
    attrs.update(overrides)
    return DesiredRoute.from_attrs(attrs)


@pytest.mark.parametrize(
    "route",
    [
        _route(),
        _route(use_tls=True, broker_port=8883, password_version=3, username="cluster_v3"),
        _route(client_id="nœud-é-to-n001 \\ x", broker_address="broker.example.com"),
        _route(link_class="override", message_validity_sec=86400),
    ],
)
def test_route_create_line_equals_the_encoder(route: DesiredRoute) -> None:
    change = Change(
        "create", "route", route.name, "n000", "eu", "in-region link to n001", (), route
    )
    line = change_line(change)
    assert line == dumps(_change_document(change))
    assert json.loads(line) == _change_document(change)


def test_other_values_take_the_general_path() -> None:
    odd = _route(broker_port=True)  # not an int: the encoder decides
    change = Change("create", "route", odd.name, "n000", "eu", "", (), odd)
    assert change_line(change) == dumps(_change_document(change))


def test_atomic_write_of_pieces(tmp_path: Path) -> None:
    from lotdeploy.fsutil import atomic_write

    target = tmp_path / "plan.json"
    pieces = ["é" * 700_000, "x", "", "y" * 2_000_000]
    atomic_write(target, iter(pieces), mode=0o600)
    assert target.read_text() == "".join(pieces)
    assert target.stat().st_mode & 0o777 == 0o600


def test_atomic_write_without_fsync_still_replaces_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """durable=False (the lab broker's state) skips the fsyncs, not the temporary + rename."""
    import os

    from lotdeploy import fsutil

    target = tmp_path / "state.json"
    target.write_text("old")
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    fsutil.atomic_write(target, "new", mode=0o600, durable=False)
    assert synced == []
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


MESH_SITE = """\
site: fast
client_id_format: "{site}.{region}.{node}>{peer}@{peer_region}-é"
defaults:
  message_validity_sec: 40
regions:
  eu: {cross_region_message_validity_sec: 200}
nodes:
  - {name: b-1, address: 10.0.0.2, region: eu}
  - {name: a_1, address: 10.0.0.1, region: eu, message_validity_sec: 11}
  - {name: c1, address: 10.0.0.3, region: us}
  - {name: d1, address: 10.0.0.4, region: us}
  - {name: e1, address: 10.0.0.5}
links:
  - {between: [us, eu], message_validity_sec: 90}
  - {between: [c1, a_1], message_validity_sec: 7}
  - {between: [eu, eu], message_validity_sec: 33}
"""


def test_links_made_on_demand_equal_the_reference_rule(tmp_path: Path) -> None:
    """Site makes links from its rule; they equal what resolve's reference functions say,
    link by link, and the streamed digest equals the hash of the whole description."""
    import hashlib

    from lotdeploy.model import canonical_json, route_name_for
    from lotdeploy.spec import load_site_text
    from lotdeploy.spec.resolve import format_client_id, link_validity

    loaded = load_site_text(MESH_SITE, "site.yaml", tmp_path)
    site, spec = loaded.site, loaded.spec
    expected = []
    for source in site.nodes:
        for target in site.nodes:
            if source.name != target.name:
                validity, link_class = link_validity(spec, source, target)
                expected.append(
                    (
                        source.name,
                        target.name,
                        route_name_for(target.name),
                        format_client_id(spec, source, target),
                        validity,
                        link_class,
                    )
                )
    got = [
        (k.source, k.target, k.route_name, k.client_id, k.message_validity_sec, k.link_class)
        for k in site.links
    ]
    assert got == expected
    assert {row[5] for row in got} == {"override", "cross-region", "in-region"}
    assert len(site.links) == site.link_count == 20
    assert site.links == site.all_links == tuple(site.links)
    assert site.links[3] == site.all_links[3]
    for node in site.nodes:
        assert site.links_from(node.name) == tuple(k for k in site.links if k.source == node.name)
    assert site.links_from("nobody") == ()
    whole = hashlib.sha256(canonical_json(site.describe()).encode()).hexdigest()
    assert site.digest() == whole
    again = load_site_text(MESH_SITE.replace("validity_sec: 7}", "validity_sec: 8}"), "s", tmp_path)
    assert again.site.digest() != site.digest()


def test_a_change_without_a_node_takes_the_general_path() -> None:
    route = _route()
    change = Change("create", "route", route.name, None, None, "", (), route)
    assert change_line(change) == dumps(_change_document(change))


@pytest.mark.parametrize(
    "routes",
    [[], ["lotdeploy_a"], ["lotdeploy_b", "lotdeploy_é", 'quo"te', "back\\slash", "x" * 300]],
)
def test_manifest_routes_equal_the_indenting_encoder(routes: list[str]) -> None:
    from lotdeploy.render import _with_routes

    doc = {"format": "f", "node": 'n"ode', "routes": [], "site": "s", "z": {"a": {"b": 1}}}
    expected = json.dumps({**doc, "routes": routes}, indent=2, sort_keys=True) + "\n"
    assert _with_routes(json.dumps(doc, indent=2, sort_keys=True), routes) == expected


def test_plan_text_lines_equal_the_general_line() -> None:
    from lotdeploy.plan.text import _line, _node_lines

    changes = [
        Change(
            "create",
            "route",
            "lotdeploy_n001",
            "n000",
            "eu",
            "in-region link to n001",
            (),
            _route(),
        ),
        Change("create", "route", "lotdeploy_n002", "n000", "eu", "", (), _route(use_tls=True)),
        Change("replace", "route", "lotdeploy_n003", "n000", "eu", "why", (), _route()),
        Change("create", "route", "x", "n000", "eu", "r", (), _route(client_id="a b ")),
        Change("create", "certificate", "n000", "n000", "eu", "first issue"),
    ]
    for colour in (False, True):
        assert list(_node_lines(changes, colour)) == ["    " + _line(c, colour) for c in changes]


def test_grouped_changes_keep_the_sort_order() -> None:
    from lotdeploy.plan.diff import node_change_groups

    changes = [
        Change("create", kind, name, node, region, reason)
        for kind, name, node, region, reason in [
            ("route", "b", "n2", "us", "1"),
            ("route", "a", "n2", "us", "2"),
            ("certificate", "n1", "n1", None, "3"),
            ("route", "a", "n1", "", "4"),
            ("route", "a", "n1", None, "5"),
            ("route", "z", "n0", "eu", "6"),
            ("credential", "p", None, None, "7"),
            ("route", "a", "n2", "us", "8"),
        ]
    ]
    expected = sorted((c for c in changes if c.node is not None), key=Change.sort_key)
    ordered = [c for _, _, group in node_change_groups(changes) for c in group]
    assert [c.reason for c in ordered] == [c.reason for c in expected]


def test_plan_reference_text_equals_the_encoder() -> None:
    from lotdeploy.plan.diff import Plan
    from lotdeploy.plan.document import (
        REFERENCE_FORMAT,
        _head,
        _ordered,
        reference_digest,
        reference_text,
    )

    plan = Plan('si"te', "d", 2, 1, regions={"n0": "eu", "n1": "eu"})
    plan.changes = [
        Change("create", "route", "lotdeploy_n1", "n0", "eu", "in-region link to n1 é"),
        Change("create", "ca", "site CA", None, None, 'quo"te\\'),
        Change("delete", "route", "lotdeploy_n0", "n1", "eu", ""),
    ]
    for changes in (plan.changes, []):
        plan.changes = changes
        doc = {
            **_head(plan),
            "format": REFERENCE_FORMAT,
            "changes": [[c.key, c.action, c.reason] for c in _ordered(plan)],
            "steps": {},
            "digest": reference_digest(plan),
        }
        assert reference_text(plan) == json.dumps(doc, separators=(",", ":")) + "\n"

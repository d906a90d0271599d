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

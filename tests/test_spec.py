"""Every validation rule of the site spec, each error pointing at file:line:col."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lotdeploy.errors import SpecError
from lotdeploy.model import DEFAULT_VALIDITY_CROSS_REGION
from lotdeploy.spec import load_site

MINIMAL = """
site: plant-a
nodes:
  - name: Node1
    address: 192.168.1.100
  - name: Node2
    address: 192.168.1.101
  - name: Node3
    address: 192.168.1.102
"""


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_site(path)
    return [str(d) for d in info.value.diagnostics if d.severity == "error"]


def test_minimal_form_is_accepted(write_site: Callable[..., Path]) -> None:
    loaded = load_site(write_site(MINIMAL))
    site = loaded.site
    assert [n.name for n in site.nodes] == ["Node1", "Node2", "Node3"]
    assert len(site.links) == 6
    assert all(n.port == 1883 and not n.tls and n.region == "default" for n in site.nodes)
    assert {link.client_id for link in site.links} >= {"Node1-to-Node2", "Node3-to-Node1"}
    assert all(link.message_validity_sec == 30 for link in site.links)
    # TLS off in a cluster is allowed, but said
    assert any("TLS is off" in d.message for d in loaded.warnings)


def test_precedence_node_over_region_over_defaults(write_site: Callable[..., Path]) -> None:
    site = load_site(
        write_site(
            """
            site: s
            defaults: {tls: true, message_validity_sec: 40, username: svc}
            regions:
              eu: {message_validity_sec: 20, tls: false}
              us: {}
            nodes:
              - {name: a, address: 10.0.0.1, region: eu}
              - {name: b, address: 10.0.0.2, region: eu, tls: true, port: 9883}
              - {name: c, address: c.example.com, region: us}
              - {name: d, address: 10.0.0.4, region: ap}
            """
        )
    ).site
    a, b, c, d = (site.node(n) for n in "abcd")
    assert (a.tls, a.port, a.message_validity_sec) == (False, 1883, 20)
    assert (b.tls, b.port) == (True, 9883)
    assert (c.tls, c.port, c.message_validity_sec, c.username) == (True, 8883, 40, "svc")
    assert d.region == "ap" and d.message_validity_sec == 40  # undeclared region: defaults
    by_pair = {(link.source, link.target): link for link in site.links}
    assert by_pair["a", "b"].message_validity_sec == 20
    assert by_pair["a", "b"].link_class == "in-region"
    assert by_pair["a", "c"].message_validity_sec == DEFAULT_VALIDITY_CROSS_REGION
    assert by_pair["a", "c"].link_class == "cross-region"


def test_link_overrides_node_pair_beats_region_pair(write_site: Callable[..., Path]) -> None:
    site = load_site(
        write_site(
            """
            site: s
            nodes:
              - {name: a, address: 10.0.0.1, region: eu}
              - {name: b, address: 10.0.0.2, region: us}
              - {name: c, address: 10.0.0.3, region: us}
            links:
              - {between: [eu, us], message_validity_sec: 200}
              - {between: [c, a], message_validity_sec: 250}
            """
        )
    ).site
    by_pair = {(link.source, link.target): link.message_validity_sec for link in site.links}
    assert by_pair["a", "b"] == by_pair["b", "a"] == 200
    assert by_pair["a", "c"] == by_pair["c", "a"] == 250
    assert by_pair["b", "c"] == 30


def test_ssh_and_broker_blocks_merge_per_key(write_site: Callable[..., Path]) -> None:
    site = load_site(
        write_site(
            """
            site: s
            defaults:
              ssh: {user: deploy, port: 2222}
              broker: {admin_user: admin, tls_dir: /etc/cf}
            regions:
              eu: {ssh: {jump: bastion.example.com}}
            nodes:
              - {name: a, address: 10.0.0.1, region: eu, ssh: {port: 22}}
              - {name: b, address: 10.0.0.2, broker: {admin_port: 1884}}
            """
        )
    ).site
    a, b = site.node("a"), site.node("b")
    assert (a.ssh.user, a.ssh.port, a.ssh.jump, a.ssh.host) == (
        "deploy",
        22,
        "bastion.example.com",
        "10.0.0.1",
    )
    assert (b.ssh.port, b.broker.admin_port, b.broker.admin_user, b.broker.tls_dir) == (
        2222,
        1884,
        "admin",
        "/etc/cf",
    )


def test_all_errors_reported_at_once_with_positions(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        site: plant-a
        defaults:
          tsl: true
          port: 70000
        nodes:
          - name: Node1
            address: 192.168.1.100
            message_validity_sec: "30"
          - name: Node1
            address: 192.168.1.101
        """
    )
    errors = errors_of(path)
    assert f"{path}:3:3: error: unknown key 'tsl' (did you mean 'tls'?)" in errors
    assert any(e.startswith(f"{path}:4:9: error: defaults.port") for e in errors)
    assert any(e.startswith(f"{path}:8:27: error: nodes[0].message_validity_sec") for e in errors)
    assert f"{path}:9:11: error: duplicate node name 'Node1' (first used at line 6)" in errors


@pytest.mark.parametrize(
    ("snippet", "line", "col", "needle"),
    [
        ("port: 0", 5, 11, "greater than or equal to 1"),
        ("port: 65536", 5, 11, "less than or equal to 65535"),
        ("message_validity_sec: 0", 5, 27, "greater than or equal to 1"),
        ("message_validity_sec: -5", 5, 27, "greater than or equal to 1"),
        ("message_validity_sec: 2.5", 5, 27, "valid integer"),
        ("tls: 'yes'", 5, 10, "valid boolean"),
        ("tags: [ok, 'bad tag']", 5, 16, "must start with a letter"),
        ("dns_names: ['bad..name']", 5, 17, "not a valid DNS name"),
        ("ip_addresses: [300.1.1.1]", 5, 20, "not a valid IPv4 or IPv6"),
        ("adress: 10.0.0.9", 5, 5, "did you mean 'address'"),
        ("ssh: {usr: root}", 5, 11, "did you mean 'user'"),
        ("broker: {tls_dri: /x}", 5, 14, "did you mean 'tls_dir'"),
    ],
)
def test_node_value_rules(
    write_site: Callable[..., Path], snippet: str, line: int, col: int, needle: str
) -> None:
    path = write_site(
        "site: s\nnodes:\n  - name: a\n    address: 10.0.0.1\n"
        f"    {snippet}\n  - name: b\n    address: 10.0.0.2\n"
    )
    errors = errors_of(path)
    assert any(e.startswith(f"{path}:{line}:{col}: error:") and needle in e for e in errors), errors


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('"a\\"b"', 'contains "'),
        ('"a\'b"', "contains '"),
        ('"http://x"', "'//'"),
        ('"-rf"', "start with '-'"),
        ('"a\\nb"', "single line"),
        ('"a\\tb"', "LOT cannot carry"),
        ('"a\\x07b"', "LOT cannot carry"),
    ],
)
def test_lot_unsafe_values_are_rejected(
    write_site: Callable[..., Path], value: str, needle: str
) -> None:
    path = write_site(
        f"""
        site: s
        defaults: {{username: {value}}}
        nodes:
          - {{name: a, address: 10.0.0.1}}
          - {{name: b, address: 10.0.0.2}}
        """
    )
    errors = errors_of(path)
    assert any(e.startswith(f"{path}:2:22: error:") and needle in e for e in errors), errors


def test_unsafe_address(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        site: s
        nodes:
          - {name: a, address: "10.0.0.1\\" // x"}
          - {name: b, address: -b.example.com}
        """
    )
    errors = errors_of(path)
    assert any(":3:24:" in e and "LOT cannot carry" in e for e in errors), errors
    assert any(":4:24:" in e and "start with '-'" in e for e in errors), errors


def test_unique_address_and_port(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        site: s
        nodes:
          - {name: a, address: 10.0.0.1}
          - {name: b, address: 10.0.0.1, port: 1884}
          - {name: c, address: 10.0.0.1}
        """
    )
    errors = errors_of(path)
    assert errors == [f"{path}:5:24: error: address 10.0.0.1:1883 is already used by node 'a'"]


def test_route_name_collision_and_client_id_uniqueness(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        site: s
        client_id_format: "{node}"
        nodes:
          - {name: eu-1, address: 10.0.0.1}
          - {name: eu_1, address: 10.0.0.2}
          - {name: b, address: 10.0.0.3}
        """
    )
    errors = errors_of(path)
    assert any(":5:12:" in e and "same route name" in e for e in errors), errors
    assert any(":2:19:" in e and "client ids must be unique" in e for e in errors), errors


def test_client_id_format_placeholders(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        site: s
        client_id_format: "{node}-{nope}"
        nodes:
          - {name: a, address: 10.0.0.1}
          - {name: b, address: 10.0.0.2}
        """
    )
    assert any("unknown placeholder {nope}" in e for e in errors_of(path))


def test_duplicate_yaml_keys(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        site: s
        nodes:
          - name: a
            address: 10.0.0.1
            address: 10.0.0.3
          - name: b
            address: 10.0.0.2
        site: t
        """
    )
    errors = errors_of(path)
    assert f"{path}:5:5: error: duplicate key 'address' (first defined at line 4)" in errors
    assert f"{path}:8:1: error: duplicate key 'site' (first defined at line 1)" in errors


def test_yaml_syntax_error_is_located(write_site: Callable[..., Path]) -> None:
    path = write_site("site: s\nnodes:\n  - name: a\n   address: [\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:") and "YAML syntax" in error


def test_missing_required_keys(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        nodes:
          - name: a
          - address: 10.0.0.2
        """
    )
    errors = errors_of(path)
    assert f"{path}:1:1: error: the site spec: missing required key 'site'" in errors
    assert f"{path}:2:5: error: nodes[0]: missing required key 'address'" in errors
    assert f"{path}:3:5: error: nodes[1]: missing required key 'name'" in errors


def test_link_override_references(write_site: Callable[..., Path]) -> None:
    path = write_site(
        """
        site: s
        nodes:
          - {name: a, address: 10.0.0.1, region: eu}
          - {name: b, address: 10.0.0.2}
        links:
          - {between: [a, mars], message_validity_sec: 60}
          - {between: [a, a], message_validity_sec: 60}
        """
    )
    errors = errors_of(path)
    assert any(":6:19:" in e and "'mars' is neither a node nor a region" in e for e in errors)
    assert any(":7:15:" in e and "two different nodes" in e for e in errors)


def test_one_node_site_warns_and_has_no_routes(write_site: Callable[..., Path]) -> None:
    loaded = load_site(write_site("site: s\nnodes:\n  - {name: a, address: 10.0.0.1}\n"))
    assert loaded.site.links == ()
    assert any("one-node site" in w.message for w in loaded.warnings)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n", "site: s\n"])
def test_wrong_document_shapes(write_site: Callable[..., Path], text: str) -> None:
    with pytest.raises(SpecError):
        load_site(write_site(text))


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_site(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"site: s\n\xff\xfe\n")
    with pytest.raises(SpecError, match=r"bad.yaml:2:1: error: file is not valid UTF-8"):
        load_site(bad)


def test_spec_order_does_not_change_the_site(write_site: Callable[..., Path]) -> None:
    one = load_site(write_site(MINIMAL, "one.yaml")).site
    shuffled = """
    nodes:
      - address: 192.168.1.102
        name: Node3
      - name: Node1
        address: 192.168.1.100
      - name: Node2
        address: 192.168.1.101
    site: plant-a
    """
    two = load_site(write_site(shuffled, "two.yaml")).site
    assert one.digest() == two.digest()
    assert one.links == two.links

"""The compiler: golden files, the parse-back guarantee, determinism, random specs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lotdeploy.compiler import compile_node, compile_site
from lotdeploy.errors import CompileError, SpecError
from lotdeploy.lot import parse
from lotdeploy.model import ROUTE_PREFIX
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site, load_site_text
from lotdeploy.spec.yamlsource import plain_scalar
from tests.test_lot import _noisy

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
VENDOR_PASSWORD = Secret("secure_cluster_pass")  # the vendor page's example value


def test_golden_three_node_example() -> None:
    """The vendor's three-node example (system-routes.md) compiles to the golden files."""
    site = load_site(REPO / "inventories" / "plant-a.yaml").site
    for artifact in compile_site(site, VENDOR_PASSWORD):
        golden = GOLDEN / "plant-a" / f"{artifact.node}.lot"
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(artifact.text)
        assert artifact.text == golden.read_text(), f"golden mismatch for {artifact.node}"


def test_route_content_matches_vendor_convention() -> None:
    site = load_site(REPO / "inventories" / "plant-a.yaml").site
    node1 = compile_node(site, site.node("Node1"), VENDOR_PASSWORD)
    assert [r.name for r in node1.routes] == ["lotdeploy_Node2", "lotdeploy_Node3"]
    config = node1.routes[0].block("CLUSTER_CONFIG")
    assert config is not None
    text = node1.text
    assert 'WITH CLIENT_ID "Node1-to-Node2"' in text
    assert "WITH BROKER_PORT '1883'" in text
    assert 'WITH BROKER_ADDRESS "192.168.1.101"' in text
    assert "WITH MESSAGE_VALIDITY_SEC '30'" in text
    assert "USE_TLS" not in text


def test_tls_routes_carry_use_tls_and_tls_port() -> None:
    site = load_site(REPO / "inventories" / "geo.yaml").site
    text = compile_node(site, site.node("eu1"), VENDOR_PASSWORD).text
    assert "WITH USE_TLS true" in text and "WITH BROKER_PORT '8883'" in text
    assert "WITH MESSAGE_VALIDITY_SEC '20'" in text  # eu in-region
    assert "WITH MESSAGE_VALIDITY_SEC '180'" in text  # eu<->us override


def _site_with_templates(tmp_path: Path, template: str) -> Path:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "mqtt_cluster.lot.j2").write_text(template)
    site = tmp_path / "site.yaml"
    site.write_text((REPO / "inventories" / "plant-a.yaml").read_text() + "templates: tpl\n")
    return site


BUILTIN = (REPO / "templates" / "mqtt_cluster.lot.j2").read_text()


def test_own_template_may_change_layout_only(tmp_path: Path) -> None:
    site = load_site(_site_with_templates(tmp_path, "// my header\n" + BUILTIN)).site
    artifact = compile_node(site, site.node("Node1"), VENDOR_PASSWORD)
    assert artifact.text.startswith("// my header")


@pytest.mark.parametrize(
    ("mutation", "needle"),
    [
        (("WITH BROKER_PORT '{{ route.broker_port }}'", "WITH BROKER_PORT '1'"), "differs"),
        (("        WITH PASSWORD", '        WITH PASSWORD "x"\n        WITH PASSWORD'), "differs"),
        (("DEFINE ROUTE", "DEFINE ROUTE ROUTE"), "does not parse"),
        (("{{ route.client_id }}", "{{ route.no_such_thing }}"), "no attribute"),
        (("{% for route in routes %}", "{% for route in routes %}{% if"), "template syntax"),
    ],
)
def test_template_bug_never_ships(tmp_path: Path, mutation: tuple[str, str], needle: str) -> None:
    template = BUILTIN.replace(*mutation)
    assert template != BUILTIN
    site = load_site(_site_with_templates(tmp_path, template)).site
    with pytest.raises(CompileError, match=needle) as info:
        compile_site(site, VENDOR_PASSWORD)
    assert "secure_cluster_pass" not in str(info.value)


def test_deterministic_whatever_the_spec_order(tmp_path: Path) -> None:
    text = (REPO / "inventories" / "geo.yaml").read_text()
    one = load_site_text(text, "a.yaml", tmp_path).site
    # the same site with nodes reversed and keys reordered
    nodes_at = text.index("nodes:")
    links_at = text.index("links:")
    node_blocks = text[nodes_at + len("nodes:\n") : links_at].strip("\n").split("\n  - ")
    reversed_nodes = (
        "nodes:\n  - "
        + "\n  - ".join(b.removeprefix("  - ") for b in reversed(node_blocks))
        + "\n\n"
    )
    shuffled = text[links_at:] + reversed_nodes + text[:nodes_at]
    two = load_site_text(shuffled, "b.yaml", tmp_path).site
    assert one.digest() == two.digest()
    assert [a.text for a in compile_site(one, VENDOR_PASSWORD)] == [
        a.text for a in compile_site(two, VENDOR_PASSWORD)
    ]


# unquoted in the YAML below: leave out words the strict rules refuse there (NO, on, null...)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,6}", fullmatch=True).filter(
    lambda name: plain_scalar(name)[1] is None
)


@st.composite
def site_specs(draw: st.DrawFn) -> str:
    count = draw(st.integers(min_value=1, max_value=9))
    node_names = draw(st.lists(names, min_size=count, max_size=count, unique_by=str.lower))
    regions = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    lines = [f"site: {draw(names)}", "defaults:", f"  tls: {str(draw(st.booleans())).lower()}"]
    lines.append(f"  message_validity_sec: {draw(st.integers(1, 300))}")
    lines.append("nodes:")
    for index, name in enumerate(node_names):
        lines.append(f"  - name: {name}")
        lines.append(f"    address: 10.{index // 250}.{index % 250}.1")
        lines.append(f"    region: {draw(st.sampled_from(regions))}")
        if draw(st.booleans()):
            lines.append(f"    port: {draw(st.integers(1, 65535))}")
        if draw(st.booleans()):
            lines.append(f"    tls: {str(draw(st.booleans())).lower()}")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site_specs())
def test_random_valid_specs_compile_to_a_complete_mesh(text: str) -> None:
    site = load_site_text(text, "random.yaml", Path(".")).site
    artifacts = compile_site(site, Secret("RandomPassw0rd"))
    names = {node.name for node in site.nodes}
    client_ids = []
    for artifact in artifacts:
        routes = parse(artifact.text)
        assert routes == artifact.routes  # parse-back guarantee
        route_names = [r.name for r in routes]
        assert len(route_names) == len(set(route_names)) == len(names) - 1
        assert all(r.startswith(ROUTE_PREFIX) for r in route_names)
        for route in routes:
            config = route.block("CLUSTER_CONFIG")
            assert config is not None
            client_id = config.get("CLIENT_ID")
            client_ids.append(getattr(client_id, "value", None))
    assert len(client_ids) == len(set(client_ids)) == len(names) * (len(names) - 1)


yaml_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "site",
                    "nodes",
                    "name",
                    "address",
                    "port",
                    "tls",
                    "regions",
                    "defaults",
                    "links",
                    "x",
                    "ssh",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(yaml_junk)
def test_random_structures_never_crash_the_loader(data: object) -> None:
    import yaml

    text = yaml.safe_dump(data)
    try:
        load_site_text(text, "junk.yaml", Path("."))
    except SpecError as exc:
        assert all(d.file == "junk.yaml" and d.line >= 1 for d in exc.diagnostics)


@settings(max_examples=150, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("site:nodes-[]{},'\"\n #&*!|>?%@`\t\\abc123")), max_size=80
    )
)
def test_random_text_never_crashes_the_loader(text: str) -> None:
    try:
        load_site_text(text, "junk.yaml", Path("."))
    except SpecError as exc:
        assert exc.diagnostics


def test_render_is_all_or_nothing_on_template_bug(
    tmp_path: Path, passphrase: str, write_site: Callable[..., Path]
) -> None:
    from lotdeploy.errors import LotdeployError
    from lotdeploy.render import write_bundles
    from lotdeploy.workspace import Workspace

    site_path = _site_with_templates(tmp_path, BUILTIN.replace("'{{ route.broker_port }}'", "'1'"))
    out = tmp_path / "out"
    with pytest.raises(LotdeployError):
        write_bundles(load_site(site_path).site, Workspace.for_site(site_path), out)
    assert not out.exists() or not any(out.iterdir())
    shutil.rmtree(tmp_path / "tpl")


_words = st.text(alphabet="abcXYZ019._:-", min_size=1, max_size=20)
_route_settings = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True),
        "broker_address": _words,
        "broker_port": st.integers(0, 65535),
        "client_id": _words,
        "username": _words,
        "message_validity_sec": st.integers(0, 10**6),
        "use_tls": st.booleans(),
    }
)


@settings(max_examples=200, deadline=None)
@given(_route_settings, _words)
def test_canonical_text_is_the_emitters_text_of_the_tree(route: dict, password: str) -> None:
    """The cheap verification compares against canonical_route_text; it must be exactly the
    emitter's text of the intended tree (which parses back to that tree: test_lot)."""
    from lotdeploy.compiler.routes import canonical_route_text, route_tree
    from lotdeploy.lot import format_route

    secret = Secret(password)
    assert canonical_route_text(route, secret) + "\n" == format_route(route_tree(route, secret))


@settings(max_examples=200, deadline=None)
@given(st.lists(_route_settings, min_size=0, max_size=4), st.data())
def test_a_text_that_matches_canonical_parses_to_the_intended_routes(
    routes: list[dict], data: st.DataObject
) -> None:
    """Whatever layout a template produces, `matches_canonical` only ever says yes to text
    that parses to exactly the intended routes."""
    from lotdeploy.compiler.compile import matches_canonical, matches_canonical_pieces
    from lotdeploy.compiler.routes import canonical_route_text, route_tree
    from lotdeploy.lot import format_routes

    password = Secret("Passw0rdForTests")
    intended = tuple(route_tree(r, password) for r in routes)
    canonical = "\n".join(canonical_route_text(r, password) for r in routes)
    text = _noisy(format_routes(intended), data.draw)
    if matches_canonical(text, canonical):
        assert parse(text) == intended
    assert matches_canonical(format_routes(intended), canonical)
    pieces = [canonical_route_text(r, password) for r in routes]
    if matches_canonical_pieces(text, pieces):  # the hot path's proof implies the spec's
        assert matches_canonical(text, canonical)
    assert matches_canonical_pieces(format_routes(intended), pieces)
    commented = "// head\n\n" + "".join(f"// route\n{p}\n\n" for p in pieces) + "// end"
    assert matches_canonical_pieces(commented, pieces)  # the built-in template's layout


def test_the_builtin_template_takes_the_cheap_proof(tmp_path: Path) -> None:
    """Every node of a golden site is verified without the parser (render's speed)."""
    from lotdeploy.compiler import compile as compile_module

    site = load_site(REPO / "inventories" / "geo.yaml").site
    password = Secret("Passw0rdForTests")
    for node in site.nodes:
        artifact = compile_node(site, node, password)
        settings = compile_module.node_route_settings(site, node)
        pieces = [compile_module.canonical_route_text(s, password) for s in settings]
        assert compile_module.matches_canonical_pieces(artifact.text, pieces)


def test_a_one_node_site_renders(tmp_path: Path) -> None:
    """No peer, so no route and no password: the bundle is an empty route file."""
    site = load_site_text(
        "site: solo\nnodes:\n  - {name: a, address: 10.0.0.1}\n", "s.yaml", tmp_path
    ).site
    artifact = compile_node(site, site.node("a"), Secret(""))
    assert artifact.routes == () and "DEFINE" not in artifact.text

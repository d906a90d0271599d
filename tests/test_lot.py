"""The LOT language module: vendor examples, values, errors, round trip, fuzz, lint."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lotdeploy.errors import CompileError, Diagnostic, LotSyntaxError
from lotdeploy.lot import (
    Block,
    Bool,
    EnvRef,
    Int,
    Route,
    SecretRef,
    Setting,
    Str,
    format_route,
    format_routes,
    lint_file,
    lint_text,
    normalize,
    parse,
    parse_file,
    strip_comments,
)
from lotdeploy.lot.fastpath import fast_parse as _fast_parse
from lotdeploy.lot.lint import unsafe_string_reason
from lotdeploy.lot.parser import parse_with_lark

# ---- the vendor's examples (system-routes.md), verbatim --------------------------------------

VENDOR_SYNTAX = """\
DEFINE ROUTE <route_name> WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "<primary_broker_address>"
        WITH BROKER_PORT '<port>'
"""

VENDOR_BASIC = """\
DEFINE ROUTE ClusterNode1 WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "192.168.1.100"
        WITH BROKER_PORT '1884'
        WITH CLIENT_ID "ClusterNode1"
        WITH USERNAME "cluster_user"
        WITH PASSWORD "cluster_password"
        WITH MESSAGE_VALIDITY_SEC '30'
"""

VENDOR_NODE1 = """\
DEFINE ROUTE ClusterPeer2 WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "192.168.1.101"
        WITH BROKER_PORT '1883'
        WITH CLIENT_ID "Node1-to-Node2"
        WITH USERNAME "cluster"
        WITH PASSWORD "secure_cluster_pass"
        WITH MESSAGE_VALIDITY_SEC '30'

DEFINE ROUTE ClusterPeer3 WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "192.168.1.102"
        WITH BROKER_PORT '1883'
        WITH CLIENT_ID "Node1-to-Node3"
        WITH USERNAME "cluster"
        WITH PASSWORD "secure_cluster_pass"
        WITH MESSAGE_VALIDITY_SEC '30'
"""

VENDOR_GEO = """\
DEFINE ROUTE EuropeCluster WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "eu-broker.example.com"
        WITH BROKER_PORT '8883'
        WITH CLIENT_ID "US-to-EU"
        WITH USE_TLS true
        WITH MESSAGE_VALIDITY_SEC '60'
"""

# The best-practice snippets are fragments (a setting or a block alone); wrapped in a route.
VENDOR_FRAGMENTS = """\
DEFINE ROUTE Fragments WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH CLIENT_ID "Node1-to-Node2"  // Unique per connection
        WITH MESSAGE_VALIDITY_SEC '30'
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "peer-broker.example.com"
        WITH BROKER_PORT '8883'
        WITH USE_TLS true
    ADD CLUSTER_CONFIG
        WITH USERNAME "cluster_service"
        WITH PASSWORD "shared_secure_password"
"""

INTERFACE_SYNTAX = """\
DEFINE ROUTE Name WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "<host or ip>"
        WITH BROKER_PORT '1883'
        WITH CLIENT_ID "<id>"
        WITH USERNAME "<user>"
        WITH PASSWORD "<password>"
        WITH MESSAGE_VALIDITY_SEC '30'
        WITH USE_TLS true
"""


def both(text: str, filename: str = "<string>") -> tuple[Route, ...]:
    """Parse with `parse` and with lark alone; they must agree, positions included."""
    routes = parse(text, filename)
    assert_same(routes, parse_with_lark(text, filename))
    return routes


def positions(routes: tuple[Route, ...]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []

    def block(b: Block) -> None:
        out.append((b.line, b.column))
        out.extend((s.line, s.column) for s in b.settings)
        for child in b.children:
            block(child)

    for route in routes:
        out.append((route.line, route.column))
        for b in route.blocks:
            block(b)
    return out


def assert_same(a: tuple[Route, ...], b: tuple[Route, ...]) -> None:
    assert a == b
    assert positions(a) == positions(b)


def test_vendor_syntax_template_is_a_syntax_error() -> None:
    # <route_name> is a placeholder, not a name: the template itself must not parse.
    with pytest.raises(LotSyntaxError) as err:
        parse(VENDOR_SYNTAX, "t.lot")
    assert (err.value.line, err.value.column) == (1, 14)


def test_vendor_basic_example() -> None:
    (route,) = both(VENDOR_BASIC)
    assert (route.name, route.type, route.line, route.column) == (
        "ClusterNode1",
        "MQTT_CLUSTER",
        1,
        1,
    )
    config = route.block("CLUSTER_CONFIG")
    assert config is not None and (config.line, config.column) == (2, 5)
    assert config.get("BROKER_ADDRESS") == Str("192.168.1.100")
    assert config.get("BROKER_PORT") == Int(1884, quoted=True)
    assert config.get("MESSAGE_VALIDITY_SEC") == Int(30)
    assert [s.key for s in config.settings] == [
        "BROKER_ADDRESS",
        "BROKER_PORT",
        "CLIENT_ID",
        "USERNAME",
        "PASSWORD",
        "MESSAGE_VALIDITY_SEC",
    ]
    assert (config.settings[2].line, config.settings[2].column) == (5, 9)


def test_vendor_three_node_and_geo_and_fragments() -> None:
    peers = both(VENDOR_NODE1)
    assert [r.name for r in peers] == ["ClusterPeer2", "ClusterPeer3"]
    assert peers[1].line == 10
    (geo,) = both(VENDOR_GEO)
    cfg = geo.block("CLUSTER_CONFIG")
    assert cfg is not None and cfg.get("USE_TLS") == Bool(True, quoted=False)
    (frag,) = both(VENDOR_FRAGMENTS)
    assert [len(b.settings) for b in frag.blocks] == [2, 3, 2]
    (iface,) = both(INTERFACE_SYNTAX)
    assert iface.blocks[0].get("USE_TLS") == Bool(True)


def test_vendor_examples_lint_clean_of_errors() -> None:
    for text in (VENDOR_BASIC, VENDOR_NODE1, VENDOR_GEO):
        assert [d for d in lint_text(text, "v.lot") if d.severity == "error"] == []


def test_every_value_type() -> None:
    text = """\
DEFINE ROUTE Values WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH A "text with spaces and 'x' and // inside"
        WITH B '1883'
        WITH C 1883
        WITH D true
        WITH E false
        WITH F "true"
        WITH G "false"
        WITH H GET SECRET "CLUSTER_PASSWORD"
        WITH I GET ENV "BROKER_HOST"
        WITH TYPE "a key may be called TYPE"
"""
    cfg = both(text)[0].blocks[0]
    assert [s.value for s in cfg.settings] == [
        Str("text with spaces and 'x' and // inside"),
        Int(1883, quoted=True),
        Int(1883, quoted=False),
        Bool(True),
        Bool(False),
        Bool(True, quoted=True),
        Bool(False, quoted=True),
        SecretRef("CLUSTER_PASSWORD"),
        EnvRef("BROKER_HOST"),
        Str("a key may be called TYPE"),
    ]


def test_empty_single_quotes_are_an_error() -> None:
    bad = "DEFINE ROUTE X WITH TYPE T\n    ADD C\n        WITH J ''\n"
    with pytest.raises(LotSyntaxError) as err:
        parse(bad)
    assert (err.value.line, err.value.column) == (3, 16)
    assert "single-quoted value must be an integer" in err.value.message


def test_remaining_values() -> None:
    text = (
        "DEFINE ROUTE V WITH TYPE T\n    ADD C\n"
        '        WITH K "-12"\n        WITH L \'-7\'\n        WITH M -7\n        WITH N ""\n'
    )
    cfg = both(text)[0].blocks[0]
    assert [s.value for s in cfg.settings] == [
        Str("-12"),
        Int(-7, quoted=True),
        Int(-7, quoted=False),
        Str(""),
    ]


def test_comments_blank_lines_crlf_multiple_routes() -> None:
    text = (
        "// header comment\r\n"
        "\r\n"
        "DEFINE ROUTE A WITH TYPE MQTT_CLUSTER   // trailing\r\n"
        "    // indented comment\r\n"
        "\r\n"
        "    ADD CLUSTER_CONFIG// tight comment\r\n"
        "// column-0 comment inside a block\r\n"
        '        WITH BROKER_ADDRESS "a//b"  // the // in the string is text\r\n'
        "    \r\n"
        "        WITH BROKER_PORT '1883'\r\n"
        "\r\n\r\n"
        "DEFINE ROUTE B WITH TYPE MQTT_CLUSTER\r\n"
        "// last line without newline"
    )
    a, b = both(text)
    assert a.blocks[0].get("BROKER_ADDRESS") == Str("a//b")
    assert a.blocks[0].settings[1].line == 10
    assert (b.name, b.line, b.blocks) == ("B", 13, ())


def test_empty_and_comment_only_inputs() -> None:
    for text in ("", "\n", "// nothing\n", "   \n\n", "// x", "  \r", "  \r\n", "  // c"):
        assert both(text) == ()


def test_nested_mapping_blocks() -> None:
    text = """\
DEFINE ROUTE Pipeline WITH TYPE DATA_PIPELINE
    ADD SOURCE_CONFIG
        WITH BROKER_ADDRESS "src"
    ADD MAPPING temperature
        WITH SOURCE_TOPIC "sensors/+/temp"
        ADD EVENT on_change
            WITH DESTINATION_TOPIC "out/temp"
            ADD FILTER deep
                WITH MIN '0'
        WITH QOS '1'
        ADD EVENT second
    ADD MAPPING
"""
    (route,) = both(text)
    _source, mapping, bare = route.blocks
    assert (mapping.kind, mapping.name) == ("MAPPING", "temperature")
    assert [s.key for s in mapping.settings] == ["SOURCE_TOPIC", "QOS"]
    event, second = mapping.children
    assert (event.kind, event.name, event.line, event.column) == ("EVENT", "on_change", 6, 9)
    assert event.children[0] == Block("FILTER", "deep", (Setting("MIN", Int(0)),))
    assert second == Block("EVENT", "second")
    assert bare == Block("MAPPING")


def test_lenient_spacing_goes_to_lark() -> None:
    # Inline tabs, several spaces and tight comments parse; the fast path leaves them to lark.
    text = 'DEFINE  ROUTE\tX WITH TYPE T\n    ADD C\n        WITH K\t"v"//c\n'
    assert _fast_parse(text) is None
    assert both(text)[0].blocks[0].get("K") == Str("v")


# ---- errors: line AND column ------------------------------------------------------------------

HEAD = "DEFINE ROUTE X WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"

ERRORS = [
    # (text, line, column, part of the message)
    (HEAD + "        WITH BROKER_PORT\n", 3, 25, "expected a value after WITH BROKER_PORT"),
    (HEAD + "        WITH BROKER_PORT yes\n", 3, 26, "expected a value after WITH BROKER_PORT"),
    (HEAD + "        WITH BROKER_PORT 'abc'\n", 3, 26, "single-quoted value must be an integer"),
    (HEAD + '        WITH CLIENT_ID "abc\n', 3, 24, "unterminated string"),
    (HEAD + '\tWITH A "x"\n', 3, 1, "tab in indentation"),
    (HEAD + '        \tWITH A "x"\n', 3, 9, "tab in indentation"),
    ("\tDEFINE ROUTE X WITH TYPE T\n", 1, 1, "tab in indentation"),
    (HEAD + '        WITH A "x"\n            WITH B "y"\n', 4, 13, "unexpected indentation"),
    ("    DEFINE ROUTE X WITH TYPE T\n", 1, 5, "unexpected indentation"),
    (HEAD + '        WITH A "x"\n      WITH B "y"\n', 4, 7, "inconsistent indentation"),
    (HEAD + '        with A "x"\n', 3, 9, "keywords are upper case: write WITH"),
    (HEAD + '        WITH broker "x"\n', 3, 14, "UPPER_CASE key after WITH"),
    (HEAD + '        WITH P GET "x"\n', 3, 20, "after GET"),
    (HEAD + "        WITH P GET SECRET X\n", 3, 27, 'expected a "NAME" after GET SECRET'),
    (HEAD + "        WITH P '1' x\n", 3, 20, "expected end of line after the value"),
    ('DEFINE ROUTE X WITH TYPE T\n    WITH A "x"\n', 2, 5, "settings belong inside a block"),
    ('DEFINE ROUTE X WITH TYPE T\nWITH A "x"\n', 2, 1, "expected DEFINE ROUTE"),
    ('DEFINE ROUTE "X" WITH TYPE T\n', 1, 14, "expected a route name"),
    ("DEFINE ROUTE X WITH TYPE mqtt\n", 1, 26, "route type"),
    ("DEFINE ROUTE X WITH\n", 1, 20, "expected TYPE"),
    ("DEFINE ROUTEX WITH TYPE T\n", 1, 8, "expected ROUTE"),
    ("DEFINE ROUTE X WITH TYPE T\n    ADDCONFIG\n", 2, 5, "expected ADD"),
    ("DEFINE ROUTE X WITH TYPE T\n    ADD\n", 2, 8, "block kind after ADD"),
    ("DEFINE ROUTE X WITH TYPE T\r    ADD C\n", 1, 27, "carriage return"),
    ("define route X with type T\n", 1, 1, "keywords are upper case: write DEFINE"),
    (HEAD + "        WITH P '" + "9" * 5000 + "'\n", 3, 16, "integer too large"),
    ("\n\n// c\nDEFINE ROUTE X WITH TYPE T extra\n", 4, 28, "unexpected 'extra'"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), ERRORS)
def test_error_positions(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(LotSyntaxError) as err:
        parse(text, "bad.lot")
    got = err.value
    assert (got.filename, got.line, got.column) == ("bad.lot", line, column), got.message
    assert message in got.message
    assert str(got).startswith(f"bad.lot:{line}:{column}: ")


def test_value_error_message_lists_the_forms() -> None:
    with pytest.raises(LotSyntaxError) as err:
        parse(HEAD + "        WITH BROKER_PORT\n")
    assert err.value.message.startswith(
        "expected a value after WITH BROKER_PORT "
        '(a "string", \'int\', int, true/false, GET SECRET "X")'
    )


def test_parse_file(tmp_path: Path) -> None:
    good = tmp_path / "good.lot"
    good.write_bytes(b"\xef\xbb\xbf" + VENDOR_BASIC.encode())  # a BOM is tolerated
    assert parse_file(good)[0].name == "ClusterNode1"
    bad = tmp_path / "bad.lot"
    bad.write_bytes(b"DEFINE ROUTE \xff\n")
    with pytest.raises(LotSyntaxError) as err:
        parse_file(bad)
    assert (err.value.line, err.value.column) == (1, 1) and "UTF-8" in err.value.message
    with pytest.raises(LotSyntaxError) as err:
        parse_file(tmp_path / "missing.lot")
    assert (err.value.line, err.value.column) == (1, 1) and "cannot read" in err.value.message
    with pytest.raises(LotSyntaxError):
        parse_file(tmp_path)  # a directory


# ---- emit ---------------------------------------------------------------------------------------


def test_format_canonical_form() -> None:
    routes = both(VENDOR_NODE1)
    assert format_routes(routes) == VENDOR_NODE1
    assert format_route(both(VENDOR_GEO)[0]) == VENDOR_GEO
    assert format_routes(()) == ""
    nested = Route(
        "P",
        "T",
        (
            Block(
                "MAPPING",
                "m",
                (Setting("B", Bool(True, quoted=True)), Setting("S", SecretRef("X"))),
                (Block("EVENT", "e", (Setting("E", EnvRef("H")), Setting("N", Int(5, False)))),),
            ),
        ),
    )
    assert format_route(nested) == (
        "DEFINE ROUTE P WITH TYPE T\n"
        "    ADD MAPPING m\n"
        '        WITH B "true"\n'
        '        WITH S GET SECRET "X"\n'
        "        ADD EVENT e\n"
        '            WITH E GET ENV "H"\n'
        "            WITH N 5\n"
    )


@pytest.mark.parametrize(
    "route",
    [
        Route("X", "T", (Block("C", None, (Setting("K", Str('a"b')),)),)),
        Route("X", "T", (Block("C", None, (Setting("K", Str("a\nb")),)),)),
        Route("X", "T", (Block("C", None, (Setting("K", SecretRef("a\rb")),)),)),
        Route("bad name", "T"),
        Route("X", "lower"),
        Route("X", "T", (Block("C", "a-b"),)),
        Route("X", "T", (Block("C", None, (Setting("k", Str("v")),)),)),
    ],
)
def test_format_refuses_unwritable(route: Route) -> None:
    with pytest.raises(CompileError):
        format_route(route)


def test_strip_comments_and_normalize() -> None:
    text = (
        '// header\r\nDEFINE ROUTE A WITH TYPE T   // c\n    ADD C  \n        WITH K "a//b" // x\n'
        '        WITH U "http://h"\n'
    )
    assert strip_comments(text) == (
        '\nDEFINE ROUTE A WITH TYPE T\n    ADD C\n        WITH K "a//b"\n        WITH U "http://h"\n'
    )
    assert normalize(text) == (
        'DEFINE ROUTE A WITH TYPE T\nADD C\nWITH K "a//b"\nWITH U "http://h"'
    )
    # A broker's republished code compares equal to ours whatever its layout and comments.
    assert normalize(format_routes(both(VENDOR_NODE1))) == normalize(
        "  // from the broker\n" + VENDOR_NODE1.replace("\n", "\r\n").replace("    ", "  ")
    )


# ---- property tests ---------------------------------------------------------------------------

ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
upper = st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True)
text_value = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters='"\r\n'),
    max_size=20,
).filter(lambda s: s not in ("true", "false"))
values = st.one_of(
    text_value.map(Str),
    st.builds(Int, st.integers(-(10**20), 10**20), st.booleans()),
    st.builds(Bool, st.booleans(), st.booleans()),
    text_value.map(SecretRef),
    text_value.map(EnvRef),
)
setting_st = st.builds(Setting, upper, values)
blocks = st.recursive(
    st.builds(Block, upper, st.none() | ident, st.lists(setting_st, max_size=4).map(tuple)),
    lambda children: st.builds(
        Block,
        upper,
        st.none() | ident,
        st.lists(setting_st, max_size=3).map(tuple),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=8,
)
routes_st = st.lists(
    st.builds(Route, ident, upper, st.lists(blocks, max_size=3).map(tuple)), max_size=4
).map(tuple)


def _ints(routes: tuple[Route, ...]) -> list[int]:
    out: list[int] = []
    stack = [b for r in routes for b in r.blocks]
    while stack:
        block = stack.pop()
        stack.extend(block.children)
        out.extend(s.value.value for s in block.settings if isinstance(s.value, Int))
    return out


@settings(max_examples=150, deadline=None)
@given(routes_st)
def test_round_trip(routes: tuple[Route, ...]) -> None:
    text = format_routes(routes)
    fast = _fast_parse(text)
    if max((len(str(abs(v))) for v in _ints(routes)), default=0) <= 18:
        assert fast is not None  # canonical text takes the fast path (ints up to 18 digits)
    if fast is not None:
        assert_same(fast, parse_with_lark(text))
    assert parse(text) == routes
    assert parse_with_lark(text) == routes
    assert format_routes(parse(text)) == text  # canonical text is a fixed point


def _noisy(text: str, draw: st.DrawFn) -> str:
    """Rewrite canonical text the way a person might: comments, blanks, CRLF, spacing."""
    out: list[str] = []
    suffixes = ["  ", " // trailing", "//x"] + (["\t"] if draw(st.booleans()) else [])
    for line in text.split("\n"):
        if draw(st.booleans()) and draw(st.booleans()):
            out.append(draw(st.sampled_from(["", "  ", "// note", "    // indented note"])))
        if line and draw(st.booleans()):
            line += draw(st.sampled_from(suffixes))
        out.append(line)
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    return sep.join(out)


@st.composite
def noisy_texts(draw: st.DrawFn) -> str:
    text = _noisy(format_routes(draw(routes_st)), draw)
    if draw(st.booleans()) and text:  # one random edit, which may break it
        i = draw(st.integers(0, len(text) - 1))
        text = (
            text[:i]
            + draw(st.sampled_from(['"', "'", " ", "\t", "\n", "x", "//", ""]))
            + text[i + 1 :]
        )
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noisy_texts())
def test_fast_path_agrees_with_lark(text: str) -> None:
    """Whatever the fast path accepts, lark accepts with the same AST and positions."""
    fast = _fast_parse(text)
    try:
        slow = parse_with_lark(text)
    except LotSyntaxError:
        assert fast is None
        return
    if fast is not None:
        assert_same(fast, slow)
    assert_same(parse(text), slow)


lot_alphabet = st.sampled_from(
    [
        *"DEFINROUTWHYPAGSCVtruefals \t\n\r\"'/-0123456789_xX@\x00é",
        *("DEFINE ", "ROUTE ", "WITH ", "TYPE ", "ADD ", "GET ", "SECRET ", "    ", "\n    "),
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(lot_alphabet, max_size=60).map("".join)))
def test_fuzz_only_syntax_errors(text: str) -> None:
    try:
        routes = parse(text, "fuzz.lot")
    except LotSyntaxError as err:
        assert err.filename == "fuzz.lot" and err.line >= 1 and err.column >= 1
        assert err.message
        return
    assert isinstance(routes, tuple)


@settings(max_examples=100, deadline=None)
@given(noisy_texts())
def test_fuzz_near_valid_only_syntax_errors(text: str) -> None:
    try:
        parse(text)
    except LotSyntaxError as err:
        assert err.line >= 1 and err.column >= 1


# ---- lint ---------------------------------------------------------------------------------------


def messages(diags: list[Diagnostic], severity: str | None = None) -> list[str]:
    return [d.message for d in diags if severity is None or d.severity == severity]


def test_lint_parse_error_is_a_diagnostic() -> None:
    diags = lint_text(HEAD + "        WITH BROKER_PORT\n", "a.lot")
    assert diags == [Diagnostic("a.lot", 3, 25, diags[0].message, "error")]
    assert str(diags[0]).startswith("a.lot:3:25: error: expected a value")


def test_lint_cluster_semantics() -> None:
    text = """\
DEFINE ROUTE Peer WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "-oProxyCommand"
        WITH BROKER_PORT '70000'
        WITH USERNAME "it's"
        WITH PASSWORD GET SECRET "P"
        WITH USE_TLS "yes"
        WITH USERNAME "again"
        WITH RECONNECTION_RETRIES '3'
        WITH COLOUR "blue"
    ADD METADATA
DEFINE ROUTE Peer WITH TYPE MQTT_CLUSTER
DEFINE ROUTE _bad WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "h\x01"
        WITH BROKER_PORT 1883
        WITH CLIENT_ID "a//b"
"""
    diags = lint_text(text, "c.lot")
    errors = messages(diags, "error")
    warnings = messages(diags, "warning")
    assert "CLUSTER_CONFIG is missing required key CLIENT_ID" in errors
    assert "value of BROKER_ADDRESS starts with - (would read as a command option)" in errors
    assert "BROKER_PORT 70000 is not a port (1..65535)" in errors
    assert "value of USERNAME contains a single quote" in errors
    assert "USE_TLS should be true or false" in errors
    assert "duplicate key USERNAME in CLUSTER_CONFIG" in errors
    assert any(m.startswith("ADD METADATA is template-only") for m in errors)
    assert any(m.startswith("duplicate route name Peer (first defined at line 1)") for m in errors)
    assert any(m.startswith("MQTT_CLUSTER route Peer has no ADD CLUSTER_CONFIG") for m in errors)
    assert any(m.startswith("route name '_bad' must match") for m in errors)
    assert "value of BROKER_ADDRESS contains control character '\\x01'" in errors
    assert "value of CLIENT_ID contains // (a comment marker)" in errors
    assert any(m.startswith("RECONNECTION_RETRIES is documented for MQTT_BRIDGE") for m in warnings)
    assert "COLOUR is not a documented CLUSTER_CONFIG key" in warnings
    assert any(m.startswith("GET SECRET for PASSWORD") for m in warnings)
    assert "the vendor writes BROKER_PORT single-quoted: '1883'" in warnings
    dup = next(d for d in diags if d.message.startswith("duplicate route name"))
    assert (dup.line, dup.column) == (12, 1)
    port = next(d for d in diags if d.message.startswith("BROKER_PORT 70000"))
    assert (port.line, port.column) == (4, 9)
    assert diags == sorted(diags)


def test_lint_port_and_types() -> None:
    def lint_port(value: str) -> list[str]:
        text = (
            "DEFINE ROUTE P WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"
            f'        WITH BROKER_ADDRESS "h"\n        WITH CLIENT_ID "c"\n'
            f"        WITH BROKER_PORT {value}\n"
        )
        return messages(lint_text(text), "error")

    assert lint_port("'1'") == [] and lint_port("'65535'") == []
    assert lint_port("'0'") == ["BROKER_PORT 0 is not a port (1..65535)"]
    assert lint_port('"1883"') == ["BROKER_PORT must be an integer, written '1883'"]
    assert lint_port('GET ENV "PORT"') == []


def test_lint_layout_warning_and_clean_file(tmp_path: Path) -> None:
    text = VENDOR_GEO.replace("        WITH", "      WITH")
    assert messages(lint_text(text), "warning") == ["indent with 4 spaces per level"] * 5
    path = tmp_path / "geo.lot"
    path.write_text(VENDOR_GEO)
    assert lint_file(path) == []
    missing = lint_file(tmp_path / "nope.lot")
    assert len(missing) == 1 and (missing[0].line, missing[0].column) == (1, 1)


def test_unsafe_string_reason() -> None:
    assert unsafe_string_reason("Node1-to-Node2") is None
    assert unsafe_string_reason("192.168.1.101") is None
    for bad in ('a"b', "a'b", "http://x", "a\tb", "a\x7f", "-x", "a\u0085"):
        assert unsafe_string_reason(bad) is not None


@pytest.mark.parametrize(
    "line",
    [
        "        WITH PASSWORD hunter2secretvalue",
        '        WITH PASSWORD "hunter2"secretvalue"',
        "        with password hunter2secretvalue",
        "        WITH PASSWORD 'hunter2secretvalue",
        "        WITH CLIENT_CERT_PASS hunter2secretvalue extra",
    ],
)
def test_syntax_errors_never_repeat_a_secret_bearing_value(line: str) -> None:
    text = f"DEFINE ROUTE r WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n{line}\n"
    with pytest.raises(LotSyntaxError) as err:
        parse(text, "r.lot")
    assert "secretvalue" not in str(err.value) and "hunter2" not in str(err.value)
    assert str(err.value).startswith("r.lot:3:")

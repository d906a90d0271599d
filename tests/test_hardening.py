"""Fail safe on hostile input: each class reproduced through the real CLI, plus unit tests
of the one value rule (lotdeploy.values), the YAML rules and the safe file reader, and a
property over the whole Unicode range and YAML's scalar forms."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lotdeploy.compiler import compile_node
from lotdeploy.errors import CompileError, SpecError
from lotdeploy.fsutil import UnreadableFile, read_regular_file
from lotdeploy.lot import lint_text
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site, load_site_text
from lotdeploy.spec.yamlsource import MAX_ALIAS_NODES, load_located
from lotdeploy.values import (
    Code,
    Role,
    check_bundle_name,
    check_command_token,
    check_local_path,
    check_node_path,
    paths_overlap,
    problem,
)
from tests.conftest import TEST_PASSPHRASE, run_cli

ENV = {"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE}
NODES = "nodes:\n  - {name: a, address: 10.0.0.1}\n  - {name: b, address: 10.0.0.2}\n"


def site_file(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def cli_errors(*args: str | Path) -> list[str]:
    """Run the CLI, expect exit 1 and clean diagnostics; return the stderr lines."""
    result = run_cli(*args, env=ENV)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()


def has(lines: list[str], prefix: str, needle: str) -> bool:
    return any(line.startswith(prefix) and needle in line for line in lines)


# --- 1. paths from the spec ------------------------------------------------------------------


def test_cli_refuses_escaping_and_colliding_paths(tmp_path: Path) -> None:
    site = site_file(
        tmp_path,
        """
        site: s
        defaults:
          tls: true
          broker:
            cert_file: ../../escaped.crt
            key_file: routes.lot
            tls_dir: /opt/../etc
            release_dir: /opt/lotdeploy/
        nodes:
          - name: a
            address: 10.0.0.1
            broker: {cert_file: same.pem, key_file: same.pem}
          - name: b
            address: 10.0.0.2
            broker: {tls_dir: /srv/x, release_dir: /srv/x/release}
          - name: c
            address: 10.0.0.3
            broker: {ca_file: manifest.json, tls_dir: relative/dir, release_dir: /a//b}
          - name: d
            address: 10.0.0.4
            broker: {ca_file: .hidden}
        """,
    )
    lines = cli_errors("validate", site)
    assert has(lines, f"{site}:5:16: error:", "plain file name (no '/')")
    assert has(lines, f"{site}:6:15: error:", "a file every bundle already has")
    assert has(lines, f"{site}:7:14: error:", "no '..' components")
    assert has(lines, f"{site}:8:18: error:", "no trailing '/'")
    assert has(lines, f"{site}:21:23: error:", "must not start with '.'")
    assert has(lines, f"{site}:12:45: error:", "broker.key_file and broker.cert_file are both")
    assert has(lines, f"{site}:15:44: error:", "broker.release_dir and broker.tls_dir overlap")
    assert has(lines, f"{site}:18:23: error:", "a file every bundle already has")
    assert has(lines, f"{site}:18:47: error:", "must be an absolute path")
    assert has(lines, f"{site}:18:74: error:", "no '//'")
    out = tmp_path / "out"
    cli_errors("render", site, "--out", out)
    assert not out.exists() and not (tmp_path.parent / "escaped.crt").exists()


def test_cli_refuses_a_default_file_name_reused(tmp_path: Path) -> None:
    site = site_file(
        tmp_path,
        """
        site: s
        defaults: {tls: true, broker: {cert_file: ca.crt}}
        nodes:
          - {name: a, address: 10.0.0.1}
          - {name: b, address: 10.0.0.2, ssh: {key: keys/id, known_hosts: ./keys/../keys/id}}
          - {name: c, address: 10.0.0.3, ssh: {key: keys/id}, broker: {admin_password_file: keys/id}}
        """,
    )
    lines = cli_errors("validate", site)
    # the shared default is reported once, at the key that set it
    reused = [line for line in lines if "broker.ca_file and broker.cert_file are both" in line]
    assert len(reused) == 1 and reused[0].startswith(f"{site}:2:43: error:")
    assert has(lines, f"{site}:5:67:", "no '.' components")
    assert has(lines, f"{site}:6:85: error:", "admin_password_file and ssh.key name the same")


def test_path_rules_unit() -> None:
    assert check_node_path("/opt/coreflux/tls") is None
    for bad in ("opt/x", "/", "/a/../b", "/a/./b", "/a//b", "/a/", "/a b", "/a\u202e", "/a;b"):
        assert check_node_path(bad) is not None, bad
    assert check_bundle_name("server.crt") is None
    for bad in ("", ".", "..", "a/b", ".x.tmp", "-x", "routes.lot", "manifest.json", "a b"):
        assert check_bundle_name(bad) is not None, bad
    assert check_local_path("../keys/id_ed25519") is None
    assert check_local_path("/home/me/My Keys/id") is None
    for bad in ("", "a//b", "a/", "./a", "a/../b", "/../a", "a\nb", "a\u2028b"):
        assert check_local_path(bad) is not None, bad
    assert paths_overlap("/a/b", "/a") and paths_overlap("/a", "/a")
    assert not paths_overlap("/a/b", "/a/bc")


# --- 2. YAML that is not what it looks like -------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "needle"),
    [
        ("port: 0x1F", "reads it as 31"),
        ("port: 017", "reads it as 15"),
        ("port: 0o17", "decimal digits only"),
        ("port: 1_000", "reads it as 1000"),
        ("port: +5", "reads it as 5"),
        ("message_validity_sec: 1:30", "reads it as 90"),
        ("message_validity_sec: 1e3", "decimal digits only"),
        ("message_validity_sec: .inf", "decimal digits only"),
        ("tls: yes", "write true or false"),
        ("tls: on", "write true or false"),
        ("tls: True", "write true or false"),
        ("username: 2024-01-01", "reads as a date"),
        ("username: !!binary aGk=", "YAML tag"),
        ("port: 99999999999999999999999", "more than 18 digits"),
    ],
)
def test_cli_refuses_implicit_yaml_forms(tmp_path: Path, snippet: str, needle: str) -> None:
    site = site_file(tmp_path, f"site: s\ndefaults:\n  {snippet}\n{NODES}")
    value_col = 3 + snippet.index(":") + 2
    lines = cli_errors("validate", site)
    assert has(lines, f"{site}:3:{value_col}: error:", needle), lines


def test_quoted_forms_are_text_and_plain_decimals_numbers(tmp_path: Path) -> None:
    site = site_file(
        tmp_path,
        'site: s\ndefaults: {username: "0x1F", port: 1884, tls: false}\n' + NODES,
    )
    loaded = load_site(site)
    assert {n.username for n in loaded.site.nodes} == {"0x1F"}
    assert {n.port for n in loaded.site.nodes} == {1884}


def test_cli_refuses_an_alias_bomb_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    site = site_file(tmp_path, "site: s\n" + "\n".join(lines) + "\n" + NODES)
    started = time.monotonic()
    errors = cli_errors("validate", site)
    assert time.monotonic() - started < 30
    assert any(f"aliases expand to more than {MAX_ALIAS_NODES} nodes" in e for e in errors)


def test_recursive_alias_is_an_error() -> None:
    located = load_located("a: &x [1, *x]\n", "f.yaml")
    assert any("recursive YAML alias" in d.message for d in located.diagnostics)
    shared = load_located("a: &x {k: 1}\nb: *x\n", "f.yaml")
    assert shared.diagnostics == [] and shared.data == {"a": {"k": 1}, "b": {"k": 1}}


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def test_cli_refuses_a_fifo_as_site_file_and_lot_file(tmp_path: Path) -> None:
    site = _fifo(tmp_path, "site.yaml")
    lot = _fifo(tmp_path, "routes.lot")
    started = time.monotonic()
    assert cli_errors("validate", site) == [
        f"{site}:1:1: error: file is a FIFO, not a regular file"
    ]
    lint = run_cli("lint", lot)
    assert lint.returncode == 1 and "Traceback" not in lint.stderr
    assert lint.stderr.strip() == f"{lot}:1:1: error: file is a FIFO, not a regular file"
    assert time.monotonic() - started < 30
    device = cli_errors("validate", "/dev/zero")
    assert device == ["/dev/zero:1:1: error: file is a character device, not a regular file"]


def test_read_regular_file_caps_what_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    assert read_regular_file(path, 11) == b"x" * 11
    with pytest.raises(UnreadableFile, match="larger than 10 bytes"):
        read_regular_file(path, 10)
    with pytest.raises(UnreadableFile, match="is a directory"):
        read_regular_file(tmp_path, 10)
    with pytest.raises(UnreadableFile, match="cannot read"):
        read_regular_file(tmp_path / "missing", 10)
    # a FIFO is refused without blocking, even with a writer waiting
    fifo = _fifo(tmp_path, "p")
    done = threading.Event()

    def writer() -> None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    with pytest.raises(UnreadableFile, match="FIFO"):
        read_regular_file(fifo, 10)


# --- 3. values unsafe for LOT or the command channel -----------------------------------------


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("a\\u2028b", "single line"),
        ("a\\u2029b", "single line"),
        ("a\\x85b", "single line"),
        ("a\\u202eb", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("a\\u2066b", "U+2066"),
        ("a\\u200bb", "U+200B ZERO WIDTH SPACE"),
        ("\\ufeffab", "U+FEFF"),
        ("a\\u00a0b", "U+00A0 NO-BREAK SPACE"),
        ("a\\ue000b", "private-use"),
        ("a\\x9bb", "LOT cannot carry"),
        ("a b", "contains a space"),
        ("a -x", "starting with -"),
        ("x" * 129, "at most 128"),
    ],
)
def test_cli_refuses_unsafe_user_names(tmp_path: Path, value: str, needle: str) -> None:
    site = site_file(tmp_path, f'site: s\ndefaults:\n  username: "{value}"\n{NODES}')
    lines = cli_errors("validate", site)
    assert has(lines, f"{site}:3:13: error:", needle), lines
    out = tmp_path / "out"
    cli_errors("render", site, "--out", out)
    assert not out.exists()


def test_cli_caps_addresses_and_client_ids(tmp_path: Path) -> None:
    long_name = ".".join(["a" * 60] * 5)  # 304 characters of valid labels
    site = site_file(
        tmp_path,
        f"site: s\nclient_id_format: '{{node}}-{'x' * 130}'\n"
        f"nodes:\n  - {{name: a, address: {long_name}}}\n  - {{name: b, address: 10.0.0.2}}\n",
    )
    lines = cli_errors("validate", site)
    assert has(lines, f"{site}:2:19: error:", "at most 128")
    assert has(lines, f"{site}:4:24: error:", "nodes[0].address")


def test_cli_lint_refuses_invisible_characters(tmp_path: Path) -> None:
    lot = tmp_path / "r.lot"
    lot.write_text(
        "DEFINE ROUTE A WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"
        "        WITH BROKER_ADDRESS \"10.0.0.1\"\n        WITH BROKER_PORT '1883'\n"
        '        WITH CLIENT_ID "a\u202eb"\n        WITH USERNAME "u\u00a0v"\n'
    )
    result = run_cli("lint", lot)
    assert result.returncode == 1
    assert f"{lot}:5:9: error: value of CLIENT_ID contains U+202E" in result.stderr
    assert f"{lot}:6:9: error: value of USERNAME contains U+00A0" in result.stderr


def test_value_rule_unit() -> None:
    assert problem("Node1-to-Node2", Role.LOT_STRING) is None
    assert problem("a b", Role.LOT_STRING) is None
    assert problem("a b", Role.COMMAND_TOKEN) is not None
    assert problem("sudo rm", Role.TEXT) is None and problem("a'b", Role.TEXT) is None
    assert problem("lotdeploy_a", Role.IDENTIFIER) is None
    assert problem("a-b", Role.IDENTIFIER) is not None
    too_long = problem("é" * 33, Role.COMMAND_TOKEN, 64)
    assert too_long is not None and too_long.code is Code.TOO_LONG
    assert problem("x" * 65_536, Role.LOT_STRING) is not None
    assert check_command_token("cluster_v2") is None
    assert problem("true", Role.LOT_STRING) is not None  # "true" in LOT is a Bool
    assert problem("True", Role.LOT_STRING) is None
    for bad in ("", "a b", "-x", 'a"b', "a\u2028b", "a\ud800b", "a\u00a0b", "a\u200db"):
        assert check_command_token(bad) is not None, repr(bad)
    secret = "s3cr\u202et"
    found = check_command_token(secret)
    assert found is not None and secret not in found


def test_compiler_refuses_unsafe_values_it_is_given(tmp_path: Path) -> None:
    site = load_site(site_file(tmp_path, "site: s\n" + NODES)).site
    with pytest.raises(CompileError, match="cluster password contains a space") as info:
        compile_node(site, site.nodes[0], Secret("pass word"))
    assert "pass word" not in str(info.value)


# --- 4. settings that contradict each other --------------------------------------------------


def test_cli_refuses_contradicting_settings(tmp_path: Path) -> None:
    site = site_file(
        tmp_path,
        """
        site: s
        regions: {eu: {}}
        pki: {cert_lifetime_days: 400, ca_lifetime_days: 300, renew_before_days: 400}
        nodes:
          - {name: a, address: 10.0.0.1, region: eu}
          - {name: b, address: 10.0.0.2}
        links:
          - {between: [a, eu], message_validity_sec: 60}
        """,
    )
    lines = cli_errors("validate", site)
    assert has(lines, f"{site}:3:74: error:", "renew_before_days (400) must be less than")
    assert has(lines, f"{site}:3:27: error:", "longer than pki.ca_lifetime_days (300)")
    assert has(lines, f"{site}:8:15: error:", "joins a node and a region")


# --- 5. schema errors do not hide semantic ones ----------------------------------------------


def test_cli_reports_semantic_errors_beside_schema_errors(tmp_path: Path) -> None:
    site = site_file(
        tmp_path,
        """
        site: s
        client_id_format: "{site}"
        defaults: {port: "1883"}
        nodes:
          - {name: eu-1, address: 10.0.0.1}
          - {name: eu_1, address: 10.0.0.2}
          - {name: c, address: 10.0.0.3, tls: maybe}
        links:
          - {between: [eu-1, nowhere], message_validity_sec: 60}
        """,
    )
    lines = cli_errors("validate", site)
    assert has(lines, f"{site}:3:18: error:", "defaults.port")
    assert has(lines, f"{site}:7:39: error:", "nodes[2].tls")
    assert has(lines, f"{site}:6:12: error:", "give the same route name")
    assert has(lines, f"{site}:2:19: error:", "client ids must be unique")
    assert has(lines, f"{site}:9:22: error:", "'nowhere' is neither a node nor a region")


# --- 6. site templates run sandboxed ---------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "cycler.__init__.__globals__.os.system('touch {marker}')",
        "''.__class__.__mro__[1].__subclasses__()",
        "routes.__class__.__init__.__globals__",
        "range(10**9)|list",
        "'x' * 10**12",
        "(routes|first).update(name='evil')",
    ],
)
def test_cli_site_template_cannot_escape(tmp_path: Path, expression: str) -> None:
    marker = tmp_path / "X"
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "mqtt_cluster.lot.j2").write_text(
        "{{ " + expression.format(marker=marker) + " }}\n"
    )
    site = site_file(tmp_path, "site: s\ntemplates: tpl\n" + NODES)
    lines = [line for line in cli_errors("render", site, "--out", tmp_path / "out")]
    errors = [line for line in lines if "warning:" not in line]
    assert len(errors) == 1 and "template mqtt_cluster.lot.j2" in errors[0], lines
    assert not marker.exists()
    assert not (tmp_path / "out" / "a" / "routes.lot").exists()


def test_template_errors_are_one_scrubbed_line(tmp_path: Path) -> None:
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "mqtt_cluster.lot.j2").write_text("{{ {}[(routes|first).password] }}\n")
    site = load_site(site_file(tmp_path, "site: s\ntemplates: tpl\n" + NODES)).site
    password = Secret("VeryPrivatePassword1")
    with pytest.raises(CompileError) as info:
        compile_node(site, site.nodes[0], password)
    assert "VeryPrivatePassword1" not in str(info.value) and "\n" not in str(info.value)


# --- 7. a templates path that is a file ------------------------------------------------------


def test_cli_templates_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "tpl").write_text("not a dir")
    site = site_file(tmp_path, "site: s\ntemplates: tpl\n" + NODES)
    lines = cli_errors("validate", site)
    assert has(lines, f"{site}:2:12: error:", "templates path 'tpl' is not a directory")
    site = site_file(tmp_path, "site: s\ntemplates: missing\n" + NODES)
    assert has(cli_errors("validate", site), f"{site}:2:12: error:", "does not exist")


# --- 8. properties ---------------------------------------------------------------------------

YAML_FORMS = [
    "0x1F", "1:30", "017", "0o17", ".5", "1e3", "~", "yes", "no", "on", "off", "true",
    "false", "True", "null", "NULL", "30", "-5", "+5", "1_000", ".inf", "-.inf", ".nan",
    "2024-01-01", "0", "-0", "0b101", "1.0", "Y", "n", "abc", "a b", "10.0.0.1", "::1",
    "1:2:3:4:5:6:7:8", "=", "<<", "", "!!str 5", "!!int 5", "'x'", "-x", "a//b",
]  # fmt: skip

any_text = st.text(st.characters(exclude_categories=()), max_size=40)
surrogate_text = st.lists(
    st.one_of(st.characters(exclude_categories=()), st.integers(0xD800, 0xDFFF).map(chr)),
    max_size=12,
).map("".join)


@st.composite
def scalars(draw: st.DrawFn) -> str:
    """A YAML scalar as written: a tricky plain form, or any text plain, quoted or escaped."""
    text = draw(st.one_of(st.sampled_from(YAML_FORMS), any_text, surrogate_text))
    style = draw(st.sampled_from(["plain", "double", "single"]))
    if style == "double":
        return json.dumps(text)  # JSON strings are YAML double-quoted scalars
    if style == "single":
        return "'" + text.replace("'", "''") + "'"
    return text


FIELDS = [
    ("defaults", "username"),
    ("defaults", "port"),
    ("defaults", "tls"),
    ("defaults", "message_validity_sec"),
    ("top", "client_id_format"),
    ("cid", "client_id_format"),
    ("node", "address"),
    ("node", "region"),
    ("ssh", "user"),
    ("broker", "cert_file"),
    ("broker", "tls_dir"),
]


def spec_text(field: tuple[str, str], value: str) -> str:
    """A two-node spec with `value` written as-is at `field`."""
    where, key = field
    top: dict[str, str] = {key: value} if where == "top" else {}
    if where == "cid":  # placeholders first, so that ids are unique and may be accepted
        top = {key: json.dumps("{node}.{peer}" + value)}
    defaults = {"tls": "true", **({key: value} if where == "defaults" else {})}
    block = {key: value} if where in ("ssh", "broker") else {}
    node = {"address": "10.0.0.1", **({key: value} if where == "node" else {})}
    lines = ["site: s", *(f"{k}: {v}" for k, v in top.items()), "defaults:"]
    lines += [f"  {k}: {v}" for k, v in defaults.items()]
    if block:
        lines += [f"  {where}:", *(f"    {k}: {v}" for k, v in block.items())]
    lines += ["nodes:", "  - name: a", *(f"    {k}: {v}" for k, v in node.items())]
    lines.append("  - {name: b, address: 10.0.0.2}")
    return "\n".join(lines) + "\n"


def _accepts(text: str) -> object:
    try:
        return load_site_text(text, "prop.yaml", Path("."))
    except SpecError as exc:
        assert exc.diagnostics and all(d.line >= 1 and d.column >= 1 for d in exc.diagnostics)
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), scalars(), st.integers(1, 3))
def test_what_validate_accepts_compiles_and_lints_clean(
    field: tuple[str, str], value: str, version: int
) -> None:
    loaded = _accepts(spec_text(field, value))
    if loaded is None:
        return
    site = loaded.site  # type: ignore[attr-defined]
    for node in site.nodes:
        assert check_command_token(node.username) is None
        artifact = compile_node(site, node, Secret("Gener4tedPassw0rd"), version)
        errors = [d for d in lint_text(artifact.text, "x.lot") if d.severity == "error"]
        assert errors == [], (artifact.text, errors)
        assert check_node_path(node.broker.tls_dir) is None
        assert check_bundle_name(node.broker.cert_file) is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(any_text, surrogate_text, st.sampled_from(YAML_FORMS)))
def test_command_token_refusals_are_refused_by_validate_first(name: str) -> None:
    text = f"site: s\ndefaults:\n  username: {json.dumps(name)}\n{NODES}"
    loaded = _accepts(text)
    if check_command_token(name) is not None:
        assert loaded is None
    if loaded is not None:
        assert {n.username for n in loaded.site.nodes} == {name}  # type: ignore[attr-defined]

"""The lotdeploy.coreflux collection without a lab: it builds, `ansible-test sanity` passes,
its wire facts agree with lotdeploy's protocol module, its inventory plugin gives what
`lotdeploy inventory` gives, and its shared-settings reading matches the spec's `extends`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lotdeploy import protocol
from lotdeploy.ansible.collection import collection_dir, paho_zip
from lotdeploy.compiler.routes import canonical_route_text
from lotdeploy.secret import Secret
from tests.conftest import run_cli

COLLECTION = collection_dir()
BIN = Path(sys.executable).parent
sys.path.insert(0, str(COLLECTION.parents[2]))  # ansible_collections.lotdeploy.coreflux
from ansible_collections.lotdeploy.coreflux.plugins.module_utils import coreflux  # noqa: E402

#: ansible-test fetches its pip bootstrap from a host this machine cannot reach; this
#: stand-in makes the same venv with the venv's own ensurepip, then pip from the index.
GET_PIP = '''"""Offline stand-in for ansible-test's get-pip bootstrap (tests/test_collection.py)."""
import ensurepip
import os
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
ensurepip.bootstrap(upgrade=True)
os.environ.pop("PIP_CONFIG_FILE", None)  # ensurepip points it at os.devnull
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
'''


def test_the_collection_builds_clean(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            str(COLLECTION),
            "--output-path",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr.upper(), proc.stderr
    assert (tmp_path / "lotdeploy-coreflux-0.1.0.tar.gz").is_file()


def test_ansible_test_sanity_passes(tmp_path: Path) -> None:
    """Every sanity test ansible-test has, on the venv's Python, no docker. The venvs it
    makes are cached under ~/.ansible/test (the first run installs their requirements)."""
    cache = Path.home() / ".ansible" / "test" / "cache"
    bootstrap = cache / "get_pip_24_2.py"
    if not bootstrap.exists():
        cache.mkdir(parents=True, exist_ok=True)
        bootstrap.write_text(GET_PIP)
    work = tmp_path / "ansible_collections" / "lotdeploy" / "coreflux"
    shutil.copytree(COLLECTION, work, ignore=shutil.ignore_patterns("__pycache__", "output"))
    subprocess.run(["git", "init", "-q", str(work)], check=True, timeout=30)
    proc = subprocess.run(
        [
            str(BIN / "ansible-test"),
            "sanity",
            "--local",
            "--python",
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            "--color",
            "no",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    if proc.returncode != 0 and "does not have pip available" in proc.stdout + proc.stderr:
        pytest.skip("ansible-test could not make its venvs (no package index reachable)")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_the_wire_facts_agree_with_lotdeploys_protocol() -> None:
    assert coreflux.COMMAND_TOPIC == protocol.COMMAND_TOPIC
    assert coreflux.OUTPUT_TOPIC == protocol.OUTPUT_TOPIC
    assert coreflux.ROUTES_TOPIC == protocol.ROUTES_TOPIC
    assert coreflux.ROUTE_TYPE == protocol.ROUTE_TYPE
    assert coreflux.REPLY_TIMEOUT == protocol.REPLY_TIMEOUT_SEC
    assert set(coreflux.FORBIDDEN_VERBS) == {protocol.verb_key(v) for v in protocol.FORBIDDEN_VERBS}
    for verb in protocol.Verb:
        assert coreflux.pascal(verb.value) == verb.reply_name
    for doc in (
        protocol.build_reply(True, "listRoutes", "abc", "ok", [{"name": "lotdeploy_a"}]),
        protocol.build_reply(
            False, "addRoute", None, "Parse error", errors=[protocol.ReplyError("bad", 3, 7)]
        ),
    ):
        for form in ("json", "text"):
            payload = protocol.encode_reply(doc, form)
            ours = protocol.parse_reply(payload, str(doc["command"]))
            theirs = coreflux.parse_reply(payload, str(doc["command"]))
            assert theirs["success"] == ours.success and theirs["request_id"] == ours.request_id
            assert [e["line"] for e in theirs["errors"]] == [e.line for e in ours.errors]


names = st.from_regex(r"lotdeploy_[a-z][a-z0-9_]{0,10}", fullmatch=True)
words = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,20}", fullmatch=True).filter(
    lambda w: w not in ("true", "false")
)


@settings(max_examples=60, deadline=None)
@given(
    names, words, st.integers(1, 65535), words, words, words, st.integers(1, 10**6), st.booleans()
)
def test_the_modules_write_a_route_exactly_as_the_compiler(
    name: str,
    address: str,
    port: int,
    client_id: str,
    user: str,
    password: str,
    validity: int,
    tls: bool,
) -> None:
    settings_ = {
        "name": name,
        "broker_address": address,
        "broker_port": port,
        "client_id": client_id,
        "username": user,
        "message_validity_sec": validity,
        "use_tls": tls,
    }
    assert coreflux.route_text(name, address, port, client_id, user, password, validity, tls) == (
        canonical_route_text(settings_, Secret(password))
    )


def test_a_value_lot_cannot_hold_is_refused_without_echoing_it() -> None:
    for bad in ('pa"ss', "a//b", "-x", "line\nbreak", "it's"):
        with pytest.raises(coreflux.ChannelError) as info:
            coreflux.route_text("lotdeploy_a", "10.0.0.1", 1883, "a-to-b", "u", bad)
        assert bad not in str(info.value)
    with pytest.raises(coreflux.ChannelError):
        coreflux.check_route_name("ClusterPeer2")
    code = coreflux.route_text("lotdeploy_a", "10.0.0.1", 1883, "a-to-b", "u", "pw", 30)
    masked, password = coreflux.split_password("// header\n" + code.replace("    ", "  "))
    assert password == "pw" and "pw" not in masked.replace("lotdeploy", "")


def test_paho_ships_as_an_importable_zip(tmp_path: Path) -> None:
    archive = tmp_path / "paho-mqtt.zip"
    archive.write_bytes(paho_zip())
    assert paho_zip() == archive.read_bytes()  # deterministic
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {str(archive)!r}); import paho.mqtt.client as m; "
            "print(m.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "paho-mqtt.zip" in proc.stdout, proc.stderr


SITE = """site: plant-x
extends: ../shared.yaml
defaults:
  ssh: {user: ops, key: keys/id}
regions:
  us: {tls: false}
nodes:
  - {name: eu1, address: 10.1.0.1, region: eu, tags: [edge, blue-green]}
  - name: eu2
    address: 10.1.0.2
    region: eu
    ssh: {jump: 'bastion@198.18.9.1:2222', port: 2200}
    broker: {reload_command: '{{ lookup("pipe", "id") }}'}
  - {name: us1, address: 10.2.0.1, region: us}
"""
SHARED = """defaults:
  tls: true
  ssh: {known_hosts: known_hosts}
  broker: {admin_port: 11883, admin_user: admin, admin_password_env: ADMIN_PW}
ansible: {python_interpreter: /usr/bin/python3.11}
"""


def test_the_inventory_plugin_gives_what_lotdeploy_inventory_gives(tmp_path: Path) -> None:
    site_dir = tmp_path / "sites" / "x"
    site_dir.mkdir(parents=True)
    (tmp_path / "sites" / "shared.yaml").write_text(SHARED)
    (site_dir / "site.yaml").write_text(SITE)
    (site_dir / "keys").mkdir()
    (site_dir / "keys" / "id").write_text("not a key\n")
    (site_dir / "known_hosts").write_text("")
    static = tmp_path / "hosts.yml"
    proc = run_cli("inventory", site_dir / "site.yaml", "--out", static)
    assert proc.returncode == 0, proc.stderr
    source = tmp_path / "x.lotdeploy.yml"
    source.write_text("plugin: lotdeploy.coreflux.site\nsite: sites/x/site.yaml\n")
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTION.parents[2]),
        "ANSIBLE_INVENTORY_ENABLED": "lotdeploy.coreflux.site,yaml",
    }

    def listed(path: Path) -> dict[str, object]:
        out = subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", str(path), "--list"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=True,
        )
        doc: dict[str, object] = json.loads(out.stdout)
        return doc

    def plain(value: object) -> object:
        """ansible-core 2.19 lists every value an inventory plugin sets as untrusted data
        ({"__ansible_unsafe": ...}); a static inventory only the ones tagged !unsafe."""
        if isinstance(value, dict):
            if set(value) == {"__ansible_unsafe"}:
                return value["__ansible_unsafe"]
            return {k: plain(v) for k, v in value.items()}
        return value

    mine, theirs = plain(listed(source)), plain(listed(static))
    assert isinstance(mine, dict) and isinstance(theirs, dict)
    assert mine["_meta"] == theirs["_meta"]
    groups = {k: sorted(v.get("hosts", [])) for k, v in theirs.items() if isinstance(v, dict)}
    assert {
        k: sorted(v.get("hosts", []))
        for k, v in mine.items()
        if isinstance(v, dict) and k != "_meta"
    } == {k: v for k, v in groups.items() if k != "_meta"}
    eu2 = theirs["_meta"]["hostvars"]["eu2"]  # type: ignore[index]
    assert eu2["lotdeploy_reload_command"] == '{{ lookup("pipe", "id") }}'  # data, not run
    assert eu2["lotdeploy_tls"] is True and eu2["lotdeploy_admin_port"] == 11883

"""Every public type that can hold a secret shows "(sensitive)", never the value.

Built here one by one with a known value; repr, str, format, a log line and an exception
carrying the object are all checked. A new secret-holding type belongs in this list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lotdeploy.compiler import compile_node
from lotdeploy.lot import parse
from lotdeploy.render import Bundle, BundleFile
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site_text
from lotdeploy.workspace import SecretStore, Workspace

VALUE = "Sup3rSecretValue4Tests"
SITE = """
site: s
nodes:
  - {name: a, address: 10.0.0.1}
  - {name: b, address: 10.0.0.2}
"""


def _store(tmp_path: Path) -> SecretStore:
    store = SecretStore.open(tmp_path / "secrets.enc", Secret("p" * 12))
    store.set("cluster-password-v1", Secret(VALUE))
    return store


def _workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws", passphrase_provider=lambda creating: Secret(VALUE))
    ws.secrets().set("x", Secret(VALUE))
    return ws


def _artifact(tmp_path: Path) -> object:
    site = load_site_text(SITE, "site.yaml", tmp_path).site
    return compile_node(site, site.node("a"), Secret(VALUE))


def _route(tmp_path: Path) -> object:
    site = load_site_text(SITE, "site.yaml", tmp_path).site
    text = compile_node(site, site.node("a"), Secret(VALUE)).text
    return parse(text, "routes.lot")


def _lab_config(tmp_path: Path) -> object:
    from lotdeploy.lab.broker.server import LabConfig

    return LabConfig(bind="127.0.0.1", admin_password=Secret(VALUE))


def _broker_client(tmp_path: Path) -> object:
    from lotdeploy.broker.session import BrokerClient

    return BrokerClient("a", "127.0.0.1", 1883, "root", Secret(VALUE))


def _reply_error(tmp_path: Path) -> object:
    from lotdeploy.protocol import parse_reply

    Secret(VALUE)  # known to the process: a broker echoing it back is scrubbed
    keep = Secret(VALUE)
    reply = parse_reply(
        f'{{"success": false, "errors": [{{"message": "bad {VALUE}"}}]}}', "addUser"
    )
    return (keep, reply)


BUILDERS: dict[str, Callable[[Path], object]] = {
    "Secret": lambda tmp: Secret(VALUE),
    "SecretStore": _store,
    "Workspace": _workspace,
    "NodeArtifact": _artifact,
    "parsed routes": _route,
    "BundleFile": lambda tmp: BundleFile("routes.lot", Secret(VALUE), 0o600),
    "Bundle": lambda tmp: Bundle("a", (BundleFile("server.key", Secret(VALUE), 0o600),), "{}"),
    "LabConfig": _lab_config,
    "BrokerClient": _broker_client,
    "broker Reply": _reply_error,
}


def _shown(obj: object) -> Iterator[str]:
    yield repr(obj)
    yield str(obj)
    yield f"{obj}"
    yield format(obj, "")
    yield str(Exception(obj))
    yield repr(Exception(obj))
    yield str([obj, {"k": obj}])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_no_representation_reveals_the_value(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    obj = BUILDERS[name](tmp_path)
    for text in _shown(obj):
        assert VALUE not in text, f"{name} shows its secret: {text[:200]}"
    with caplog.at_level(logging.DEBUG, logger="lotdeploy.test"):
        logging.getLogger("lotdeploy.test").debug("object %s %r", obj, obj)
    assert VALUE not in caplog.text

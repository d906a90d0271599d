"""Cluster credential: generation, phased rotation that never refuses a link, redaction."""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from lotdeploy.cli.pki import certs, creds
from lotdeploy.credentials import (
    PASSWORD_ALPHABET,
    PASSWORD_LENGTH,
    CredentialState,
    advance_creds_rotation,
    broker_users,
    cluster_password,
    cluster_username,
    generate_password,
    password_secret_name,
    retired_users,
)
from lotdeploy.errors import LotdeployError, PkiError
from lotdeploy.model import Site
from lotdeploy.pki.bundle import ensure_pki, node_tls_files
from lotdeploy.plan.credentials import credential_changes
from lotdeploy.plan.pki import pki_changes
from lotdeploy.rotation import current_phase, load_rotation, mark_phase_applied
from lotdeploy.secret import SENSITIVE, Secret, dumps
from lotdeploy.workspace import Workspace
from tests.pki_helpers import (
    NOW,
    PASSPHRASE,
    load,
    no_passphrase_workspace,
    workspace_for,
    write_site,
)

NODES = ["a", "b", "c"]


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    return write_site(tmp_path)


def test_generate_password() -> None:
    one, two = generate_password(), generate_password()
    assert one != two
    assert len(one.reveal()) == PASSWORD_LENGTH
    assert set(one.reveal()) <= set(PASSWORD_ALPHABET)
    assert str(one) == SENSITIVE and SENSITIVE in repr(one)


def test_cluster_password_is_stable(site_file: Path) -> None:
    first = cluster_password(workspace_for(site_file))
    assert cluster_password(workspace_for(site_file)) == first
    assert CredentialState.load(workspace_for(site_file)).generated


class Cluster:
    """What apply would do with the seams: each broker's accepted users, each route's login."""

    def __init__(self, site: Site, site_file: Path) -> None:
        self.site = site
        self.site_file = site_file
        self.accepted: dict[str, dict[str, Secret]] = {}
        self.route_login: dict[str, tuple[str, Secret]] = {}
        for node in NODES:
            self.apply(node, mark=False)

    def apply(self, node: str, mark: bool = True) -> None:
        ws = workspace_for(self.site_file)
        bases = [n.username for n in self.site.nodes]
        users = self.accepted.setdefault(node, {})
        users.update(broker_users(ws, bases))  # -addUser
        for gone in retired_users(ws, bases):  # -removeUser
            users.pop(gone, None)
        me = self.site.node(node)
        self.route_login[node] = (cluster_username(ws, me.username), cluster_password(ws))
        if mark:
            mark_phase_applied(ws, "creds", node)

    def assert_no_link_refused(self) -> None:
        for source in NODES:
            user, password = self.route_login[source]
            for target in NODES:
                if target != source:
                    assert self.accepted[target].get(user) == password, (source, target)


def test_rotation_never_refuses_a_link(site_file: Path) -> None:
    """Roll each phase out node by node in random order; after every single node step every
    route's login is still accepted by every target broker."""
    site = load(site_file)
    cluster = Cluster(site, site_file)
    cluster.assert_no_link_refused()
    old_password = cluster_password(workspace_for(site_file))
    rng = random.Random(7)
    for phase in (1, 2, 3):
        rotation = advance_creds_rotation(site, workspace_for(site_file), NOW)
        assert rotation is not None and rotation.phase == phase
        order = NODES[:]
        rng.shuffle(order)
        for i, node in enumerate(order):
            if i == 0:
                with pytest.raises(PkiError, match=f"credential rotation phase {phase} is not"):
                    advance_creds_rotation(site, workspace_for(site_file), NOW)
            cluster.apply(node)
            cluster.assert_no_link_refused()
    assert advance_creds_rotation(site, workspace_for(site_file), NOW) is None
    ws = workspace_for(site_file)
    assert cluster_username(ws, "cluster") == "cluster_v2"
    assert cluster_password(ws) != old_password
    assert set(cluster.accepted["a"]) == {"cluster_v2"}
    assert password_secret_name(1) not in ws.secrets().names()
    assert load_rotation(ws, "creds") is None


def test_rotation_plan_changes_need_no_passphrase(site_file: Path) -> None:
    site = load(site_file)
    cluster_password(workspace_for(site_file))
    ws = no_passphrase_workspace(site_file)
    assert credential_changes(site, ws) == ([], [])
    advance_creds_rotation(site, workspace_for(site_file), NOW)
    changes, _ = credential_changes(site, ws)
    assert [(c.action, c.node, c.name) for c in changes] == [
        ("create", n, "user cluster_v2") for n in NODES
    ]
    assert all(c.reason.startswith("credential rotation phase 1") for c in changes)
    assert cluster_username(ws, "cluster") == "cluster"  # routes unchanged in phase 1
    for node in NODES:
        mark_phase_applied(ws, "creds", node)
    assert "creds rotate" in credential_changes(site, ws)[1][0]
    advance_creds_rotation(site, workspace_for(site_file), NOW)
    changes, _ = credential_changes(site, ws)
    assert {(c.action, c.name) for c in changes} == {("update", "route credentials")}
    assert changes[0].attrs[0].before == "cluster" and changes[0].attrs[0].after == "cluster_v2"
    assert current_phase(ws, "creds") == 2
    for node in NODES:
        mark_phase_applied(ws, "creds", node, 2)
    advance_creds_rotation(site, workspace_for(site_file), NOW)
    changes, _ = credential_changes(site, ws)
    assert {(c.action, c.name) for c in changes} == {("delete", "user cluster")}
    # pki_changes carries the credential changes too (and TLS ones only for TLS sites)
    assert [c for c in pki_changes(site, ws, NOW)[0] if c.kind == "credential"] == changes


def test_damaged_credential_state(site_file: Path) -> None:
    ws = workspace_for(site_file)
    ws.ensure()
    CredentialState.path(ws).write_text("[]")
    with pytest.raises(LotdeployError, match="state is damaged"):
        cluster_username(ws, "cluster")


def test_full_run_never_shows_a_secret(
    site_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every command, plan, JSON output, log line and error of a full lifecycle, grepped for
    every secret value this workspace ever held."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("LOTDEPLOY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setattr("lotdeploy.cli.pki.utcnow", lambda: NOW)
    runner = CliRunner()
    outputs: list[str] = []
    secrets: set[str] = {PASSPHRASE}
    site = load(site_file)

    def harvest() -> None:
        ws = workspace_for(site_file)
        store = ws.secrets()
        for name in store.names():
            value = store.get(name)
            assert value is not None
            secrets.add(value.reveal())

    def run(group: object, *args: str, env: dict[str, str] | None = None) -> None:
        result = runner.invoke(group, [*args, str(site_file)], env=env)  # type: ignore[arg-type]
        outputs.append(result.output + result.stderr)
        if result.exception is not None:
            assert isinstance(result.exception, (LotdeployError, SystemExit)), result.exception
            outputs.append(str(result.exception) + repr(result.exception))

    def plan() -> None:
        changes, warnings = pki_changes(site, no_passphrase_workspace(site_file), NOW)
        outputs.append(dumps([asdict(c) for c in changes]) + repr(changes) + "\n".join(warnings))

    def apply_everywhere(kind: str) -> None:
        ws = workspace_for(site_file)
        ensure_pki(site, ws, NOW)
        for node in site.nodes:
            files = node_tls_files(site, ws, node, NOW)
            outputs.append(repr(files) + str(files))
            mark_phase_applied(ws, kind, node.name)  # type: ignore[arg-type]

    plan()
    run(certs, "init")
    run(certs, "init")
    run(certs, "list")
    run(certs, "list", "--json")
    run(certs, "rotate")
    run(certs, "rotate", "--node", "b")
    cluster_password(workspace_for(site_file))
    for _ in range(4):
        plan()
        run(certs, "rotate-ca")
        run(certs, "rotate-ca")  # refused: not applied yet
        run(certs, "rotate-ca", "--status")
        harvest()
        apply_everywhere("ca")
    for _ in range(4):
        plan()
        run(creds, "rotate")
        run(creds, "rotate")  # refused
        run(creds, "rotate", "--status")
        harvest()
        apply_everywhere("creds")
    run(certs, "rotate", env={"LOTDEPLOY_PASSPHRASE": "a-wrong-passphrase-123"})
    secrets.add("a-wrong-passphrase-123")
    run(certs, "list", "--json")
    harvest()
    outputs.extend(r.getMessage() for r in caplog.records)
    workspace = Workspace.for_site(site_file)
    for path in workspace.root.rglob("*"):
        if path.is_file() and path != workspace.secrets_path:
            outputs.append(path.read_text())

    text = "\n".join(outputs)
    assert "CA rotation finished" in text and "credential rotation finished" in text
    assert "is not applied on" in text and "wrong passphrase" in text
    for expected in (
        "site CA created",
        "new certificate serial",
        "phase 3 of 3",
        '"days_left"',
        "routes now use user cluster_v2",
        "BEGIN CERTIFICATE",
        "server.key",
    ):
        assert expected in text, expected
    assert len(secrets) > 10
    for value in secrets:
        probes = [value]
        if "PRIVATE KEY" in value:  # also any line of the base64 body
            probes = [line for line in value.splitlines() if len(line) > 20 and "---" not in line]
        for probe in probes:
            assert probe not in text, "a secret value appeared in the output"

"""The broker secret store and least rights on a root lab (issue 21 item 6): with `password_source: auto`
and a broker doctor found a store on, routes read the cluster password with GET SECRET,
the code the broker republishes on $SYS holds no password, the links connect, drift is
clean, a secret removed by hand is drift that apply sets again, and no output carries the
password. A broker without a store falls back (auto) or
fails the node (secret-store). One small lab per case, torn down and proven gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lotdeploy.apply.activate import admin_session
from lotdeploy.broker.sync import SyncBrokerClient
from lotdeploy.errors import BrokerError
from lotdeploy.protocol import USER_RIGHT_FLAGS
from lotdeploy.routesecret import broker_secret_name
from lotdeploy.secret import Secret
from tests.lab_fixtures import skip_unless_root
from tests.test_apply import lab_up

pytestmark = pytest.mark.root


def test_routes_read_the_password_from_the_store_and_sys_never_shows_it(tmp_path: Path) -> None:
    skip_unless_root()
    with lab_up(tmp_path, "--nodes", "2", "--dialect", "node2=no-secrets") as lab:
        # before doctor nothing is known: auto says so and keeps the password inline
        plan = lab.cli("plan", lab.site_file)
        assert "password_source auto: not known yet" in plan.stdout + plan.stderr
        # a site that requires the store fails on the broker that has none, naming it
        required = lab.variant("required.yaml", password_source="secret-store")
        lab.cli("doctor", lab.site_file)
        refused = lab.cli("plan", required, expect=1)
        assert "node node2: password_source is secret-store" in refused.stderr
        # auto: node1 (a store) reads GET SECRET, node2 (none) falls back to inline
        plan = lab.cli("plan", lab.site_file)
        secret = broker_secret_name(1)
        assert f"+ secret {secret}" in plan.stdout
        assert "not known yet" not in plan.stdout + plan.stderr
        lab.cli("apply", lab.site_file, "--auto-approve")
        lab.wait_mesh()
        password = lab.workspace().secrets().get("cluster-password-v1")
        assert password is not None
        site = lab.site()
        codes = {}
        for name in lab.nodes:
            with lab.transport(name) as t, admin_session(site, site.node(name), t) as client:
                peer = next(p for p in lab.nodes if p != name)
                codes[name] = client.read_route_code(f"lotdeploy_{peer}")
                if name == "node1":
                    assert client.list_secrets() == [secret]
        assert codes["node1"] and f'GET SECRET "{secret}"' in codes["node1"]
        assert password.reveal() not in codes["node1"]  # the point: $SYS shows no password
        assert codes["node2"] and password.reveal() in codes["node2"]  # inline (no store)
        assert lab.state().nodes["node1"].routes["lotdeploy_node2"]["password_secret"] == secret
        lab.cli("drift", lab.site_file)
        assert "No changes" in lab.cli("plan", lab.site_file).stdout
        # the secret removed from node1's store by hand: drift, and apply sets it again
        with lab.transport("node1") as t, admin_session(site, site.node("node1"), t) as client:
            client.command("removeSecret", secret)
            assert client.list_secrets() == []
        drift = lab.cli("drift", lab.site_file, expect=2)
        assert f"secret {secret}: missing from the broker's secret store" in drift.stdout
        plan = lab.cli("plan", "--refresh", lab.site_file)
        assert f"+ secret {secret}" in plan.stdout and "set again" in plan.stdout, plan.stdout
        healed = lab.cli("apply", lab.site_file, "--auto-approve")
        assert f"secret {secret} set" in healed.stdout, healed.stdout
        with lab.transport("node1") as t, admin_session(site, site.node("node1"), t) as client:
            assert client.list_secrets() == [secret]
        lab.cli("drift", lab.site_file)
        assert "No changes" in lab.cli("apply", lab.site_file, "--auto-approve").stdout
        # inline on purpose: the route goes back to carrying the password
        inline = lab.variant("inline.yaml", password_source="inline")
        changed = lab.cli("apply", inline, "--auto-approve")
        assert "node1" in changed.stdout
        lab.wait_mesh()
        lab.cli("drift", inline)
        leaks = [i for i, text in enumerate(lab.outputs) if password.reveal() in text]
        assert not leaks, f"the cluster password in outputs {leaks}"


def _reads_sys(lab: Any, node: str, user: str, password: Secret) -> bool:
    """Whether `user` may read `$SYS` on `node`'s broker (its session subscribes to the
    command channel's output topic at connect, which the broker refuses without rights)."""
    site = lab.site()
    spec = site.node(node)
    with lab.transport(node) as t, t.forward(spec.broker.admin_host, spec.broker.admin_port) as p:
        client = SyncBrokerClient(node, "127.0.0.1", p, user, password, request_ids="auto")
        try:
            client.connect()
        except BrokerError as exc:
            assert "refused" in str(exc), exc
            return False
        client.close()
        return True


def _flags(lab: Any, node: str, user: str) -> dict[str, bool]:
    site = lab.site()
    with lab.transport(node) as t, admin_session(site, site.node(node), t) as client:
        data = client.command("listUserGroups", user).data
    return dict(data["settings"])


def test_lotdeploys_users_hold_no_rights_and_a_right_given_by_hand_is_taken_back(
    tmp_path: Path,
) -> None:
    """The named rights model: apply and verify set every flag of the cluster and probe
    users to false; a flag given by hand (here AllowedSystemConfiguration, which lets a user
    read route code on $SYS) is drift that the next apply takes away."""
    skip_unless_root()
    dialect = ["--dialect", "node1=named-rights", "--dialect", "node2=named-rights"]
    with lab_up(tmp_path, "--nodes", "2", *dialect) as lab:
        lab.cli("doctor", lab.site_file)
        lab.cli("apply", lab.site_file, "--auto-approve")
        lab.wait_mesh()
        lab.cli("verify", lab.site_file)
        (user,) = lab.state().nodes["node1"].users
        password = lab.workspace().secrets().get("cluster-password-v1")
        assert password is not None
        off = dict.fromkeys(USER_RIGHT_FLAGS, False)
        assert _flags(lab, "node1", user) == off
        assert _flags(lab, "node1", "lotdeploy_probe") == off
        assert not _reads_sys(lab, "node1", user, password)
        # a hand gives the cluster user system rights: it can now read every route's code
        site = lab.site()
        with lab.transport("node1") as t, admin_session(site, site.node("node1"), t) as client:
            client.command("changeUserSettings", f"{user} AllowedSystemConfiguration true")
        assert _reads_sys(lab, "node1", user, password)
        drift = lab.cli("drift", lab.site_file, expect=2)
        assert f"user {user}: holds broker rights it does not need" in drift.stdout
        assert "AllowedSystemConfiguration" in drift.stdout
        plan = lab.cli("plan", "--refresh", lab.site_file)
        assert f"~ user {user}" in plan.stdout, plan.stdout
        lab.cli("apply", lab.site_file, "--auto-approve")
        assert _flags(lab, "node1", user) == off
        assert not _reads_sys(lab, "node1", user, password)
        lab.cli("drift", lab.site_file)
        leaks = [i for i, text in enumerate(lab.outputs) if password.reveal() in text]
        assert not leaks, f"the cluster password in outputs {leaks}"

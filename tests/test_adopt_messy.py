"""A hand-made cluster with every problem `lotdeploy audit` looks for, each planted once
(`lab up --fixture messy`, lotdeploy.lab.fixtures.MESSY_PROBLEMS), on a root lab: the audit
names every one and nothing else; the first plan after an import shows exactly what an apply
can put right; the apply does, and what is left is what only a take-over (plain text, the
typed password) or the broker's own rights (`$SYS` readable) can change.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest

from lotdeploy.lab.fixtures import MESSY_PROBLEMS, OTHER_PASSWORD, VENDOR_PASSWORD
from lotdeploy.state import StateStore
from tests.adopt_lab import AdoptLab, allowed_files, fixture_lab, leaks
from tests.conftest import TEST_PASSPHRASE
from tests.lab_fixtures import skip_unless_root

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdoptLab]:
    skip_unless_root()
    with fixture_lab(tmp_path_factory.mktemp("messy"), "messy") as made:
        yield made


def test_the_audit_names_every_planted_problem_and_nothing_else(lab: AdoptLab) -> None:
    findings = lab.audit(lab.site_file)
    kinds = Counter(f["kind"] for f in findings)
    assert set(kinds) == set(MESSY_PROBLEMS)
    where = {(f["kind"], f["node"], f["route"]) for f in findings}
    assert where == {
        ("peer-missing", "node2", None),
        ("one-way", "node3", None),
        ("duplicate-route", "node1", "ClusterPeer2"),
        ("duplicate-client-id", "node1", "ClusterPeer3"),
        ("not-member", "node3", "OldPeer"),
        ("plain-text", "node1", "ClusterPeer2"),
        ("plain-text", "node1", "ClusterPeer2b"),
        ("plain-text", "node1", "ClusterPeer3"),
        ("plain-text", "node2", "ClusterPeer1"),
        ("mixed-credentials", "node2", "ClusterPeer1"),
        ("validity-asymmetric", "node1", "ClusterPeer2"),
        ("validity-unset", "node1", "ClusterPeer3"),
        ("not-connected", "node1", "ClusterPeer3"),
        ("sys-readable", "node1", None),
        ("weak-password", "node1", "ClusterPeer2"),
        ("weak-password", "node1", "ClusterPeer2b"),
        ("weak-password", "node1", "ClusterPeer3"),
        ("weak-password", "node2", "ClusterPeer1"),
    }
    assert len(findings) == len(where)
    refused = next(f for f in findings if f["kind"] == "not-connected")
    assert "bad user name or password" in refused["text"]


def test_import_plans_the_findings_and_apply_fixes_them(lab: AdoptLab) -> None:
    lab.cli("import", lab.site_file, "--out", lab.plant)
    plan = lab.cli("plan", lab.plant, "--refresh").stdout
    lines = [line.strip() for line in plan.splitlines() if re.match(r"\s+[-+~] ", line)]
    shown = [line.split("  ")[0] for line in lines]
    assert shown == [
        "~ route ClusterPeer2",  # validity-asymmetric
        "- route ClusterPeer2b",  # duplicate-route
        "~ route ClusterPeer3",  # validity-unset
        "~ route ClusterPeer1",  # duplicate-client-id, mixed-credentials
        "+ route lotdeploy_node3",  # peer-missing (node2 -> node3)
        "- route OldPeer",  # not-member
        "+ route lotdeploy_node1",  # one-way (node3 -> node1)
        "+ route lotdeploy_node2",  # peer-missing (node3 -> node2)
        "+ user cluster",  # not-connected: node3 refused the cluster user
    ], plan
    assert lines[0] == "~ route ClusterPeer2  MESSAGE_VALIDITY_SEC 30 -> 60"
    assert lines[1].endswith(
        "(a second route to node2 beside ClusterPeer2: every message went twice)"
    )
    assert lines[2] == "~ route ClusterPeer3  MESSAGE_VALIDITY_SEC (unset) -> 30"
    assert lines[3] == (
        "~ route ClusterPeer1  CLIENT_ID Node1-to-Node3 -> node2-to-node1  USERNAME cluster2 "
        "-> cluster  PASSWORD (sensitive) -> (sensitive) (rotated)"
    )
    assert "no node of the cluster" in lines[5]

    lab.cli("apply", lab.plant, "--auto-approve")
    left = lab.audit(lab.plant)
    assert {f["kind"] for f in left} == {"plain-text", "weak-password", "sys-readable"}
    assert len([f for f in left if f["kind"] == "plain-text"]) == 6  # now a full mesh
    lab.cli("drift", lab.plant, env={"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE})
    lab.cli("plan", lab.plant, "--refresh", "--detailed-exitcode")
    state = StateStore(lab.workspace()).read()
    assert set(state.nodes["node1"].routes) == {"ClusterPeer2", "ClusterPeer3"}
    assert set(state.nodes["node3"].routes) == {"lotdeploy_node1", "lotdeploy_node2"}


def test_no_secret_in_any_output_or_file(lab: AdoptLab) -> None:
    values = {
        "the vendor's password": VENDOR_PASSWORD,
        "the other password": OTHER_PASSWORD,
        "admin password": lab.admin_password(),
        "passphrase": TEST_PASSPHRASE,
    }
    found = leaks(lab, values, allowed_files(lab))
    assert not found, found

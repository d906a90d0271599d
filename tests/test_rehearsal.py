"""Issue 21 on a root lab, through the real CLI: verify and status show the cluster monitoring
topics of each dialect (and the Prometheus file carries them), `verify --failover` rehearses
a failover, `verify --load` probes every link under load, `lab kill` / `lab revive`, and the
exercises refuse a site that is not a lab unless it is named. Nothing secret in any output.

One lab for the module: eu1, eu2 publish `$SYS/broker/cluster/*` (dialect cluster-seed), us1
`$SYS/Coreflux/Cluster/*` (cluster-coreflux). Every case leaves it as it found it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lotdeploy.lab import labstate
from lotdeploy.verify.run import PROBE_SECRET
from tests.lab_fixtures import lab_cli, skip_unless_root
from tests.test_apply import ENV, Lab, lab_up

pytestmark = pytest.mark.root

OUTPUTS: list[str] = []
NODES = ["eu1", "eu2", "us1"]
FAST = ("--timeout", "3", "--probes", "3")


@pytest.fixture(scope="module")
def rlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    base = tmp_path_factory.mktemp("rehearsallab")
    with lab_up(
        base,
        "--regions",
        "eu:2,us:1",
        "--dialect",
        "eu=cluster-seed",
        "--dialect",
        "us=cluster-coreflux",
    ) as lab:
        lab.outputs = OUTPUTS
        lab.cli("apply", lab.site_file, "--auto-approve")
        lab.wait_mesh(30)
        yield lab


def verify_json(lab: Lab, *args: str | Path, expect: int | None = 0) -> dict[str, Any]:
    proc = lab.cli("verify", lab.site_file, "--json", *FAST, *args, expect=expect)
    return dict(json.loads(proc.stdout))


def test_verify_and_status_show_each_dialects_cluster_topics(rlab: Lab, tmp_path: Path) -> None:
    prom = tmp_path / "m.prom"
    doc = verify_json(rlab, "--prometheus", str(prom))
    assert doc["ok"]
    monitoring = doc["monitoring"]
    assert sorted(monitoring["eu1"]) == [
        "$SYS/broker/cluster/nodes",
        "$SYS/broker/cluster/status",
        "$SYS/broker/cluster/sync",
    ]
    assert json.loads(monitoring["eu2"]["$SYS/broker/cluster/status"])["connected"] == 2
    assert monitoring["us1"]["$SYS/Coreflux/Cluster/Role"] == "Member"
    text = prom.read_text()
    assert 'lotdeploy_verify_broker_cluster_topics{site="lab",node="us1"} 6' in text
    assert (
        'lotdeploy_verify_broker_cluster_value{site="lab",node="eu1",'
        'topic="$SYS/broker/cluster/status",field="connected"} 2'
    ) in text
    shown = rlab.cli("verify", rlab.site_file, *FAST).stdout
    assert "Cluster monitoring topics, as each broker publishes them" in shown
    status = rlab.cli("status", rlab.site_file).stdout
    assert "us1: $SYS/Coreflux/Cluster/Status: " in status
    assert "eu1: $SYS/broker/cluster/status: " in status


def test_failover_rehearsal_on_the_lab(rlab: Lab, tmp_path: Path) -> None:
    prom = tmp_path / "f.prom"
    doc = verify_json(rlab, "--failover", "us1", "--outage", "2", "--prometheus", str(prom))
    assert doc["ok"], [c for c in doc["checks"] if c["status"] != "pass"]
    rehearsed = {c["kind"]: c for c in doc["checks"] if c["kind"].startswith("failover")}
    assert set(rehearsed) == {
        "failover-outage",
        "failover-clients",
        "failover-catch-up",
        "failover-rejoin",
    }
    assert all(c["subject"] == "us1" and c["status"] == "pass" for c in rehearsed.values())
    assert (
        "reached every remaining node (eu1, eu2) exactly once"
        in (rehearsed["failover-outage"]["reason"])
    )
    assert 'lotdeploy_verify_exercise_ok{site="lab",node="us1",check="failover-rejoin"} 1' in (
        prom.read_text()
    )
    # the lab is whole again: the broker runs, every route is connected
    state = labstate.require(rlab.dir)
    assert all(labstate_alive(state, n) for n in NODES)
    rlab.wait_mesh(20)


def labstate_alive(state: labstate.LabState, node: str) -> bool:
    from lotdeploy.lab import hosts

    return hosts.alive(state, f"broker:{node}")


def test_load_probe_on_the_lab(rlab: Lab, tmp_path: Path) -> None:
    prom = tmp_path / "l.prom"
    doc = verify_json(rlab, "--load", "100", "--for", "2", "--prometheus", str(prom))
    loads = [c for c in doc["checks"] if c["kind"] == "load"]
    assert len(loads) == 6 and all(c["status"] == "pass" for c in loads), loads
    for check in loads:
        assert check["sent"] == check["received"] == 200 and check["loss"] == 0
        assert 70 <= check["throughput"] <= 130 and check["rate"] == 100
    text = prom.read_text()
    assert "lotdeploy_verify_load_throughput_per_second{" in text
    assert 'quantile="0.95"' in text


def test_lab_kill_and_revive(rlab: Lab) -> None:
    killed = lab_cli(rlab.dir, "kill", "eu2")
    assert killed.returncode == 0 and "eu2: lab broker (pid" in killed.stdout
    status = lab_cli(rlab.dir, "status").stdout
    assert [ln.split()[4] for ln in status.splitlines() if ln.startswith("eu2")] == ["down"]
    again = lab_cli(rlab.dir, "kill", "eu2")
    assert again.returncode == 1 and "is not running" in again.stderr
    revived = lab_cli(rlab.dir, "revive", "eu2")
    assert revived.returncode == 0, revived.stderr
    OUTPUTS.extend([killed.stdout, killed.stderr, revived.stdout, revived.stderr])
    deadline = time.monotonic() + 20
    while not verify_json(rlab, expect=None)["ok"]:
        assert time.monotonic() < deadline, "the lab did not heal after revive"
        time.sleep(1)


def test_exercises_refuse_a_site_that_is_not_a_lab(rlab: Lab, tmp_path: Path) -> None:
    elsewhere = tmp_path / "copy" / "site.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(rlab.site_file.read_text())
    for args, words in (
        (("--failover", "us1"), "runs on its own only on a lab"),
        (("--load", "50"), "runs on its own only on a lab or a loopback site"),
        (("--failover", "us1", "--confirm-site", "prod"), "does not name this site"),
        (("--failover", "nope"), "no node 'nope' in the site"),
        (("--failover", "us1", "--limit", "eu1"), "need every node"),
    ):
        proc = rlab.cli("verify", elsewhere, *args, expect=None)
        assert proc.returncode != 0 and words in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_no_secret_in_any_output(rlab: Lab) -> None:
    store = rlab.workspace().secrets()
    secrets = [v.reveal() for v in (store.get(n) for n in store.names()) if v is not None]
    secrets.append((rlab.dir / "secrets" / "admin-password").read_text().strip())
    secrets.append(ENV["LOTDEPLOY_PASSPHRASE"])
    assert store.get(PROBE_SECRET) is not None
    for secret in secrets:
        for text in OUTPUTS:
            assert secret not in text

"""Fleets, the exported whole job and `lotdeploy watch`, on three root labs (a fleet of sites
a, b, c, each eu1 + us1). Real sshd, real lab brokers, real ansible-playbook, the real CLI.

Order matters and is kept by the module: site c is deployed first by the export alone
(plain `ansible-playbook`, lotdeploy absent from PATH and from the Python path) and compared
with what `lotdeploy apply` then makes of it; the fleet commands run next; watch last. The
last case greps every output, event, metric and exported file for every secret.
"""

from __future__ import annotations

import json
import os
import signal
import site as pysite
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lotdeploy.apply.activate import admin_session
from lotdeploy.lab.hosts import Layout
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.transport.base import opened
from lotdeploy.transport.ssh import SshTransport
from lotdeploy.workspace import Workspace
from tests.conftest import TEST_PASSPHRASE, run_cli
from tests.lab_fixtures import lab_cli, leftovers, skip_unless_root

pytestmark = pytest.mark.root

ENV = {"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE}
SITES = ("a", "b", "c")
BIN = Path(sys.executable).parent
OUTPUTS: list[str] = []


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    skip_unless_root()
    root = tmp_path_factory.mktemp("fleet") / "plants"
    root.mkdir()
    try:
        for name in SITES:
            up = lab_cli(root / name, "up", "--regions", "eu:1,us:1")
            assert up.returncode == 0, up.stderr
        yield root
    finally:
        for name in SITES:
            lab_cli(root / name, "down")
        deadline = time.monotonic() + 10
        left = [x for n in SITES for x in leftovers(root / n) if not x.startswith("files")]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [x for n in SITES for x in leftovers(root / n) if not x.startswith("files")]
        assert not left, left


def cli(*args: str | Path, expect: int | None = 0, cwd: Path | None = None) -> Any:
    proc = run_cli(*args, env=ENV, cwd=cwd)
    OUTPUTS.extend([proc.stdout, proc.stderr])
    if expect is not None:
        assert proc.returncode == expect, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def site_of(fleet: Path, name: str) -> Any:
    return load_site(fleet / name / "site.yaml").site


def workspace_of(fleet: Path, name: str) -> Workspace:
    return Workspace.for_site(
        fleet / name / "site.yaml", passphrase_provider=lambda _: Secret(TEST_PASSPHRASE)
    )


def broker_state(fleet: Path, name: str) -> dict[str, Any]:
    """What each node of the site runs: current release, TLS digests, routes (listing and
    code), and whether the cluster user's login is accepted."""
    from lotdeploy.credentials import broker_users

    site = site_of(fleet, name)
    users = broker_users(workspace_of(fleet, name), ["cluster"])
    found: dict[str, Any] = {}
    for node in site.nodes:
        with opened(SshTransport.for_node(node, base_dir=site.base_dir)) as transport:
            files = transport.run(
                "readlink /opt/lotdeploy/current; sha256sum /opt/coreflux/tls/* | cut -c1-64"
            ).stdout.split()
            with admin_session(site, node, transport) as client:
                routes = sorted(str(r["name"]) for r in client.list_routes())
                codes = client.read_route_codes(routes, timeout=5)
                logins = client.check_logins(users)
        found[node.name] = {"files": files, "routes": routes, "codes": codes, "logins": logins}
    return found


def remove_route(fleet: Path, name: str, node_name: str, route: str) -> None:
    site = site_of(fleet, name)
    node = site.node(node_name)
    with (
        opened(SshTransport.for_node(node, base_dir=site.base_dir)) as transport,
        admin_session(site, node, transport) as client,
    ):
        client.remove_route(route)


def without_lotdeploy(tmp: Path) -> tuple[list[str], dict[str, str]]:
    """How to run ansible-playbook with lotdeploy absent from PATH and from the Python path:
    the venv's Python without its site (`-S`), the venv's packages through a directory of
    links that leaves lotdeploy (and the editable install's .pth hooks) out."""
    farm = tmp / "site-packages"
    farm.mkdir()
    for packages in pysite.getsitepackages():
        for entry in Path(packages).iterdir():
            if "lotdeploy" in entry.name.lower() or entry.suffix == ".pth":
                continue
            if not (farm / entry.name).exists():
                (farm / entry.name).symlink_to(entry)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(farm),
        "HOME": os.environ.get("HOME", "/root"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "LANG": "C.UTF-8",
    }
    return [sys.executable, "-S", str(BIN / "ansible-playbook")], env


def exactly_once(fleet: Path, name: str, count: int = 20) -> Counter[tuple[str, str, int]]:
    """An independent client (paho) on every node's broker: each node publishes `count`
    messages; how often each (source, target, seq) arrived."""
    import paho.mqtt.client as mqtt

    from lotdeploy.verify.run import probe_password

    site = site_of(fleet, name)
    password = probe_password(workspace_of(fleet, name)).reveal()
    run = f"parity/{time.monotonic_ns()}"
    seen: Counter[tuple[str, str, int]] = Counter()
    lock = threading.Lock()
    clients = {}
    for node in site.nodes:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"parity-{node.name}")
        client.username_pw_set("lotdeploy_probe", password)
        context = ssl.create_default_context(
            cafile=str(Layout(fleet / name).node_dir(node.name) / "tls" / "ca.crt")
        )
        client.tls_set_context(context)
        subscribed = threading.Event()

        def on_message(c: Any, u: Any, msg: Any, target: str = node.name) -> None:
            _, _, source, seq = msg.topic.split("/")
            with lock:
                seen[(source, target, int(seq))] += 1

        client.on_message = on_message
        client.on_subscribe = lambda *a, e=subscribed: e.set()
        client.connect(node.address, node.port, keepalive=30)
        client.loop_start()
        client.subscribe(f"{run}/#", qos=1)
        assert subscribed.wait(10)
        clients[node.name] = client
    try:
        for source, client in clients.items():
            for seq in range(count):
                client.publish(f"{run}/{source}/{seq}", b"x", qos=1).wait_for_publish(10)
        want = len(clients) * len(clients) * count
        deadline = time.monotonic() + 15
        while sum(seen.values()) < want and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate would come right behind
    finally:
        for client in clients.values():
            client.disconnect()
            client.loop_stop()
    return seen


# -- the exported whole job, against lotdeploy apply ---------------------------------------


def test_the_exported_job_deploys_a_fresh_site_like_apply(fleet: Path, tmp_path: Path) -> None:
    vault = tmp_path / "vault-password"
    vault.write_text("a vault password for the fleet test\n")
    out = tmp_path / "export"
    cli("export-ansible", fleet / "c" / "site.yaml", out, "--vault-password-file", vault)
    assert (out / "secrets.yml").read_text().startswith("$ANSIBLE_VAULT")
    assert (out / "collections/ansible_collections/lotdeploy/coreflux/galaxy.yml").is_file()
    argv, env = without_lotdeploy(tmp_path)
    probe = subprocess.run(
        [argv[0], "-S", "-c", "import lotdeploy"],
        env=env,
        cwd=out,
        capture_output=True,
        timeout=30,
    )
    assert probe.returncode != 0 and b"No module named 'lotdeploy'" in probe.stderr
    assert subprocess.run(["sh", "-c", "command -v lotdeploy"], env=env).returncode != 0
    proc = subprocess.run(
        [*argv, "-i", "inventory", "site.yml", "--vault-password-file", str(vault)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    OUTPUTS.extend([proc.stdout, proc.stderr])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Every link between this node and the activated nodes" in proc.stdout
    by_ansible = broker_state(fleet, "c")
    assert all(s["routes"] and all(s["logins"].values()) for s in by_ansible.values())
    seen = exactly_once(fleet, "c")
    nodes = [n.name for n in site_of(fleet, "c").nodes]
    assert set(seen) == {(s, t, i) for s in nodes for t in nodes for i in range(20)}
    assert set(seen.values()) == {1}, {k: v for k, v in seen.items() if v != 1}
    # a rerun changes nothing
    again = subprocess.run(
        [*argv, "-i", "inventory", "site.yml", "--vault-password-file", str(vault)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    OUTPUTS.extend([again.stdout, again.stderr])
    assert again.returncode == 0 and "changed=0" in again.stdout.split("PLAY RECAP")[-1]
    # lotdeploy's own apply over it: the same end state
    cli("apply", fleet / "c" / "site.yaml", "--auto-approve")
    assert broker_state(fleet, "c") == by_ansible


def test_the_modules_check_diff_and_remove(fleet: Path, tmp_path: Path) -> None:
    """cluster_route in check and diff mode changes nothing and masks the password; absent
    removes only an owned route; route_info names what is missing."""
    site = site_of(fleet, "c")
    password = Layout(fleet / "c").password_file.read_text().strip()
    inventory = tmp_path / "hosts.yml"
    cli("inventory", fleet / "c" / "site.yaml", "--out", inventory)
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(Path(__file__).resolve().parent.parent / "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
    }

    def adhoc(module: str, args: str, *extra: str) -> Any:
        proc = subprocess.run(
            [
                str(BIN / "ansible"),
                "-i",
                str(inventory),
                "eu1",
                "-m",
                f"lotdeploy.coreflux.{module}",
                "-a",
                f"admin_password={password} mqtt_library=/opt/lotdeploy/ansible/paho-mqtt.zip {args}",
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        OUTPUTS.extend([proc.stdout.replace(password, "<admin>"), proc.stderr])
        return proc

    route = "name=lotdeploy_zz broker_address=198.18.9.9 broker_port=8883 client_id=x-to-zz "
    route += "username=cluster password=s3cretvalue message_validity_sec=30 use_tls=true"
    proc = adhoc("cluster_route", route, "--check", "--diff")
    assert proc.returncode == 0 and '"action": "add"' in proc.stdout, proc.stdout
    assert "s3cretvalue" not in proc.stdout and "********" in proc.stdout
    listed = adhoc("route_info", "names=lotdeploy_zz")
    assert '"missing": [\n        "lotdeploy_zz"' in listed.stdout, listed.stdout
    assert adhoc("cluster_route", route).returncode == 0
    assert '"action": "none"' in adhoc("cluster_route", route).stdout
    assert '"action": "remove"' in adhoc("cluster_route", "name=lotdeploy_zz state=absent").stdout
    refused = adhoc("cluster_route", "name=someone_elses state=absent")
    assert refused.returncode != 0 and "only routes named lotdeploy_*" in refused.stdout
    assert len(site.nodes) == 2


# -- fleets ---------------------------------------------------------------------------------


def test_a_fleet_is_planned_applied_verified_and_drift_checked_with_one_command_each(
    fleet: Path,
) -> None:
    plan = cli("plan", fleet, "--json")
    doc = json.loads(plan.stdout)
    assert [s["site"] for s in doc["sites"]] == list(SITES) and doc["exit_status"] == 0
    assert next(s for s in doc["sites"] if s["site"] == "a")["summary"].endswith("create")
    apply = cli("apply", fleet, "--auto-approve", "--parallel", "3")
    assert "fleet apply: 3 site(s): 3 ok; exit 0" in apply.stdout
    for name in SITES:
        assert (fleet / name / ".lotdeploy" / "state.json").is_file()  # one workspace each
    verify = cli("verify", fleet)
    assert verify.stdout.count("12 pass, 0 fail") == 3
    assert "3 ok" in cli("drift", fleet).stdout
    remove_route(fleet, "b", "us1", "lotdeploy_eu1")
    drift = cli("drift", fleet, "--json", expect=2)
    sites = {s["site"]: s for s in json.loads(drift.stdout)["sites"]}
    assert sites["b"]["result"] == "changes" and sites["a"]["result"] == "ok"
    assert "drift on us1" in sites["b"]["summary"]
    cli("apply", fleet, "--auto-approve", "--sites", "b")
    cli("drift", fleet)
    wrong = cli("plan", fleet, "--sites", "zz", expect=1)
    assert "no site zz" in wrong.stderr


def test_export_of_a_fleet_is_one_project_with_a_job_per_site(fleet: Path, tmp_path: Path) -> None:
    out = tmp_path / "awx-project"
    cli("export-ansible", fleet, out)
    assert sorted(p.name for p in (out / "sites").iterdir()) == list(SITES)
    for name in SITES:
        assert (out / "sites" / name / "site.yml").is_file()
        assert (out / "sites" / name / "inventory" / "hosts.yml").is_file()
    awx = (out / "awx.yml").read_text()
    assert "sites/b/site.yml" in awx and "approval" in awx and "job_slice_count: 1" in awx
    syntax = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventory", "site.yml", "--syntax-check"],
        cwd=out / "sites" / "a",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    cli("export-ansible", fleet, out)  # again: only its own files, no refusal
    for path in out.rglob("*"):
        if path.name == "secrets.yml" or "bundles" in path.parts:
            # the secret files: 0600 in clear without a vault password (as the bundles)
            assert path.is_dir() or path.stat().st_mode & 0o777 == 0o600, path
        elif path.is_file() and path.suffix in (".yml", ".md", ".json", ".cfg"):
            OUTPUTS.append(path.read_text(errors="replace"))


# -- watch ----------------------------------------------------------------------------------

INTERVAL = 6.0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def test_watch_heals_a_route_removed_by_hand_within_two_intervals(fleet: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    log = fleet.parent / "watch.log"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lotdeploy",
            "watch",
            str(fleet),
            "--sites",
            "a",
            "--heal",
            "--interval",
            str(INTERVAL),
            "--jitter",
            "0",
            "--metrics-address",
            "127.0.0.1:0",
            "--log",
            str(log),
        ],
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "cycle" not in (
            log.read_text() if log.exists() else ""
        ):
            time.sleep(0.2)
        events = [json.loads(line) for line in log.read_text().splitlines()]
        port = int(next(e for e in events if e["event"] == "metrics")["address"].rsplit(":", 1)[1])
        remove_route(fleet, "a", "eu1", "lotdeploy_us1")
        removed = time.monotonic()
        back = None
        while time.monotonic() < removed + 2 * INTERVAL + 5:
            events = [json.loads(x) for x in log.read_text().splitlines()]
            heals = [e for e in events if e["event"] == "heal"]
            if heals and heals[-1]["result"] == "ok":
                back = time.monotonic()
                break
            time.sleep(0.2)
        assert back is not None, log.read_text()
        assert back - removed <= 2 * INTERVAL, back - removed
        routes = broker_state(fleet, "a")["eu1"]["routes"]
        assert routes == ["lotdeploy_us1"]
        # metrics parse with Prometheus' own text-format parser, and say what happened
        deadline = time.monotonic() + 2 * INTERVAL
        text = scrape(port)
        while "lotdeploy_watch_heals_total" not in text or 'result="ok"' not in text:
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
            text = scrape(port)
        OUTPUTS.append(text)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {
            "lotdeploy_watch_link_up",
            "lotdeploy_watch_link_latency_seconds",
            "lotdeploy_watch_node_drift",
            "lotdeploy_watch_node_certificate_expiry_days",
            "lotdeploy_watch_site_last_success_timestamp_seconds",
        } <= set(families)
        ups = {
            (s.labels["source"], s.labels["target"]): s.value
            for s in families["lotdeploy_watch_link_up"].samples
        }
        assert ups == {("eu1", "us1"): 1.0, ("us1", "eu1"): 1.0}
        heals = {
            s.labels["result"]: s.value
            for s in families["lotdeploy_watch_heals"].samples
            if s.name == "lotdeploy_watch_heals_total"
        }
        assert heals.get("ok", 0) >= 1
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
        OUTPUTS.extend([out.decode(), err.decode()])
    assert child.returncode == 0, err.decode()
    lines = log.read_text().splitlines()
    OUTPUTS.append(log.read_text())
    assert json.loads(lines[-1])["event"] == "stop"


def test_watch_rides_out_a_broker_that_goes_away(fleet: Path) -> None:
    """A killed broker is a failed cycle (metrics say so), and its return a good one."""
    log = fleet.parent / "watch-kill.log"
    lab_cli(fleet / "b", "kill", "us1")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lotdeploy",
                "watch",
                str(fleet / "b" / "site.yaml"),
                "--once",
                "--metrics-address",
                "127.0.0.1:0",
                "--log",
                str(log),
            ],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        cycles = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "cycle"]
        assert cycles[-1]["result"] != "ok"
    finally:
        assert lab_cli(fleet / "b", "revive", "us1").returncode == 0
    deadline = time.monotonic() + 30
    while True:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lotdeploy",
                "watch",
                str(fleet / "b" / "site.yaml"),
                "--once",
                "--metrics-address",
                "127.0.0.1:0",
                "--log",
                str(log),
            ],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=120,
        )
        cycles = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "cycle"]
        if cycles[-1]["result"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(1)
    OUTPUTS.append(log.read_text())
    assert cycles[-1]["result"] == "ok", log.read_text()[-3000:]


def test_watch_never_applies_a_change_of_the_site_itself(fleet: Path) -> None:
    """A site edited but not applied, and a node drifted: heal is skipped, saying why, and
    nothing is applied (the drift stays; the edit is the operator's to apply)."""
    site_file = fleet / "b" / "site.yaml"
    original = site_file.read_text()
    log = fleet.parent / "watch-edited.log"
    remove_route(fleet, "b", "eu1", "lotdeploy_us1")
    try:
        site_file.write_text(
            original.replace(
                "cross_region_message_validity_sec: 120", "cross_region_message_validity_sec: 123"
            )
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lotdeploy",
                "watch",
                str(site_file),
                "--once",
                "--heal",
                "--metrics-address",
                "127.0.0.1:0",
                "--log",
                str(log),
            ],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(x) for x in log.read_text().splitlines()]
        OUTPUTS.append(log.read_text())
        heal = next(e for e in events if e["event"] == "heal")
        assert heal["result"] == "skipped" and "not applied yet" in heal["detail"]
        assert "lotdeploy_us1" not in broker_state(fleet, "b")["eu1"]["routes"]
    finally:
        site_file.write_text(original)
    cli("apply", site_file, "--auto-approve")


def test_an_exported_rollout_is_one_play_per_wave_and_a_failed_wave_stops_it(
    fleet: Path, tmp_path: Path
) -> None:
    """Site a with a rollout: site.yml has a play per wave (serial, max_fail_percentage);
    with us1 cut off from eu1 the second wave fails and the playbook fails."""
    import yaml

    site_file = fleet / "a" / "site.yaml"
    doc = yaml.safe_load(site_file.read_text())
    doc["rollout"] = {"max_fail_percentage": 0}
    doc["defaults"]["cross_region_message_validity_sec"] = 144  # every route changes
    variant = fleet / "a" / "rollout.yaml"
    variant.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "export"
    cli("export-ansible", variant, out)
    plays = yaml.safe_load((out / "site.yml").read_text())
    assert [(p["hosts"], p["serial"], p["max_fail_percentage"]) for p in plays] == [
        (["eu1"], 1, 0),
        (["us1"], 1, 0),
    ]
    assert lab_cli(fleet / "a", "partition", "eu1", "us1").returncode == 0
    try:
        proc = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                "inventory",
                "site.yml",
                "-e",
                "lotdeploy_connect_timeout=4",
            ],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "ANSIBLE_CONNECT_TIMEOUT": "10"},
        )
        OUTPUTS.extend([proc.stdout, proc.stderr])
        assert proc.returncode != 0, proc.stdout[-3000:]
        recap = proc.stdout.split("PLAY RECAP")[-1]
        assert "us1" in recap and "failed=1" in recap, recap
        assert "wave 2 of 2 (us)" in proc.stdout
    finally:
        assert lab_cli(fleet / "a", "heal", "eu1").returncode == 0
    cli("apply", site_file, "--auto-approve", "--refresh")
    cli("drift", site_file)


def test_no_secret_in_any_output_event_metric_or_export(fleet: Path) -> None:
    needles: dict[str, str] = {"passphrase": TEST_PASSPHRASE}
    for name in SITES:
        store = workspace_of(fleet, name).secrets()
        for secret in store.names():
            value = store.get(secret)
            assert value is not None
            needles[f"{name}/{secret}"] = value.reveal()
        needles[f"{name}/admin"] = Layout(fleet / name).password_file.read_text().strip()
    texts = dict(enumerate(OUTPUTS))
    for path in fleet.rglob(".lotdeploy-fleet/runs/*/*"):
        texts[str(path)] = path.read_text(errors="replace")  # type: ignore[index]
    leaks = [f"{k} in {w}" for w, t in texts.items() for k, v in needles.items() if v and v in t]
    assert not leaks, leaks
    assert len(texts) > 20

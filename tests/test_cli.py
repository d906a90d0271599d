"""The commands as a user runs them: real subprocesses, exit codes, files, no secret leaks."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, TEST_PASSPHRASE, run_cli

ENV = {"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE}
COMMANDS = ["init", "validate", "render", "plan", "lint", "schema", "graph", "lab"]


def test_init_writes_a_valid_commented_example(tmp_path: Path) -> None:
    result = run_cli("init", tmp_path / "plant")
    assert result.returncode == 0, result.stderr
    site = tmp_path / "plant" / "site.yaml"
    assert site.read_text().startswith("#")
    checked = run_cli("validate", site)
    assert checked.returncode == 0, checked.stderr
    assert "3 nodes in 2 region(s), 6 routes, TLS on 3/3 nodes" in checked.stdout
    again = run_cli("init", tmp_path / "plant")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_validate_reports_every_error_without_traceback(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: s\nnodes:\n  - {name: a, address: 10.0.0.1, prot: 1}\n  - {name: a}\n")
    result = run_cli("validate", site)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert f"{site}:3:34: error: unknown key 'prot' (did you mean 'port'?)" in lines
    assert any(
        line.startswith(f"{site}:4:5: error: nodes[1]: missing required key") for line in lines
    )
    assert any(line.startswith(f"{site}:4:12: error: duplicate node name 'a'") for line in lines)
    assert "Traceback" not in result.stderr


def test_schema_is_a_json_schema_the_examples_satisfy() -> None:
    result = run_cli("schema")
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    for example in ("plant-a.yaml", "geo.yaml"):
        jsonschema.validate(yaml.safe_load((REPO / "inventories" / example).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"site": "s", "nodes": [{"name": "a", "address": "x", "tsl": 1}]}, schema
        )


def _all_commands() -> list[tuple[str, ...]]:
    import click

    from lotdeploy.cli import cli

    found: list[tuple[str, ...]] = []
    ctx = click.Context(cli)

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        found.append(path)
        if isinstance(command, click.Group):  # lazy groups load a subcommand on get_command
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(sub, (*path, name))

    walk(cli, ())
    return found


def test_every_command_has_help_with_an_example() -> None:
    from click.testing import CliRunner

    from lotdeploy.cli import cli

    commands = _all_commands()
    assert {c[0] for c in commands if c} >= set(COMMANDS) | {"certs", "creds"}
    for path in commands:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example" in result.output, f"lotdeploy {' '.join(path)} --help has no example"


def test_lint(tmp_path: Path) -> None:
    good = tmp_path / "good.lot"
    good.write_text(
        "DEFINE ROUTE A WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"
        "        WITH BROKER_ADDRESS \"10.0.0.1\"\n        WITH BROKER_PORT '1883'\n"
        '        WITH CLIENT_ID "a-to-b"\n'
    )
    bad = tmp_path / "bad.lot"
    bad.write_text(
        "DEFINE ROUTE A WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n        WITH BROKER_PORT\n"
    )
    assert run_cli("lint", good).returncode == 0
    result = run_cli("lint", good, bad)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}:3:")
    missing = run_cli("lint", tmp_path / "nope.lot")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_graph_formats() -> None:
    mermaid = run_cli("graph", REPO / "inventories" / "geo.yaml").stdout
    assert mermaid.startswith("graph LR") and "subgraph region_eu" in mermaid
    assert '"20s"' in mermaid and '"180s"' in mermaid
    dot = run_cli("graph", REPO / "inventories" / "geo.yaml", "--format", "dot").stdout
    assert 'subgraph "cluster_us"' in dot and '"eu1" -- "us1" [label="180s"' in dot


def _copy_example(tmp_path: Path, name: str = "plant-a.yaml") -> Path:
    site = tmp_path / "site.yaml"
    site.write_text((REPO / "inventories" / name).read_text())
    return site


def test_render_writes_private_bundles_and_manifest(tmp_path: Path) -> None:
    site = _copy_example(tmp_path)
    out = tmp_path / "out"
    result = run_cli("render", site, "--out", out, env=ENV)
    assert result.returncode == 0, result.stderr
    assert "rendered 6 routes for 3 nodes" in result.stdout
    for node in ("Node1", "Node2", "Node3"):
        routes = out / node / "routes.lot"
        assert stat.S_IMODE(routes.stat().st_mode) == 0o600
        manifest = json.loads((out / node / "manifest.json").read_text())
        assert manifest["node"] == node and len(manifest["routes"]) == 2
        import hashlib

        assert (
            manifest["files"]["routes.lot"]["sha256"]
            == hashlib.sha256(routes.read_bytes()).hexdigest()
        )
        assert manifest["files"]["routes.lot"]["mode"] == "0600"
    # second run: byte-identical (same secrets), nothing else written
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run_cli("render", site, "--out", out, env=ENV).returncode == 0
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run_cli("lint", *sorted(out.glob("*/routes.lot"))).returncode == 0


def test_render_removes_only_its_own_stale_node_dirs(tmp_path: Path) -> None:
    site = _copy_example(tmp_path)
    out = tmp_path / "out"
    (out / "precious").mkdir(parents=True)
    (out / "precious" / "notes.txt").write_text("keep me")
    assert run_cli("render", site, "--out", out, env=ENV).returncode == 0
    site.write_text(site.read_text().replace("  - name: Node3\n    address: 192.168.1.102\n", ""))
    result = run_cli("render", site, "--out", out, env=ENV)
    assert "removed 1 stale node dir" in result.stdout
    assert not (out / "Node3").exists() and (out / "precious" / "notes.txt").exists()


def test_render_without_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    site = _copy_example(tmp_path)
    result = run_cli("render", site, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "lotdeploy: error: the workspace secret store needs a passphrase: set "
        "LOTDEPLOY_PASSPHRASE or run on a terminal to be prompted"
    )
    wrong = run_cli("render", site, "--out", tmp_path / "out", env=ENV)
    assert wrong.returncode == 0
    again = run_cli("render", site, "--out", tmp_path / "out", env={"LOTDEPLOY_PASSPHRASE": "nope"})
    assert again.returncode == 1 and "wrong passphrase" in again.stderr


def test_plan_without_state_creates_everything(tmp_path: Path) -> None:
    site = _copy_example(tmp_path)
    result = run_cli("plan", site)  # no passphrase needed
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "lotdeploy plan: site plant-a (3 nodes, 1 region)"
    assert "region default" in lines and "  node Node1" in lines
    assert any(
        line.startswith(
            "    + route lotdeploy_Node2  -> 192.168.1.101:1883 plain  client Node1-to-Node2"
        )
        for line in lines
    )
    assert lines[-1] == "Plan: 7 to add, 0 to change, 0 to destroy (1 credential, 6 routes)."
    detailed = run_cli("plan", site, "--detailed-exitcode")
    assert detailed.returncode == 2


def test_plan_json(tmp_path: Path) -> None:
    site = _copy_example(tmp_path, "geo.yaml")
    result = run_cli("plan", site, "--json")
    doc = json.loads(result.stdout)
    assert doc["format_version"] == 1 and doc["site"] == "plant-a"
    routes = [c for c in doc["changes"] if c["kind"] == "route"]
    assert len(routes) == 6
    first = routes[0]
    assert first["attributes"]["PASSWORD"]["after"] == "(sensitive)"
    assert first["attributes"]["USE_TLS"]["after"] == "true"
    assert doc["summary"]["create"] >= 6


def test_plan_shows_updates_and_deletes_against_known_state(tmp_path: Path) -> None:
    from lotdeploy.credentials import CredentialState
    from lotdeploy.model import Site
    from lotdeploy.plan.desired import desired_routes
    from lotdeploy.plan.observed import Observed
    from lotdeploy.spec import load_site
    from lotdeploy.workspace import Workspace

    site_path = _copy_example(tmp_path)
    site: Site = load_site(site_path).site
    workspace = Workspace.for_site(site_path)
    CredentialState(active_version=1, generated=True).save(workspace)
    desired = desired_routes(site, 1)
    Observed(routes=desired).save(workspace)
    unchanged = run_cli("plan", site_path, "--detailed-exitcode")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert unchanged.stdout.splitlines()[-1] == "No changes. The site matches the recorded state."

    desired["Node1"]["lotdeploy_Node2"]["message_validity_sec"] = 60
    desired["Node1"]["lotdeploy_Node9"] = dict(
        desired["Node1"]["lotdeploy_Node2"], name="lotdeploy_Node9"
    )
    desired["Node2"]["lotdeploy_Node1"]["password_version"] = 0
    Observed(routes=desired).save(workspace)
    changed = run_cli("plan", site_path, "--detailed-exitcode")
    assert changed.returncode == 2
    out = changed.stdout
    assert "~ route lotdeploy_Node2  MESSAGE_VALIDITY_SEC 60 -> 30" in out
    assert "- route lotdeploy_Node9" in out
    assert "~ route lotdeploy_Node1  PASSWORD (sensitive) -> (sensitive) (rotated)" in out
    assert out.splitlines()[-1] == "Plan: 0 to add, 2 to change, 1 to destroy (3 routes)."


def test_no_secret_reaches_any_output(tmp_path: Path) -> None:
    """A full run; every stdout, stderr and non-secret file is grepped for every secret."""
    site = _copy_example(tmp_path, "geo.yaml")
    out = tmp_path / "out"
    outputs: list[str] = []
    (tmp_path / "not-a-dir").write_text("a file where a workspace should be")
    wrong = {"LOTDEPLOY_PASSPHRASE": "a wrong passphrase"}
    runs: list[tuple[tuple[str | Path, ...], dict[str, str]]] = [
        (("validate", site), ENV),
        (("render", site, "--out", out), ENV),
        (("plan", site), ENV),
        (("plan", site, "--json"), ENV),
        (("graph", site), ENV),
        (("certs", "list", site), ENV),
        (("certs", "list", site, "--json"), ENV),
        (("render", site, "--out", out), ENV),
        (("render", site, "--out", tmp_path / "out2", "--workspace", tmp_path / "not-a-dir"), ENV),
        (("render", site, "--out", tmp_path / "out3"), wrong),
    ]
    for args, env in runs:
        result = run_cli(*args, env=env)
        outputs += [result.stdout, result.stderr]
    outputs.append(run_cli("lint", *sorted(out.glob("*/routes.lot"))).stdout)
    from lotdeploy.secret import Secret
    from lotdeploy.workspace import SecretStore

    store = SecretStore.open(tmp_path / ".lotdeploy" / "secrets.enc", Secret(TEST_PASSPHRASE))
    secrets = [store.get(name) for name in store.names()]
    values = [s.reveal() for s in secrets if s is not None] + [TEST_PASSPHRASE]
    assert len(values) >= 2
    secret_bearing = {"routes.lot", "server.key", "secrets.enc"}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name not in secret_bearing:
            outputs.append(path.read_text(errors="replace"))
    for text in outputs:
        for value in values:
            for line in value.splitlines():
                if len(line) >= 8:
                    assert line not in text
    # and the routes do carry the password (so the grep above was meaningful)
    assert any(v in (out / "eu1" / "routes.lot").read_text() for v in values)


def test_usage_errors_exit_1_so_they_never_look_like_changes(tmp_path: Path) -> None:
    site = _copy_example(tmp_path)
    result = run_cli("plan", site, "--detailed-exitcode", "--no-such-flag")
    assert result.returncode == 1 and "No such option" in result.stderr
    assert run_cli("plan", tmp_path).returncode == 1


def test_certs_list_exit_2_reaches_the_shell(tmp_path: Path) -> None:
    """Through the real entry point, not CliRunner: `action needed` must be exit 2 for cron."""
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: s\ndefaults: {tls: true}\nnodes:\n  - {name: a, address: 10.0.0.1}\n"
        "  - {name: b, address: 10.0.0.2}\n"
    )
    missing = run_cli("certs", "list", site)
    assert missing.returncode == 2, missing.stderr
    assert run_cli("render", site, "--out", tmp_path / "out", env=ENV).returncode == 0
    issued = run_cli("certs", "list", site)
    assert issued.returncode == 0, issued.stdout + issued.stderr

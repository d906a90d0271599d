"""Node profiles (lotdeploy/profiles.py): systemd or docker per node.

Pure: what each profile resolves to, explicit settings winning, the spec's precedence and
checks, the lab's site and `--profile` parsing, the deploy script's reload. On a root lab
with one docker-layout node beside a systemd node: apply converges and verify passes with
the docker node reloaded by its container's restart, drift names a hand change under the
volume's host path, and a rollback puts the docker node's TLS files back and restarts it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from lotdeploy import profiles, protocol
from lotdeploy.errors import LabError, SpecError
from lotdeploy.lab import labstate
from lotdeploy.lab.hosts import Layout
from lotdeploy.lab.labstate import LabState, Node
from lotdeploy.lab.sitefile import site_spec
from lotdeploy.node.release import FileEntry, NodePaths, deploy_script
from lotdeploy.spec import load_site
from tests.lab_fixtures import skip_unless_root, ssh_node
from tests.test_apply import Lab, lab_up, summary

# -- pure -------------------------------------------------------------------------------------


def test_systemd_is_the_host_install_as_before() -> None:
    got = profiles.resolve("systemd", None)
    assert (got.tls_dir, got.release_dir, got.reload_command) == (
        protocol.DEFAULT_TLS_DIR,
        protocol.DEFAULT_RELEASE_DIR,
        protocol.DEFAULT_RELOAD_COMMAND,
    )
    assert profiles.broker_path(None, "/opt/coreflux/tls") == "/opt/coreflux/tls"


def test_docker_puts_everything_in_the_volume_and_restarts_the_container() -> None:
    docker = profiles.DockerLayout(container="cf-1")
    got = profiles.resolve("docker", docker)
    assert got.tls_dir == "/srv/coreflux/project/tls"
    assert got.release_dir == "/srv/coreflux/project/lotdeploy"
    assert got.reload_command == "docker restart cf-1"
    # the broker reads at the container's side of the volume; outside it, nothing
    assert profiles.broker_path(docker, got.tls_dir) == "/etc/project/tls"
    assert profiles.broker_path(docker, "/srv/coreflux/project") == "/etc/project"
    assert profiles.broker_path(docker, "/srv/coreflux/projectx/tls") is None


def test_explicit_settings_win_over_the_profile() -> None:
    got = profiles.resolve(
        "docker",
        profiles.DockerLayout(volume_dir="/data/cf"),
        tls_dir="/data/cf/certs",
        reload_command="systemctl restart cf-container",
    )
    assert got.tls_dir == "/data/cf/certs"
    assert got.release_dir == "/data/cf/lotdeploy"  # not given: the profile's
    assert got.reload_command == "systemctl restart cf-container"


SITE = """
site: s
defaults:
  profile: docker
  docker: {volume_dir: /data/cf}
regions:
  us:
    docker: {container: broker-us}
nodes:
  - name: a
    address: 10.0.0.1
    region: us
  - name: b
    address: 10.0.0.2
    docker: {project_dir: /project}
  - name: c
    address: 10.0.0.3
    profile: systemd
"""


def test_the_spec_resolves_profiles_by_precedence(
    write_site: Callable[[str], Path],
) -> None:
    site = load_site(write_site(SITE)).site
    a, b, c = (site.node(n).broker for n in "abc")
    assert (a.tls_dir, a.release_dir, a.reload_command) == (
        "/data/cf/tls",
        "/data/cf/lotdeploy",
        "docker restart broker-us",
    )
    assert a.broker_tls_dir == "/etc/project/tls"
    assert b.reload_command == "docker restart coreflux" and b.broker_tls_dir == "/project/tls"
    assert c.profile == "systemd" and c.docker is None
    assert (c.tls_dir, c.reload_command) == (
        protocol.DEFAULT_TLS_DIR,
        protocol.DEFAULT_RELOAD_COMMAND,
    )


def test_a_systemd_site_keeps_its_digest(write_site: Callable[..., Path]) -> None:
    plain = "site: s\nnodes:\n  - {name: a, address: 10.0.0.1}\n"
    said = "site: s\ndefaults: {profile: systemd}\nnodes:\n  - {name: a, address: 10.0.0.1}\n"
    docker = "site: s\ndefaults: {profile: docker}\nnodes:\n  - {name: a, address: 10.0.0.1}\n"
    texts = [plain, said, docker]
    digests = [load_site(write_site(t, f"{i}.yaml")).site.digest() for i, t in enumerate(texts)]
    assert digests[0] == digests[1] != digests[2]


def test_a_tls_dir_the_container_cannot_see_is_refused(
    write_site: Callable[[str], Path],
) -> None:
    path = write_site(
        """
        site: s
        nodes:
          - name: a
            address: 10.0.0.1
            profile: docker
            broker: {tls_dir: /opt/certs}
          - name: b
            address: 10.0.0.2
            docker: {container: "no spaces"}
        """
    )
    with pytest.raises(SpecError) as info:
        load_site(path)
    said = str(info.value)
    assert "'/opt/certs' is outside the docker volume '/srv/coreflux/project'" in said
    assert "docker.container: 'no spaces' must be a container name" in said


def test_the_schema_names_both_profiles() -> None:
    from lotdeploy.spec.schema import json_schema

    schema = json.dumps(json_schema())
    assert '"systemd", "docker"' in schema and "volume_dir" in schema


def test_the_deploy_script_runs_the_docker_reload_quoted() -> None:
    got = profiles.resolve("docker", profiles.DockerLayout())
    script = deploy_script(
        NodePaths(got.release_dir, got.tls_dir),
        "0123456789abcdef",
        [FileEntry("server.crt", "0" * 64, 0o644)],
        keep_timer=None,
        reload_command=got.reload_command,
        force_reload=False,
        source="-",
    )
    assert f"eval {shlex.quote('docker restart coreflux')}" in script
    assert "/srv/coreflux/project/tls/server.crt" in script


def test_lab_profiles_parse_and_shape_the_site(tmp_path: Path) -> None:
    shape = [("eu1", "eu"), ("eu2", "eu"), ("us1", "us")]
    assert labstate.parse_profiles(["us=docker"], shape) == {"us1": "docker"}
    assert labstate.parse_profiles(["docker", "eu1=systemd"], shape) == {
        "eu1": "systemd",
        "eu2": "docker",
        "us1": "docker",
    }
    for bad in ("eu3=docker", "podman", "eu1=podman"):
        with pytest.raises(LabError, match="bad --profile"):
            labstate.parse_profiles([bad], shape)
    state = LabState(
        lab_id="abc123",
        mode="root",
        nodes=[
            Node(name="eu1", region="eu", address="198.18.0.11"),
            Node(name="us1", region="us", address="198.18.0.12", profile="docker"),
        ],
    )
    spec = site_spec(Layout(tmp_path), state)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(spec))
    site = load_site(path).site
    assert site.node("us1").broker.reload_command == "docker restart coreflux"
    assert site.node("us1").broker.tls_dir == "/srv/coreflux/project/tls"
    assert site.node("eu1").broker.reload_command.startswith("kill -HUP")


# -- on a lab: one docker-layout node beside a systemd node -------------------------------------

DOCKER_NODE = "node2"
VOLUME_TLS = "/srv/coreflux/project/tls"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    skip_unless_root()
    base = tmp_path_factory.mktemp("profilelab")
    with lab_up(base, "--nodes", "2", "--profile", f"{DOCKER_NODE}=docker") as made:
        yield made


def _starts(lab: Lab) -> int:
    """How often the docker node's broker started (lab up, then every `docker restart`)."""
    log = Layout(lab.dir).node_sub(DOCKER_NODE, "broker.log").read_text(errors="replace")
    return log.count('"event": "ready"')


@pytest.mark.root
def test_apply_converges_with_the_docker_node_restarted(lab: Lab) -> None:
    before = _starts(lab)
    proc = lab.cli("apply", lab.site_file, "--auto-approve", "--json")
    assert summary(proc)["failed"] == []
    assert _starts(lab) == before + 1  # its reload: `docker restart coreflux`
    # written at the volume's host path, read by the broker at the container's path
    seen = ssh_node(
        lab.dir,
        DOCKER_NODE,
        "sha256sum /srv/coreflux/project/tls/server.crt "
        "/etc/project/tls/server.crt; readlink /srv/coreflux/project/lotdeploy/current",
    )
    sums = [line.split()[0] for line in seen.stdout.splitlines()[:2]]
    assert len(sums) == 2 and sums[0] == sums[1], seen.stdout + seen.stderr
    assert seen.stdout.splitlines()[2].startswith("releases/")
    lab.wait_mesh()
    lab.cli("drift", lab.site_file)
    lab.cli("verify", lab.site_file)
    assert lab.state().nodes[DOCKER_NODE].paths == {
        "release_dir": "/srv/coreflux/project/lotdeploy",
        "tls_dir": VOLUME_TLS,
    }


@pytest.mark.root
def test_drift_and_plan_name_the_docker_nodes_host_path(lab: Lab) -> None:
    crt = f"{VOLUME_TLS}/server.crt"
    assert ssh_node(lab.dir, DOCKER_NODE, f"echo tampered >> {crt}").returncode == 0
    drift = lab.cli("drift", lab.site_file, expect=2)
    assert f"file {crt}: changed" in drift.stdout
    plan = json.loads(lab.cli("plan", lab.site_file, "--refresh", "--json", expect=None).stdout)
    assert f"file/{DOCKER_NODE}/{crt}" in [c["key"] for c in plan["changes"]]
    before = _starts(lab)
    lab.cli("apply", lab.site_file, "--auto-approve")
    assert _starts(lab) == before + 1
    lab.cli("drift", lab.site_file)


@pytest.mark.root
def test_rollback_restores_the_docker_nodes_tls_files_and_restarts_it(lab: Lab) -> None:
    rsa = lab.dir / "rsa.yaml"
    doc = yaml.safe_load(lab.site_file.read_text())
    doc["pki"] = {"key_type": "rsa-3072"}
    rsa.write_text(yaml.safe_dump(doc, sort_keys=False))
    old = lab.state().nodes[DOCKER_NODE].release
    lab.cli("apply", rsa, "--auto-approve")
    assert lab.state().nodes[DOCKER_NODE].release != old
    before = _starts(lab)
    proc = lab.cli("rollback", rsa, "--limit", DOCKER_NODE)
    assert f"-> {old}" in proc.stdout and "TLS files" in proc.stdout and "reloaded" in proc.stdout
    assert _starts(lab) == before + 1
    assert lab.state().nodes[DOCKER_NODE].release == old
    lab.wait_mesh()

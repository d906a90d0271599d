"""The site spec's schema: pydantic models that validate it and print its JSON Schema.

Settings (`tls`, `port`, `message_validity_sec`, ...) can be given at three levels with
precedence node > region > site `defaults`; the built-in defaults live in `model.py`.
Every string that ends up inside LOT text or a broker command is checked to be LOT-safe
here, so an unsafe value is an error pointing at its line, never a broken route.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lotdeploy import profiles
from lotdeploy.values import (
    ADDRESS_MAX_BYTES,
    NAME_MAX_BYTES,
    TEXT_MAX_BYTES,
    VALUE_MAX_BYTES,
    Code,
    Problem,
    Role,
    check_bundle_name,
    check_local_path,
    check_node_path,
    problem,
)

# The value rule itself lives in lotdeploy.values (shared with the compiler, lint and the
# broker client); here it is applied per field, with the spec's own wording and caps.
_SPEC_WORDING = {
    Code.LINE_BREAK: "must be a single line (no newlines)",
    Code.DOUBLE_QUOTE: 'contains ", which LOT cannot carry safely',
    Code.SINGLE_QUOTE: "contains ', which LOT cannot carry safely",
    Code.COMMENT: "contains '//', which LOT reads as a comment",
    Code.LEADING_DASH: "must not start with '-' (it would read as a broker command flag)",
}


def _refuse(found: Problem) -> None:
    if found.code is Code.CONTROL:
        raise ValueError(f"contains {found.char!r}, which LOT cannot carry safely")
    raise ValueError(_SPEC_WORDING.get(found.code, found.message))


def _checked(value: str, role: Role, max_bytes: int) -> str:
    found = problem(value, role, max_bytes)
    if found:
        _refuse(found)
    if value != value.strip(" "):
        raise ValueError("must not start or end with spaces")
    if not value:
        raise ValueError("must not be empty")
    return value


def lot_safe(value: str, max_bytes: int = VALUE_MAX_BYTES) -> str:
    """Reject what would break a LOT route or the command line it travels in."""
    return _checked(value, Role.LOT_STRING, max_bytes)


def user_name(value: str) -> str:
    """A user name travels as one word of `-addUser <user> <password>`: no spaces."""
    return _checked(value, Role.COMMAND_TOKEN, NAME_MAX_BYTES)


def command_word(value: str) -> str:
    """One word of an ssh command line ([user@]host[:port] for `jump`)."""
    return _checked(value, Role.COMMAND_TOKEN, NAME_MAX_BYTES + ADDRESS_MAX_BYTES + 8)


def shell_text(value: str) -> str:
    """A shell command run on the node: quotes are fine, invisible characters are not."""
    return _checked(value, Role.TEXT, TEXT_MAX_BYTES)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError("must be an environment variable name (letters, digits, '_'; max 128)")
    return value


def _path_rule(check: Callable[[str], str | None]) -> Callable[[str], str]:
    def validate(value: str) -> str:
        found = check(value)
        if found:
            raise ValueError(found)
        return value

    validate.__doc__ = check.__doc__
    return validate


node_path = _path_rule(check_node_path)
bundle_name = _path_rule(check_bundle_name)
local_path = _path_rule(check_local_path)


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,47}$")
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def node_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must start with a letter and contain only letters, digits, '_' or '-' (max 48)"
        )
    return value


def dns_name(value: str) -> str:
    lot_safe(value, ADDRESS_MAX_BYTES + 1)
    name = value[:-1] if value.endswith(".") else value
    if len(name) > 253 or not name:
        raise ValueError("is not a valid DNS name (too long)")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if not labels or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError("is not a valid DNS name")
    return value


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("is not a valid IPv4 or IPv6 address") from None


def host_address(value: str) -> str:
    """What peers put in BROKER_ADDRESS: an IP address or a DNS name."""
    lot_safe(value, ADDRESS_MAX_BYTES + 1)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        return dns_name(value)
    except ValueError:
        raise ValueError("is neither an IP address nor a valid DNS name") from None


CLIENT_ID_FIELDS = frozenset({"node", "peer", "site", "region", "peer_region"})


def client_id_format(value: str) -> str:
    lot_safe(value, NAME_MAX_BYTES)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        raise ValueError(f"is not a valid format: {exc}") from None
    unknown = sorted(fields - CLIENT_ID_FIELDS)
    if unknown:
        known = ", ".join("{" + f + "}" for f in sorted(CLIENT_ID_FIELDS))
        raise ValueError(f"has unknown placeholder {{{unknown[0]}}} (known: {known})")
    return value


LotSafe = Annotated[str, AfterValidator(lot_safe)]
UserName = Annotated[str, AfterValidator(user_name)]
CommandWord = Annotated[str, AfterValidator(command_word)]
ShellText = Annotated[str, AfterValidator(shell_text)]
EnvName = Annotated[str, AfterValidator(env_name)]
NodePath = Annotated[str, AfterValidator(node_path)]
BundleName = Annotated[str, AfterValidator(bundle_name)]
LocalPath = Annotated[str, AfterValidator(local_path)]
ClientIdFormat = Annotated[str, AfterValidator(client_id_format)]
Name = Annotated[str, AfterValidator(node_name)]
DnsName = Annotated[str, AfterValidator(dns_name)]
IpAddress = Annotated[str, AfterValidator(ip_address)]
HostAddress = Annotated[str, AfterValidator(host_address)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=1, le=86400)]


class _Strict(BaseModel):
    """Unknown keys are errors; no silent coercion of "30" to 30."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SshSettings(_Strict):
    """How lotdeploy reaches the node's shell (apply, a later issue)."""

    host: HostAddress | None = Field(None, description="SSH host; default: the node address")
    port: Port | None = Field(None, description="SSH port; default 22")
    user: UserName | None = Field(None, description="SSH user; default root")
    key: LocalPath | None = Field(None, description="private key file, relative to the site file")
    known_hosts: LocalPath | None = Field(None, description="known_hosts file checked strictly")
    jump: CommandWord | None = Field(None, description="jump host, [user@]host[:port]")


class BrokerSettings(_Strict):
    """How lotdeploy talks to the broker and where the broker keeps its files."""

    admin_host: HostAddress | None = Field(
        None, description="command channel host as seen from the node; default 127.0.0.1"
    )
    admin_port: Port | None = Field(None, description="command channel MQTT port; default 1883")
    admin_user: UserName | None = Field(None, description="admin user; default root")
    admin_password_file: LocalPath | None = Field(
        None, description="file holding the admin password (relative to the site file)"
    )
    admin_password_env: EnvName | None = Field(
        None, description="environment variable holding the admin password"
    )
    tls_dir: NodePath | None = Field(
        None, description="broker TLS directory; default /opt/coreflux/tls"
    )
    cert_file: BundleName | None = Field(
        None, description="certificate file name; default server.crt"
    )
    key_file: BundleName | None = Field(None, description="key file name; default server.key")
    ca_file: BundleName | None = Field(None, description="CA bundle file name; default ca.crt")
    release_dir: NodePath | None = Field(
        None, description="lotdeploy release dir; default /opt/lotdeploy"
    )
    reload_command: ShellText | None = Field(
        None,
        description="shell command run on the node to pick up new TLS files; "
        "default `systemctl restart coreflux-broker`",
    )


_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def container_name(value: str) -> str:
    """A docker container name (docker's own rule), one word of the reload command."""
    if not _CONTAINER_NAME.fullmatch(value):
        raise ValueError(
            "must be a container name: a letter or digit, then letters, digits, '_', '.' "
            "or '-' (max 128)"
        )
    return value


ContainerName = Annotated[str, AfterValidator(container_name)]


class DockerSettings(_Strict):
    """Where a `profile: docker` node keeps the official image's project volume, and how
    its container picks up new TLS files (docs/spec.md, *Profiles*)."""

    volume_dir: NodePath | None = Field(
        None,
        description="the project volume's directory on the host (lotdeploy writes here); "
        f"default {profiles.DOCKER_VOLUME_DIR} (our choice: the vendor names none)",
    )
    project_dir: NodePath | None = Field(
        None,
        description="where the container sees the volume; default "
        f"{profiles.DOCKER_PROJECT_DIR} (the official image)",
    )
    container: ContainerName | None = Field(
        None, description=f"the broker's container name; default {profiles.DOCKER_CONTAINER}"
    )
    reload: Literal["restart"] | None = Field(
        None,
        description="how the broker picks up new TLS files: restart (`docker restart "
        "<container>`); default restart",
    )


class Settings(_Strict):
    """Settings valid at site `defaults`, per region and per node (node > region > defaults)."""

    profile: Literal["systemd", "docker"] | None = Field(
        None,
        description="how the broker is installed: systemd (a host package) or docker (the "
        "official image); gives the default paths and reload; default systemd",
    )
    docker: DockerSettings | None = None

    tls: bool | None = Field(None, description="USE_TLS on cluster links; default false")
    port: Port | None = Field(
        None, description="broker port peers connect to; default 1883, or 8883 with TLS"
    )
    message_validity_sec: Seconds | None = Field(
        None, description="MESSAGE_VALIDITY_SEC for links within one region; default 30"
    )
    cross_region_message_validity_sec: Seconds | None = Field(
        None, description="MESSAGE_VALIDITY_SEC for links to another region; default 120"
    )
    username: UserName | None = Field(None, description="cluster username; default 'cluster'")
    password_source: Literal["auto", "secret-store", "inline"] | None = Field(
        None,
        description="where routes take the cluster password from: the broker's secret store "
        "(GET SECRET, set with -setSecret: the route code the broker republishes holds no "
        "password) or the route code itself (inline); auto: the store where the broker is "
        "known to have one (lotdeploy doctor), else inline. Default auto",
    )
    ssh: SshSettings | None = None
    broker: BrokerSettings | None = None


class NodeSpec(Settings):
    name: Name = Field(description="unique node name; appears in route names and client ids")
    address: HostAddress = Field(description="BROKER_ADDRESS peers use: IP or DNS name")
    region: Name | None = Field(None, description="region name; default 'default'")
    dns_names: list[DnsName] = Field(default_factory=list, description="extra certificate SANs")
    ip_addresses: list[IpAddress] = Field(
        default_factory=list, description="extra certificate IP SANs"
    )
    tags: list[Name] = Field(default_factory=list)


class LinkOverride(_Strict):
    """Validity for the links between two nodes or regions (both directions)."""

    between: list[Name] = Field(min_length=2, max_length=2, description="two node or region names")
    message_validity_sec: Seconds


class PkiSettings(_Strict):
    key_type: Literal["ecdsa-p256", "rsa-3072"] = "ecdsa-p256"
    cert_lifetime_days: Annotated[int, Field(ge=1, le=3650)] = 397
    ca_lifetime_days: Annotated[int, Field(ge=1, le=36500)] = 3650
    renew_before_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        None, description="reissue when fewer days are left; default a third of the lifetime"
    )


Percent = Annotated[int, Field(ge=0, le=100)]


class WaveSpec(_Strict):
    """One wave of a rollout: the nodes named by node, region or tag (as --limit reads them)."""

    name: Name | None = Field(None, description="wave name (for --pause-after); default wave<N>")
    select: list[Name] = Field(
        min_length=1,
        description="node, region or tag names; a node goes in the first wave that names it",
    )
    max_fail_percentage: Percent | None = Field(
        None,
        description="failed nodes tolerated in this wave, in percent; default the "
        "rollout's max_fail_percentage",
    )


class RolloutSpec(_Strict):
    """How apply rolls a change out: waves, a verify gate after each, rollback on failure."""

    canary: Name | None = Field(
        None,
        description="the first wave's node (default waves); default the first node "
        "by name of the first region",
    )
    waves: list[WaveSpec] | None = Field(
        None,
        description="explicit waves; default: the canary, the rest of its region, "
        "then one region at a time",
    )
    max_fail_percentage: Percent = Field(
        0, description="failed nodes tolerated per wave, in percent (like Ansible's)"
    )
    max_failed_nodes: Annotated[int, Field(ge=0, le=100000)] | None = Field(
        None,
        description="failed nodes tolerated over the whole rollout; default no limit "
        "beyond each wave's",
    )
    rollback: Literal["auto", "manual"] = Field(
        "auto", description="on a failed gate: restore the wave's nodes (auto) or stop (manual)"
    )
    gate_timeout_sec: Seconds = Field(
        30, description="how long a gate waits for the links to come up"
    )
    confirm_timeout_sec: Seconds | None = Field(
        None,
        description="arm confirm-or-revert on every node: a node not confirmed within "
        "this many seconds of its switch restores its previous release by itself",
    )


class AnsibleSettings(_Strict):
    """The Ansible transport (docs/ansible.md)."""

    vault_password_file: LocalPath | None = Field(
        None,
        description="encrypt the secret files handed to Ansible with Ansible Vault, with the "
        "password in this file (relative to the site file)",
    )
    python_interpreter: NodePath = Field(
        "/usr/bin/python3",
        description="the nodes' Python for Ansible modules (ansible_python_interpreter)",
    )


class SiteSpec(_Strict):
    """A whole cluster of Coreflux brokers."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        title="lotdeploy site spec",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    site: Name = Field(description="site name")
    extends: LocalPath | None = Field(
        None,
        description="a file of settings shared by several sites (a fleet): its defaults, "
        "regions, ansible, pki, client_id_format and transport, under this site's own "
        "(relative to the site file; paths in it are relative to the site file too)",
    )
    topology: Literal["full-mesh"] = Field("full-mesh", description="only full-mesh for now")
    templates: LocalPath | None = Field(
        None, description="own templates directory (relative to site)"
    )
    client_id_format: ClientIdFormat = Field(
        "{node}-to-{peer}", description="CLIENT_ID; placeholders {node} {peer} {site} {region}"
    )
    defaults: Settings = Field(default_factory=lambda: Settings())
    regions: dict[Name, Settings] = Field(default_factory=dict)
    nodes: list[NodeSpec] = Field(min_length=1)
    links: list[LinkOverride] = Field(default_factory=list)
    pki: PkiSettings = Field(default_factory=lambda: PkiSettings())
    rollout: RolloutSpec | None = Field(
        None, description="roll apply out in waves with a verify gate (docs/rollout.md)"
    )
    transport: Literal["ssh", "ansible", "openssh"] = Field(
        "openssh",
        description="how lotdeploy reaches the nodes: openssh (the ssh command, its master "
        "kept 60 s between commands as Ansible's ControlPersist), ssh (fabric/paramiko, a "
        "connection per command) or ansible (ansible-runner); docs/transport.md",
    )
    ansible: AnsibleSettings = Field(default_factory=lambda: AnsibleSettings())


def json_schema() -> dict[str, object]:
    schema = SiteSpec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}

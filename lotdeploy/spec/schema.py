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
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# interface.md §1: no escape for quotes exists in LOT, and values travel in command lines.
_UNSAFE_CHARS = re.compile(r"[\"'\x00-\x1f\x7f]")


def lot_safe(value: str) -> str:
    """Reject what would break a LOT route or the command line it travels in."""
    if "\n" in value or "\r" in value:
        raise ValueError("must be a single line (no newlines)")
    bad = _UNSAFE_CHARS.search(value)
    if bad:
        char = bad.group()
        shown = repr(char) if char not in "\"'" else f"{char}"
        raise ValueError(f"contains {shown}, which LOT cannot carry safely")
    if "//" in value:
        raise ValueError("contains '//', which LOT reads as a comment")
    if value.startswith("-"):
        raise ValueError("must not start with '-' (it would read as a broker command flag)")
    if value != value.strip():
        raise ValueError("must not start or end with spaces")
    if not value:
        raise ValueError("must not be empty")
    return value


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,47}$")
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def node_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must start with a letter and contain only letters, digits, '_' or '-' (max 48)"
        )
    return value


def dns_name(value: str) -> str:
    lot_safe(value)
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
    lot_safe(value)
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
    lot_safe(value)
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
    user: LotSafe | None = Field(None, description="SSH user; default root")
    key: str | None = Field(None, description="private key file, relative to the site file")
    known_hosts: str | None = Field(None, description="known_hosts file checked strictly")
    jump: LotSafe | None = Field(None, description="jump host, [user@]host[:port]")


class BrokerSettings(_Strict):
    """How lotdeploy talks to the broker and where the broker keeps its files."""

    admin_host: HostAddress | None = Field(
        None, description="command channel host as seen from the node; default 127.0.0.1"
    )
    admin_port: Port | None = Field(None, description="command channel MQTT port; default 1883")
    admin_user: LotSafe | None = Field(None, description="admin user; default root")
    admin_password_file: str | None = Field(
        None, description="file holding the admin password (relative to the site file)"
    )
    admin_password_env: LotSafe | None = Field(
        None, description="environment variable holding the admin password"
    )
    tls_dir: str | None = Field(None, description="broker TLS directory; default /opt/coreflux/tls")
    cert_file: LotSafe | None = Field(None, description="certificate file name; default server.crt")
    key_file: LotSafe | None = Field(None, description="key file name; default server.key")
    ca_file: LotSafe | None = Field(None, description="CA bundle file name; default ca.crt")
    release_dir: str | None = Field(
        None, description="lotdeploy release dir; default /opt/lotdeploy"
    )
    reload_command: str | None = Field(
        None,
        description="shell command run on the node to pick up new TLS files; "
        "default `systemctl restart coreflux-broker`",
    )


class Settings(_Strict):
    """Settings valid at site `defaults`, per region and per node (node > region > defaults)."""

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
    username: LotSafe | None = Field(None, description="cluster username; default 'cluster'")
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
    topology: Literal["full-mesh"] = Field("full-mesh", description="only full-mesh for now")
    templates: str | None = Field(None, description="own templates directory (relative to site)")
    client_id_format: ClientIdFormat = Field(
        "{node}-to-{peer}", description="CLIENT_ID; placeholders {node} {peer} {site} {region}"
    )
    defaults: Settings = Field(default_factory=lambda: Settings())
    regions: dict[Name, Settings] = Field(default_factory=dict)
    nodes: list[NodeSpec] = Field(min_length=1)
    links: list[LinkOverride] = Field(default_factory=list)
    pki: PkiSettings = Field(default_factory=lambda: PkiSettings())


def json_schema() -> dict[str, object]:
    schema = SiteSpec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}

"""Decide every setting (node > region > defaults > built-in) and build the topology."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lotdeploy import profiles
from lotdeploy.model import (
    DEFAULT_PORT,
    DEFAULT_REGION,
    DEFAULT_TLS_PORT,
    DEFAULT_USERNAME,
    DEFAULT_VALIDITY_CROSS_REGION,
    DEFAULT_VALIDITY_IN_REGION,
    BrokerAccess,
    LinkClass,
    Mesh,
    Node,
    PkiPolicy,
    RolloutPolicy,
    Site,
    SshTarget,
    WavePolicy,
)
from lotdeploy.spec.schema import NodeSpec, Settings, SiteSpec


def layers_for(spec: SiteSpec, node: NodeSpec) -> list[Settings]:
    region = spec.regions.get(node.region or DEFAULT_REGION)
    return [layer for layer in (node, region, spec.defaults) if layer is not None]


def _pick(layers: list[Settings], attr: str, default: Any) -> Any:
    for layer in layers:
        value = getattr(layer, attr)
        if value is not None:
            return value
    return default


def _merge_block(layers: list[Settings], block: str) -> dict[str, Any]:
    """Per-key merge of a nested block (`ssh`, `broker`): nearest layer wins per key."""
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        sub = getattr(layer, block)
        if sub is not None:
            merged.update({k: v for k, v in sub.model_dump().items() if v is not None})
    return merged


def resolve_node(spec: SiteSpec, node: NodeSpec) -> Node:
    layers = layers_for(spec, node)
    tls = bool(_pick(layers, "tls", False))
    ssh = _merge_block(layers, "ssh")
    broker = _merge_block(layers, "broker")
    for key in ("key", "known_hosts"):
        if key in ssh:
            ssh[key] = Path(ssh[key])
    if "admin_password_file" in broker:
        broker["admin_password_file"] = Path(broker["admin_password_file"])
    ssh.setdefault("host", node.address)
    profile = _pick(layers, "profile", profiles.DEFAULT_PROFILE)
    # the docker block merges key by key too; it means something on a docker node only
    docker = None
    if profile == "docker":
        docker = profiles.DockerLayout(**_merge_block(layers, "docker"))
    given = profiles.resolve(
        profile,
        docker,
        tls_dir=broker.pop("tls_dir", None),
        release_dir=broker.pop("release_dir", None),
        reload_command=broker.pop("reload_command", None),
    )
    return Node(
        name=node.name,
        address=node.address,
        port=_pick(layers, "port", DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        region=node.region or DEFAULT_REGION,
        tls=tls,
        username=_pick(layers, "username", DEFAULT_USERNAME),
        password_source=_pick(layers, "password_source", None),
        message_validity_sec=_pick(layers, "message_validity_sec", DEFAULT_VALIDITY_IN_REGION),
        cross_region_message_validity_sec=_pick(
            layers, "cross_region_message_validity_sec", DEFAULT_VALIDITY_CROSS_REGION
        ),
        dns_names=tuple(node.dns_names),
        ip_addresses=tuple(node.ip_addresses),
        tags=tuple(sorted(set(node.tags))),
        ssh=SshTarget(**ssh),
        broker=BrokerAccess(
            **broker,
            tls_dir=given.tls_dir,
            release_dir=given.release_dir,
            reload_command=given.reload_command,
            profile=profile,
            docker=docker,
        ),
    )


def format_client_id(spec: SiteSpec, source: Node, target: Node) -> str:
    return spec.client_id_format.format(
        node=source.name,
        peer=target.name,
        site=spec.site,
        region=source.region,
        peer_region=target.region,
    )


def link_validity(spec: SiteSpec, source: Node, target: Node) -> tuple[int, LinkClass]:
    """Node-pair override > region-pair override > the source's link-class setting."""
    by_region: int | None = None
    for override in spec.links:
        pair = set(override.between)
        if pair == {source.name, target.name}:
            return override.message_validity_sec, "override"
        if pair == {source.region, target.region} and by_region is None:
            by_region = override.message_validity_sec
    if by_region is not None:
        return by_region, "override"
    if source.region == target.region:
        return source.message_validity_sec, "in-region"
    return source.cross_region_message_validity_sec, "cross-region"


def resolve(spec: SiteSpec, source_file: Path, base_dir: Path) -> Site:
    nodes = sorted((resolve_node(spec, n) for n in spec.nodes), key=lambda n: n.name)
    regions = sorted({n.region for n in nodes} | set(spec.regions))
    templates_dir = (base_dir / spec.templates) if spec.templates else None
    # The links are not built here: Site makes them from the nodes and this rule (the same
    # as format_client_id and link_validity above) when they are walked.
    mesh = Mesh(
        full=spec.topology == "full-mesh",
        client_id_format=spec.client_id_format,
        overrides=tuple((tuple(o.between), o.message_validity_sec) for o in spec.links),
    )
    return Site(
        name=spec.site,
        source=source_file,
        nodes=tuple(nodes),
        regions=tuple(regions),
        pki=PkiPolicy(**spec.pki.model_dump()),
        templates_dir=templates_dir,
        base_dir=base_dir,
        mesh=mesh,
        rollout=_rollout(spec),
        transport=spec.transport,
        ansible_python_interpreter=spec.ansible.python_interpreter,
        ansible_vault_password_file=(
            Path(spec.ansible.vault_password_file) if spec.ansible.vault_password_file else None
        ),
    )


def _rollout(spec: SiteSpec) -> RolloutPolicy:
    section = getattr(spec, "rollout", None)  # a partial spec (valid parts) has none
    if section is None:
        return RolloutPolicy()
    waves = tuple(
        WavePolicy(w.name or f"wave{i + 1}", tuple(w.select), w.max_fail_percentage)
        for i, w in enumerate(section.waves or ())
    )
    return RolloutPolicy(
        True,
        section.canary,
        waves,
        section.max_fail_percentage,
        section.max_failed_nodes,
        section.rollback,
        section.gate_timeout_sec,
        section.confirm_timeout_sec,
    )

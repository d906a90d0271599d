"""Put a node back on an earlier release: files, `current`, TLS files, reload, routes, users.

The releases apply keeps on the node (the last three, lotdeploy.node.release) hold
everything the node's side needs: the manifest (every file's sha256 and mode, the
credential version) and routes.lot. A restore switches `current` back, places the TLS files
of that release that differ from what the broker has (temporary name, fsync, rename, as
apply does), runs the reload command when one changed, then puts the broker's routes back:
the routes the release has are re-added where they differ from what the node runs now, the
routes it lacks are removed (only routes lotdeploy owns: lotdeploy.ownership). Users a
rollout removed are added back when their password is still in the secret store; users it
added stay (they are only accepted, nothing requires them). The state then records the
restored release, so the next plan shows the way back forward.

Both the automatic rollback of a rollout and `lotdeploy rollback` use `restore_node`.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass
from typing import Any

from lotdeploy.apply import activate
from lotdeploy.credentials import password_secret_name
from lotdeploy.errors import LotdeployError
from lotdeploy.fsutil import UnreadableFile, parse_json
from lotdeploy.lot import format_route, parse
from lotdeploy.model import Site, username_for_version
from lotdeploy.node.release import FileEntry, NodePaths, switch_back
from lotdeploy.protocol import CLUSTER_CONFIG_BLOCK
from lotdeploy.render import MANIFEST, ROUTE_FILE
from lotdeploy.rotation import KINDS
from lotdeploy.secret import Secret, scrub
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.transport.base import Transport, TransportError
from lotdeploy.values import check_bundle_name
from lotdeploy.workspace import Workspace


class RestoreError(LotdeployError):
    """A node could not be put back on the release asked for (the reason names it)."""


@dataclass
class RestoreOutcome:
    node: str
    ok: bool = True
    from_release: str | None = None
    to_release: str | None = None
    detail: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node": self.node,
            "ok": self.ok,
            "from": self.from_release,
            "to": self.to_release,
        }
        if self.detail:
            doc["detail"] = self.detail
        if self.error:
            doc["error"] = self.error
        return doc


def _q(text: str) -> str:
    return shlex.quote(text)


def node_releases(transport: Transport, site: Site, name: str) -> tuple[str | None, list[str]]:
    """The release `current` points at, and the releases kept on the node (newest first)."""
    paths = NodePaths.of(site.node(name))
    out = transport.run(
        f"echo current=$(readlink {_q(paths.current)} 2>/dev/null || true); "
        f"cd {_q(paths.releases)} 2>/dev/null && ls -1t | sed 's/^/release=/'; true",
        timeout=30,
    ).stdout
    current, kept = None, []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = posixpath.basename(value.strip())
        if key == "current" and value.isalnum():
            current = value
        elif key == "release" and value.isalnum():
            kept.append(value)
    return current, kept


def route_attrs(site: Site, name: str, route_file: str, credential_version: int) -> dict[str, Any]:
    """The state's route records (as the plan makes them) from a release's routes.lot."""
    source = site.node(name)
    # a route's peer by its name in the site's links, else by the address it goes to (a
    # release made before a take-over renamed the routes names them otherwise)
    peers = {link.route_name: site.node(link.target) for link in site.links_from(name)}
    by_address = {n.address: n for n in site.nodes if n.name != name}
    records: dict[str, Any] = {}
    for route in parse(route_file, ROUTE_FILE):
        config = route.block(CLUSTER_CONFIG_BLOCK)
        address = getattr(config.get("BROKER_ADDRESS"), "value", None) if config else None
        peer = peers.get(route.name) or by_address.get(str(address))
        if config is None or peer is None:
            continue

        def value(key: str, config: Any = config) -> Any:
            return getattr(config.get(key), "value", None)

        records[route.name] = {
            "name": route.name,
            "peer": peer.name,
            "peer_region": peer.region,
            "link_class": "in-region" if peer.region == source.region else "cross-region",
            "broker_address": str(value("BROKER_ADDRESS")),
            "broker_port": int(value("BROKER_PORT")),
            "client_id": str(value("CLIENT_ID")),
            "username": str(value("USERNAME")),
            "message_validity_sec": int(value("MESSAGE_VALIDITY_SEC")),
            "use_tls": bool(value("USE_TLS")),
            "password_version": credential_version,
        }
    return records


def restore_node(
    site: Site,
    workspace: Workspace,
    transport: Transport,
    name: str,
    target: str | None = None,
    before: NodeRecord | None = None,
) -> RestoreOutcome:
    """Put node `name` back on release `target` (default: its previous release; with
    `before`, the release that record names and its users). Raises RestoreError or a
    transport/broker error naming the node; the state changes only once the node did."""
    node = site.node(name)
    paths = NodePaths.of(node)
    store = StateStore(workspace)
    record = store.read().nodes.get(name, NodeRecord())
    target = target or (before.release if before is not None else None) or record.previous_release
    current, kept = node_releases(transport, site, name)
    outcome = RestoreOutcome(name, from_release=current, to_release=target)
    if target is None:
        raise RestoreError(f"node {name}: no earlier release is recorded to go back to")
    if target not in kept:
        have = ", ".join(kept) or "none"
        raise RestoreError(
            f"node {name}: release {target} is no longer on the node (it keeps the last "
            f"three; there: {have})"
        )
    manifest_raw = transport.get(posixpath.join(paths.release(target), MANIFEST))
    routes_raw = transport.get(posixpath.join(paths.release(target), ROUTE_FILE))
    if manifest_raw is None or routes_raw is None:
        raise RestoreError(f"node {name}: release {target} on the node is incomplete")
    try:
        manifest = parse_json(manifest_raw)
        files: dict[str, dict[str, str]] = {
            str(k): {"sha256": str(v["sha256"]), "mode": str(v["mode"])}
            for k, v in manifest["files"].items()
        }
        version = int(manifest.get("credential_version", 1))
        entries = [FileEntry(f, e["sha256"], int(e["mode"], 8)) for f, e in files.items()]
        # what a node's manifest says ends up in paths and a script: plain names, digests
        # and modes as lotdeploy writes them, or nothing is done
        for entry in entries:
            plain = entry.name == ROUTE_FILE or check_bundle_name(entry.name) is None
            digest = len(entry.sha256) == 64 and all(c in "0123456789abcdef" for c in entry.sha256)
            if not (plain and digest and 0 <= entry.mode <= 0o777):
                raise ValueError(entry.name)
    except (ValueError, KeyError, TypeError, AttributeError, UnreadableFile):
        raise RestoreError(f"node {name}: release {target} has a damaged manifest") from None

    # 1. files: the deploy script with nothing sent (lotdeploy.node.release.switch_back):
    #    the release must be whole (every file against its manifest: a damaged one is
    #    refused, nothing switched), the TLS files that differ are placed, `current` last
    entries.append(FileEntry(MANIFEST, hashlib.sha256(manifest_raw).hexdigest(), 0o644))
    if not files:
        raise RestoreError(f"node {name}: release {target} on the node lists no file")
    try:
        done_node = switch_back(transport, node, target, entries)
    except TransportError as exc:
        raise RestoreError(str(exc)) from None
    changed = list(done_node.tls_changed)
    done = [f"current -> {target}"] if current != target else []
    if changed:
        done.append(f"TLS files {', '.join(changed)}")
    # the files are back: record it before the broker steps (state true to the node)
    with store.transaction() as state:
        rec = state.nodes.setdefault(name, NodeRecord())
        if rec.release != target:
            rec.previous_release = rec.release
        rec.release = target
        rec.files = files
    if done_node.reload_error is not None:
        raise done_node.reload_error
    if done_node.reloaded:
        done.append("reloaded")

    # 2. routes: re-add those that differ, remove those the release lacks
    text = routes_raw.decode()
    wanted = route_attrs(site, name, text, version)
    texts = {r.name: format_route(r) for r in parse(text, ROUTE_FILE)}
    redo_all = "activate" in record.pending
    add = {r: texts[r] for r in wanted if redo_all or record.routes.get(r) != wanted[r]}
    owns = site.ownership.of(name)
    remove = sorted(r for r in record.routes if r not in wanted and owns(r))
    users_back = _users_to_restore(workspace, before, record)
    if add or remove or users_back:
        with activate.admin_session(site, node, transport) as client:
            if users_back:
                activate.ensure_users(client, users_back)
            if redo_all:  # the broker may run routes the record does not know of
                listed = {str(r.get("name")) for r in client.list_routes()}
                remove = sorted(set(remove) | {r for r in listed - set(wanted) if owns(r)})
            activate.apply_routes(client, name, remove, add, owns=owns)
    if add or remove:
        done.append(f"routes: {len(add)} re-added, {len(remove)} removed")
    if users_back:
        done.append(f"users back: {', '.join(sorted(users_back))}")

    with store.transaction() as state:
        rec = state.nodes.setdefault(name, NodeRecord())
        rec.routes = wanted
        rec.users = sorted(set(rec.users) | set(users_back))
        rec.pending = []
        for kind in KINDS:  # the node no longer runs this phase's files
            rotation = state.rotation(kind)
            if rotation is not None and current != target:
                key = str(rotation.phase)
                if name in rotation.applied.get(key, []):
                    rotation.applied[key] = [n for n in rotation.applied[key] if n != name]
    outcome.detail = scrub("; ".join(done) or "already on that release")
    return outcome


def _users_to_restore(
    workspace: Workspace, before: NodeRecord | None, record: NodeRecord
) -> dict[str, Secret]:
    """Users the node had before the rollout and lacks now, with their stored passwords."""
    if before is None:
        return {}
    missing = sorted(set(before.users) - set(record.users))
    if not missing:
        return {}
    secrets = workspace.secrets()
    users: dict[str, Secret] = {}
    for user in missing:
        base, _, suffix = user.rpartition("_v")
        version = int(suffix) if base and suffix.isdigit() else 1
        password = secrets.get(password_secret_name(version))
        if password is not None and username_for_version(base or user, version) == user:
            users[user] = password
    return users


def safe_error(exc: BaseException) -> str:
    """An error's words for a report (never a secret)."""
    if isinstance(exc, LotdeployError):
        return scrub(str(exc))
    return scrub(f"{type(exc).__name__}: {exc}")

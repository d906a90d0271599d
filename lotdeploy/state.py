"""The workspace's state: one versioned document, `.lotdeploy/state.json`.

Everything lotdeploy records between runs that is not a secret lives here: which credential
version the routes use, which CA is active, the phased rotations, and what each node was
last given (its routes, and once apply records them, its files, users and release). The
secret values stay in the encrypted store (`secrets.enc`), because `plan` must read this
document without a passphrase; public certificate files stay under `pki/`.

Every write goes through `StateStore.transaction()`: under the workspace lock, the document
is read and validated, changed in memory, given the next `serial`, and written atomically.
Readers never see a torn document, and a saved plan can tell whether state moved since it
was made (the serial). Every record is validated on read: a damaged or hand-edited document
is one clear error naming the file, never a crash and never silently used.

Workspaces made before this document existed kept the same facts in four files
(`state/state.json`, `credentials.json`, `rotation.json`, `pki/index.json`); they are read
once, and the first write replaces them with this document.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lotdeploy.errors import WorkspaceError
from lotdeploy.fsutil import UnreadableFile, atomic_write, read_json
from lotdeploy.workspace import Workspace

STATE_FORMAT = "lotdeploy-state"
STATE_VERSION = 1
STATE_FILE = "state.json"
#: The state of a 1,000-node site is tens of MB; nothing bigger is read (fsutil.read_json).
STATE_MAX_BYTES = 512 * 1024 * 1024
#: ca, creds: the PKI's and the cluster credential's rotations; tls, names: the phases of a
#: take-over (lotdeploy.adopt.takeover): a plain cluster moved to TLS, adopted routes moved
#: to lotdeploy's names.
ROTATION_KINDS = ("ca", "creds", "tls", "names")
LAST_PHASE = 3
#: How many finished rotations the document keeps.
HISTORY_LIMIT = 20

#: Route attributes recorded per route: what the plan compares (the password never; only
#: the credential version it came from, so plan needs no passphrase).
ROUTE_ATTRS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "peer": str,
    "peer_region": str,
    "link_class": str,
    "broker_address": str,
    "broker_port": int,
    "client_id": str,
    "username": str,
    "message_validity_sec": int,
    "use_tls": bool,
    "password_version": int,
    #: the broker secret the route reads its password from (lotdeploy.routesecret); absent inline
    "password_secret": str,
}


class StateError(WorkspaceError):
    """The state document (or an old-format file it migrates from) is damaged."""


# -- records ---------------------------------------------------------------------------------


@dataclass
class Rotation:
    """One phased rotation in progress: from `old` to `new` (CA ids or credential versions)."""

    kind: str
    phase: int
    old: str
    new: str
    started_at: str
    applied: dict[str, list[str]] = field(default_factory=dict)  # phase -> node names
    #: what the phases need beyond old and new (tls: the plain port each node kept)
    detail: dict[str, Any] = field(default_factory=dict)

    def applied_nodes(self, phase: int | None = None) -> set[str]:
        return set(self.applied.get(str(phase or self.phase), []))

    def pending(self, nodes: Iterable[str]) -> list[str]:
        """Nodes of the site on which the current phase is not applied yet."""
        done = self.applied_nodes()
        return sorted(n for n in nodes if n not in done)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "phase": self.phase,
            "old": self.old,
            "new": self.new,
            "started_at": self.started_at,
            "applied": {k: sorted(v) for k, v in sorted(self.applied.items())},
        } | ({"detail": self.detail} if self.detail else {})

    @classmethod
    def from_json(cls, doc: Any) -> Rotation:
        doc = _mapping(doc, "rotation")
        kind = _str(doc.get("kind"), "rotation kind")
        if kind not in ROTATION_KINDS:
            raise ValueError(f"unknown rotation kind {kind!r}")
        phase = _int(doc.get("phase"), "rotation phase", 1, LAST_PHASE)
        applied: dict[str, list[str]] = {}
        for key, nodes in _mapping(doc.get("applied", {}), "applied").items():
            _int(int(key) if str(key).isdigit() else None, "applied phase", 1, LAST_PHASE)
            applied[str(key)] = [_str(n, "node name") for n in _list(nodes, "applied nodes")]
        detail = _mapping(doc.get("detail", {}), "rotation detail")
        ports = _mapping(detail.get("ports", {}), "rotation ports")
        for node, port in ports.items():
            _str(node, "node name")
            _int(port, "plain port", 1, 65535)
        return cls(
            kind=kind,
            phase=phase,
            old=_str(doc.get("old"), "rotation old"),
            new=_str(doc.get("new"), "rotation new"),
            started_at=_str(doc.get("started_at"), "started_at"),
            applied=applied,
            detail=detail,
        )


#: Steps an apply records as pending on a node before it starts them, and clears once
#: done: an interrupted apply leaves them, and the next run does them first.
JOURNAL_STEPS = ("reload", "activate")

#: What a live read (refresh) found a recorded resource to be on the node, when it is not
#: what apply left: the keys of `NodeRecord.drift` are `route/NAME`, `file/NAME`,
#: `user/NAME`, `release` (where `current` points) and `timer` (a confirm-or-revert timer
#: of an earlier apply still armed).
DRIFT_KINDS = ("missing", "changed", "extra", "refused", "armed")
DRIFT_KEY = re.compile(r"^(release|timer|(route|file|user)/[^\s/]{1,255})$")
#: The node paths a record's files live under (what `NodePaths` holds).
PATH_KEYS = ("release_dir", "tls_dir")


@dataclass
class NodeRecord:
    """What a node was last given (apply writes it after every node step)."""

    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {sha256, mode}
    users: list[str] = field(default_factory=list)
    #: the release id `current` points at on the node
    release: str | None = None
    #: the release before it (what a rollback restores)
    previous_release: str | None = None
    #: steps started but not known to be finished (JOURNAL_STEPS)
    pending: list[str] = field(default_factory=list)
    #: what `doctor` learned about the node's broker (lotdeploy.doctor.BrokerFacts.to_json)
    broker: dict[str, Any] = field(default_factory=dict)
    applied_at: str | None = None
    #: where `files` were written: {"release_dir", "tls_dir"} (absent in older records)
    paths: dict[str, str] = field(default_factory=dict)
    #: what a refresh found differing from this record (DRIFT_KEY -> one of DRIFT_KINDS);
    #: the plan restores each, and apply clears what it restored
    drift: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"routes": self.routes}
        if self.files:
            doc["files"] = self.files
        if self.paths:
            doc["paths"] = dict(sorted(self.paths.items()))
        if self.drift:
            doc["drift"] = dict(sorted(self.drift.items()))
        if self.users:
            doc["users"] = sorted(self.users)
        if self.release is not None:
            doc["release"] = self.release
        if self.previous_release is not None:
            doc["previous_release"] = self.previous_release
        if self.pending:
            doc["pending"] = sorted(set(self.pending))
        if self.broker:
            doc["broker"] = self.broker
        if self.applied_at is not None:
            doc["applied_at"] = self.applied_at
        return doc

    @classmethod
    def from_json(cls, doc: Any, node: str) -> NodeRecord:
        doc = _mapping(doc, f"node {node}")
        routes = {
            _str(name, "route name"): _route(attrs, f"node {node} route {name}")
            for name, attrs in _mapping(doc.get("routes", {}), f"node {node} routes").items()
        }
        files: dict[str, dict[str, str]] = {}
        for name, entry in _mapping(doc.get("files", {}), f"node {node} files").items():
            entry = _mapping(entry, f"node {node} file {name}")
            files[_str(name, "file name")] = {
                "sha256": _str(entry.get("sha256"), "sha256"),
                "mode": _str(entry.get("mode"), "mode"),
            }
        users = [_str(u, "user") for u in _list(doc.get("users", []), f"node {node} users")]
        pending = [_str(p, "pending step") for p in _list(doc.get("pending", []), "pending")]
        if any(step not in JOURNAL_STEPS for step in pending):
            raise ValueError(f"node {node}: unknown pending step")
        paths = {
            _str(k, "path key"): _str(v, "path")
            for k, v in _mapping(doc.get("paths", {}), f"node {node} paths").items()
        }
        if set(paths) - set(PATH_KEYS) or any(not v.startswith("/") for v in paths.values()):
            raise ValueError(f"node {node}: paths must be absolute {' and '.join(PATH_KEYS)}")
        drift = {
            _str(k, "drift key"): _str(v, "drift kind")
            for k, v in _mapping(doc.get("drift", {}), f"node {node} drift").items()
        }
        for key, kind in drift.items():
            if not DRIFT_KEY.match(key) or kind not in DRIFT_KINDS:
                raise ValueError(f"node {node}: unknown drift entry {key!r}: {kind!r}")
        return cls(
            routes,
            files,
            users,
            _release_id(doc.get("release")),
            _release_id(doc.get("previous_release")),
            pending,
            _mapping(doc.get("broker", {}), f"node {node} broker facts"),
            _optional_str(doc.get("applied_at"), "applied_at"),
            paths,
            drift,
        )


#: A route name as a broker takes it (protocol.ROUTE_NAME_PATTERN).
_ROUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass
class AdoptedRoutes:
    """One node's hand-made routes lotdeploy took over (`lotdeploy import`): the route it
    keeps to each peer, under its name and client id, and the other hand-made routes it
    owns there (duplicates, strays), which the plan removes. They are lotdeploy's to change
    from then on (lotdeploy.ownership); no secret."""

    routes: dict[str, str] = field(default_factory=dict)  # peer -> route name
    client_ids: dict[str, str] = field(default_factory=dict)  # peer -> client id
    remove: dict[str, str] = field(default_factory=dict)  # route name -> why it goes

    def to_json(self) -> dict[str, Any]:
        return {
            "routes": dict(sorted(self.routes.items())),
            "client_ids": dict(sorted(self.client_ids.items())),
            "remove": dict(sorted(self.remove.items())),
        }

    @classmethod
    def from_json(cls, doc: Any, node: str) -> AdoptedRoutes:
        doc = _mapping(doc, f"adopted routes of node {node}")
        routes = {
            _str(peer, "peer"): _route_name(name, f"node {node} adopted route")
            for peer, name in _mapping(doc.get("routes", {}), "adopted routes").items()
        }
        client_ids = {
            _str(peer, "peer"): _str(cid, "client id")
            for peer, cid in _mapping(doc.get("client_ids", {}), "adopted client ids").items()
        }
        remove = {
            _route_name(name, f"node {node} route to remove"): _str(why, "why")
            for name, why in _mapping(doc.get("remove", {}), "adopted removals").items()
        }
        if len(set(routes.values())) != len(routes):
            raise ValueError(f"node {node}: one adopted route name for two peers")
        return cls(routes, client_ids, remove)


ROLLOUT_STATUSES = ("running", "paused", "failed", "rolled-back")


@dataclass
class RolloutRecord:
    """Where a rollout stands (lotdeploy.rollout.run), so a pause survives the process and
    `apply --continue` knows which wave is next. Holds names and records, no secret."""

    id: str
    site_digest: str
    waves: list[dict[str, Any]]  # {"name", "nodes", "max_fail_percentage"} in order
    done: int = 0  # waves applied and gated
    status: str = "running"
    pause_after: str | None = None
    failed: list[str] = field(default_factory=list)  # failed within the budget
    #: each node's record before this rollout changed it (what an automatic rollback restores)
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site_digest": self.site_digest,
            "waves": self.waves,
            "done": self.done,
            "status": self.status,
            "pause_after": self.pause_after,
            "failed": sorted(self.failed),
            "before": self.before,
            "started_at": self.started_at,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, doc: Any) -> RolloutRecord:
        doc = _mapping(doc, "rollout")
        waves = [_mapping(w, "rollout wave") for w in _list(doc.get("waves", []), "waves")]
        for wave in waves:
            _str(wave.get("name"), "wave name")
            [_str(n, "node name") for n in _list(wave.get("nodes"), "wave nodes")]
        status = _str(doc.get("status"), "rollout status")
        if status not in ROLLOUT_STATUSES:
            raise ValueError(f"unknown rollout status {status!r}")
        before = _mapping(doc.get("before", {}), "rollout before")
        for name, record in before.items():
            NodeRecord.from_json(record, str(name))  # validated like any node record
        return cls(
            id=_str(doc.get("id"), "rollout id"),
            site_digest=_str(doc.get("site_digest"), "rollout site_digest"),
            waves=waves,
            done=_int(doc.get("done", 0), "rollout done", 0, len(waves)),
            status=status,
            pause_after=_optional_str(doc.get("pause_after"), "pause_after"),
            failed=[_str(n, "node name") for n in _list(doc.get("failed", []), "failed")],
            before=before,
            started_at=_str(doc.get("started_at", ""), "started_at"),
            reason=_str(doc.get("reason", ""), "reason"),
        )


@dataclass
class State:
    """The whole document, as plain records. Change it only inside a transaction."""

    serial: int = 0
    lineage: str = ""
    site_digest: str | None = None
    credential_version: int = 1
    credential_generated: bool = False
    #: the active password is one an import took over from the brokers (typed by hand):
    #: a take-over replaces it with a generated one
    credential_adopted: bool = False
    active_ca: str | None = None
    rotations: dict[str, Rotation] = field(default_factory=dict)
    rotation_history: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    rollout: RolloutRecord | None = None
    #: node -> the hand-made routes lotdeploy took over there (lotdeploy.ownership)
    adopted: dict[str, AdoptedRoutes] = field(default_factory=dict)

    def rotation(self, kind: str) -> Rotation | None:
        return self.rotations.get(kind)

    def node_routes(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {name: record.routes for name, record in self.nodes.items()}

    def to_json(self) -> dict[str, Any]:
        return (
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "serial": self.serial,
                "lineage": self.lineage,
                "site_digest": self.site_digest,
                "credentials": {
                    "active_version": self.credential_version,
                    "generated": self.credential_generated,
                }
                | ({"adopted": True} if self.credential_adopted else {}),
                "pki": {"active_ca": self.active_ca},
                "rotations": {
                    "active": {k: r.to_json() for k, r in sorted(self.rotations.items())},
                    "history": self.rotation_history[-HISTORY_LIMIT:],
                },
                "nodes": {name: rec.to_json() for name, rec in sorted(self.nodes.items())},
            }
            | ({"rollout": self.rollout.to_json()} if self.rollout is not None else {})
            | (
                {"adopted": {n: a.to_json() for n, a in sorted(self.adopted.items())}}
                if self.adopted
                else {}
            )
        )

    @classmethod
    def from_json(cls, doc: Any) -> State:
        doc = _mapping(doc, "document")
        if doc.get("format") != STATE_FORMAT:
            raise ValueError("not a lotdeploy state document")
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {doc.get('version')!r}")
        credentials = _mapping(doc.get("credentials", {}), "credentials")
        pki = _mapping(doc.get("pki", {}), "pki")
        rotations = _mapping(doc.get("rotations", {}), "rotations")
        state = cls(
            serial=_int(doc.get("serial"), "serial", 0),
            lineage=_str(doc.get("lineage", ""), "lineage"),
            site_digest=_optional_str(doc.get("site_digest"), "site_digest"),
            credential_version=_int(credentials.get("active_version", 1), "credential version", 1),
            credential_generated=_bool(credentials.get("generated", False), "generated"),
            credential_adopted=_bool(credentials.get("adopted", False), "adopted"),
            active_ca=_ca_id(pki.get("active_ca")),
            rotations=_rotations(rotations.get("active", {})),
            rotation_history=[
                _mapping(h, "history entry") for h in _list(rotations.get("history", []), "history")
            ],
            nodes={
                _str(name, "node name"): NodeRecord.from_json(rec, str(name))
                for name, rec in _mapping(doc.get("nodes", {}), "nodes").items()
            },
            rollout=None if doc.get("rollout") is None else RolloutRecord.from_json(doc["rollout"]),
            adopted={
                _str(name, "node name"): AdoptedRoutes.from_json(rec, str(name))
                for name, rec in _mapping(doc.get("adopted", {}), "adopted").items()
            },
        )
        state.check()
        return state

    def check(self) -> None:
        """Cross-record consistency: what no single field's type can say."""
        creds = self.rotations.get("creds")
        if creds is not None:
            old, new = _version(creds.old), _version(creds.new)
            if new != old + 1:
                raise ValueError("credential rotation must go from version N to N+1")
            expected = old if creds.phase == 1 else new
            if self.credential_version != expected:
                raise ValueError(
                    f"credential version {self.credential_version} does not match the "
                    f"credential rotation in phase {creds.phase} ({creds.old} -> {creds.new})"
                )
        ca = self.rotations.get("ca")
        if ca is not None:
            _ca_id(ca.old)
            _ca_id(ca.new)
            if self.active_ca not in (None, ca.old):
                raise ValueError("the active CA is not the one the CA rotation started from")


# -- the store -------------------------------------------------------------------------------


class StateStore:
    """Read the state document; change it only through `transaction()`."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    @property
    def path(self) -> Path:
        return self.workspace.root / STATE_FILE

    def read(self) -> State:
        """The current state (migrated in memory from old files if need be); never writes.

        Inside a transaction of this run, that transaction's state as changed so far.
        """
        with self.workspace.state_lock:
            open_state = self.workspace.open_state
            if isinstance(open_state, State):
                return copy.deepcopy(open_state)
            return self._read_file()

    def _read_file(self) -> State:
        try:
            doc = read_json(self.path, STATE_MAX_BYTES)
        except UnreadableFile as exc:
            if exc.missing:
                return migrate_legacy(self.workspace)
            damaged = f"the state is damaged: it {exc.reason}"
            why = damaged if exc.malformed else exc.about("the state")
            raise StateError(
                f"{self.path}: {why}; restore it from a backup (nothing was changed)"
            ) from None
        try:
            return State.from_json(doc)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(
                f"{self.path}: the state is damaged ({exc}); restore it from a backup "
                "(nothing was changed)"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[State]:
        """Change the state: read under the workspace lock, write once when the block ends.

        Nothing is written when the block raises or changes nothing. A write gets the next
        serial and, after a migration, removes the old-format files it replaced.
        """
        with self.workspace.state_lock:  # one transaction at a time across threads
            open_state = self.workspace.open_state
            if isinstance(open_state, State):  # nested: one document, written by the outer
                yield open_state
                return
            yield from self._transaction()

    def _transaction(self) -> Iterator[State]:
        with self.workspace.lock("state"):
            before = self.read()
            state = copy.deepcopy(before)
            self.workspace.open_state = state
            try:
                yield state
            finally:
                self.workspace.open_state = None
            migrating = not self.path.exists()
            if state.to_json() == before.to_json() and not migrating:
                return
            try:
                state.check()
            except ValueError as exc:  # a bug, never a user's doing: refuse to record it
                raise StateError(
                    f"{self.path}: refusing to record inconsistent state: {exc}"
                ) from None
            state.serial = before.serial + 1
            state.lineage = state.lineage or uuid.uuid4().hex
            self._write(state)
            if migrating:
                remove_legacy(self.workspace)

    def _write(self, state: State) -> None:
        text = json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n"
        try:
            atomic_write(self.path, text, mode=0o600)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot write the state: {exc.strerror}") from None


# -- the old files ---------------------------------------------------------------------------


def legacy_paths(workspace: Workspace) -> dict[str, Path]:
    root = workspace.root
    return {
        "routes": root / "state" / "state.json",
        "credentials": root / "credentials.json",
        "rotations": root / "rotation.json",
        "pki": root / "pki" / "index.json",
    }


def migrate_legacy(workspace: Workspace) -> State:
    """State from the files of workspaces made before the one document (empty if none)."""
    state = State()
    for what, path in legacy_paths(workspace).items():
        try:
            doc = read_json(path, STATE_MAX_BYTES)
        except UnreadableFile as exc:
            if exc.missing:
                continue
            raise StateError(
                f"{path}: {exc.about(f'the old-format {what} state')}; restore it from a "
                "backup (nothing was changed)"
            ) from None
        try:
            _apply_legacy(state, what, doc)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(
                f"{path}: the old-format {what} state is damaged ({exc}); restore it from a "
                "backup (nothing was changed)"
            ) from None
    try:
        state.check()
    except ValueError as exc:
        raise StateError(
            f"{workspace.root}: the old-format state files disagree ({exc}); restore them "
            "from a backup (nothing was changed)"
        ) from None
    return state


def _apply_legacy(state: State, what: str, doc: Any) -> None:
    doc = _mapping(doc, what)
    if what == "routes":
        if doc.get("format") != 1:
            raise ValueError("unknown format")
        state.site_digest = _optional_str(doc.get("site_digest"), "site_digest")
        for node, routes in _mapping(doc.get("routes", {}), "routes").items():
            state.nodes[_str(node, "node")] = NodeRecord.from_json({"routes": routes}, str(node))
    elif what == "credentials":
        state.credential_version = _int(doc.get("active_version"), "active_version", 1)
        state.credential_generated = _bool(doc.get("generated"), "generated")
    elif what == "rotations":
        if doc.get("version") != 1:
            raise ValueError("unknown version")
        state.rotations = _rotations(doc.get("active", {}))
        state.rotation_history = [
            _mapping(h, "history") for h in _list(doc.get("history", []), "history")
        ]
    elif what == "pki":
        state.active_ca = _ca_id(doc.get("active_ca"))


def remove_legacy(workspace: Workspace) -> None:
    for path in legacy_paths(workspace).values():
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"{path}: cannot remove the migrated file: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # not there, or holds something that is not ours
        (workspace.root / "state").rmdir()


# -- validation helpers ----------------------------------------------------------------------


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false")
    return value


def _int(value: Any, what: str, low: int = 0, high: int = 2**31) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}")
    return value


def _version(text: str) -> int:
    if not text.isdigit():
        raise ValueError("credential versions must be whole numbers")
    return int(text)


def _route_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ROUTE_NAME.fullmatch(value):
        raise ValueError(f"{what} must be a route name")
    return value


def _ca_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isalnum() or not value.isascii() or len(value) > 64:
        raise ValueError("a CA id must be a short hex string")
    return value


def _release_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isalnum() or not value.isascii() or len(value) > 64:
        raise ValueError("a release id must be a short hex string")
    return value


def _route(attrs: Any, what: str) -> dict[str, Any]:
    attrs = _mapping(attrs, what)
    for key, value in attrs.items():
        expected = ROUTE_ATTRS.get(key)
        if expected is None:
            raise ValueError(f"{what}: unknown attribute {key!r}")
        if isinstance(value, bool) and expected is int:
            raise ValueError(f"{what}: {key} must be a number")
        if not isinstance(value, expected):
            raise ValueError(f"{what}: {key} has the wrong type")
    return attrs


def _rotations(value: Any) -> dict[str, Rotation]:
    active = {}
    for kind, doc in _mapping(value, "active rotations").items():
        rotation = Rotation.from_json(doc)
        if rotation.kind != kind:
            raise ValueError("rotation kind mismatch")
        active[kind] = rotation
    return active

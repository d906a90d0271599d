"""Phased rotations (CA and cluster credential): a small state machine in `rotation.json`.

Each rotation has three phases. A phase is *applied* on a node once apply has pushed that
phase's files/commands to it and called `mark_phase_applied`. The next phase may start only
when the current one is applied on every node of the site: that ordering is what keeps every
link working throughout (see docs/pki.md). The file is written atomically; it holds no secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from lotdeploy.errors import PkiError, WorkspaceError
from lotdeploy.fsutil import atomic_write
from lotdeploy.workspace import Workspace

RotationKind = Literal["ca", "creds"]
KINDS: tuple[RotationKind, ...] = ("ca", "creds")
LAST_PHASE = 3
STATE_VERSION = 1
LABELS: dict[str, str] = {"ca": "CA rotation", "creds": "credential rotation"}


@dataclass
class Rotation:
    """One rotation in progress: from `old` to `new` (CA ids or credential versions)."""

    kind: str
    phase: int
    old: str
    new: str
    started_at: str
    applied: dict[str, list[str]] = field(default_factory=dict)  # phase -> node names

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
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Rotation:
        phase = int(doc["phase"])
        if not 1 <= phase <= LAST_PHASE or doc["kind"] not in KINDS:
            raise ValueError("bad phase or kind")
        applied = {str(k): [str(n) for n in v] for k, v in dict(doc.get("applied", {})).items()}
        return cls(
            kind=str(doc["kind"]),
            phase=phase,
            old=str(doc["old"]),
            new=str(doc["new"]),
            started_at=str(doc["started_at"]),
            applied=applied,
        )


@dataclass
class RotationState:
    """Every rotation in progress plus a short history of finished ones."""

    active: dict[str, Rotation] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def path(workspace: Workspace) -> Path:
        return workspace.root / "rotation.json"

    @classmethod
    def load(cls, workspace: Workspace) -> RotationState:
        path = cls.path(workspace)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise WorkspaceError(
                f"{path}: cannot read the rotation state: {exc.strerror}"
            ) from None
        try:
            doc = json.loads(text)
            if doc.get("version") != STATE_VERSION:
                raise ValueError("unknown version")
            active = {
                kind: Rotation.from_json(value)
                for kind, value in dict(doc.get("active", {})).items()
            }
            if any(kind != rot.kind for kind, rot in active.items()):
                raise ValueError("kind mismatch")
            history = [dict(h) for h in doc.get("history", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise WorkspaceError(
                f"{path}: the rotation state is damaged; restore it from a backup "
                "(nothing was changed)"
            ) from None
        return cls(active, history)

    def save(self, workspace: Workspace) -> None:
        workspace.ensure()
        doc = {
            "version": STATE_VERSION,
            "active": {k: r.to_json() for k, r in sorted(self.active.items())},
            "history": self.history[-20:],
        }
        try:
            atomic_write(self.path(workspace), json.dumps(doc, indent=2) + "\n", mode=0o600)
        except OSError as exc:
            raise WorkspaceError(
                f"{self.path(workspace)}: cannot write the rotation state: {exc.strerror}"
            ) from None


def load_rotation(workspace: Workspace, kind: RotationKind) -> Rotation | None:
    """The rotation of `kind` in progress, or None."""
    return RotationState.load(workspace).active.get(kind)


def current_phase(workspace: Workspace, kind: RotationKind) -> int | None:
    """Phase in progress (1-3) or None; apply records it before rendering a node."""
    rotation = load_rotation(workspace, kind)
    return rotation.phase if rotation else None


def mark_phase_applied(
    workspace: Workspace, kind: RotationKind, node_name: str, phase: int | None = None
) -> bool:
    """THE seam for apply: the current phase of `kind` now runs on `node_name`.

    Pass the `phase` that was current when the node's files were rendered: if the rotation
    has moved on since, the mark is refused (the node runs stale files). Returns False when
    no rotation of `kind` is in progress (nothing to record).
    """
    state = RotationState.load(workspace)
    rotation = state.active.get(kind)
    if rotation is None:
        return False
    if phase is not None and phase != rotation.phase:
        raise PkiError(
            f"node {node_name} got files for {LABELS[kind]} phase {phase}, but the rotation is "
            f"in phase {rotation.phase} now: render and apply again"
        )
    nodes = rotation.applied.setdefault(str(rotation.phase), [])
    if node_name not in nodes:
        nodes.append(node_name)
        nodes.sort()
        state.save(workspace)
    return True


def phase_complete(workspace: Workspace, kind: RotationKind, nodes: Iterable[str]) -> bool:
    """True when the current phase is applied on every one of `nodes` (or none in progress)."""
    rotation = load_rotation(workspace, kind)
    return rotation is None or not rotation.pending(nodes)


def require_phase_complete(rotation: Rotation, nodes: Iterable[str], command: str) -> None:
    """Refuse to go on while some node has not got the current phase yet."""
    pending = rotation.pending(nodes)
    if pending:
        shown = ", ".join(pending[:8]) + (
            f" and {len(pending) - 8} more" if len(pending) > 8 else ""
        )
        raise PkiError(
            f"{LABELS[rotation.kind]} phase {rotation.phase} is not applied on {shown} yet: "
            f"run `lotdeploy apply` first, then `{command}` again"
        )


def start_rotation(
    workspace: Workspace, kind: RotationKind, old: str, new: str, now: datetime
) -> Rotation:
    state = RotationState.load(workspace)
    if kind in state.active:
        raise PkiError(f"a {LABELS[kind]} is already in progress")
    rotation = Rotation(kind, 1, old, new, now.isoformat(timespec="seconds"))
    state.active[kind] = rotation
    state.save(workspace)
    return rotation


def advance_rotation(
    workspace: Workspace, kind: RotationKind, nodes: Iterable[str], now: datetime, command: str
) -> Rotation | None:
    """Move to the next phase (refused while the current one is pending somewhere).

    After phase 3 is applied everywhere the rotation is finished: it moves to the history
    and None is returned.
    """
    state = RotationState.load(workspace)
    rotation = state.active.get(kind)
    if rotation is None:
        raise PkiError(f"no {LABELS[kind]} is in progress")
    require_phase_complete(rotation, nodes, command)
    if rotation.phase == LAST_PHASE:
        del state.active[kind]
        state.history.append(
            {**rotation.to_json(), "finished_at": now.isoformat(timespec="seconds")}
        )
        state.save(workspace)
        return None
    rotation.phase += 1
    state.save(workspace)
    return rotation

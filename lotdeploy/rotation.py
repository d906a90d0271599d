"""Phased rotations (CA and cluster credential), used by the PKI and the credentials alike.

Each rotation has three phases. A phase is *applied* on a node once apply has pushed that
phase's files/commands to it and called `mark_phase_applied`. The next phase may start only
when the current one is applied on every node of the site: that ordering is what keeps every
link working throughout (see docs/pki.md). The rotations live in the state document
(lotdeploy.state); they hold no secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from lotdeploy.errors import PkiError
from lotdeploy.state import LAST_PHASE, ROTATION_KINDS, Rotation, State, StateStore
from lotdeploy.workspace import Workspace

__all__ = [
    "KINDS",
    "LABELS",
    "LAST_PHASE",
    "Rotation",
    "advance_rotation",
    "current_phase",
    "load_rotation",
    "mark_phase_applied",
    "phase_complete",
    "require_phase_complete",
    "start_rotation",
]

RotationKind = Literal["ca", "creds", "tls", "names"]
KINDS: tuple[str, ...] = ROTATION_KINDS
LABELS: dict[str, str] = {
    "ca": "CA rotation",
    "creds": "credential rotation",
    "tls": "take-over to TLS",
    "names": "take-over of the route names",
}


def load_rotation(workspace: Workspace, kind: RotationKind) -> Rotation | None:
    """The rotation of `kind` in progress, or None."""
    return StateStore(workspace).read().rotation(kind)


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
    with StateStore(workspace).transaction() as state:
        rotation = state.rotation(kind)
        if rotation is None:
            return False
        if phase is not None and phase != rotation.phase:
            raise PkiError(
                f"node {node_name} got files for {LABELS[kind]} phase {phase}, but the rotation "
                f"is in phase {rotation.phase} now: render and apply again"
            )
        nodes = rotation.applied.setdefault(str(rotation.phase), [])
        if node_name not in nodes:
            nodes.append(node_name)
            nodes.sort()
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
            f"deploy the current phase to every node first, then run `{command}` again"
        )


def start_rotation(state: State, kind: RotationKind, old: str, new: str, now: datetime) -> Rotation:
    """Record a new rotation in phase 1 (inside the caller's state transaction)."""
    if kind in state.rotations:
        raise PkiError(f"a {LABELS[kind]} is already in progress")
    rotation = Rotation(kind, 1, old, new, now.isoformat(timespec="seconds"))
    state.rotations[kind] = rotation
    return rotation


def advance_rotation(
    state: State, kind: RotationKind, nodes: Iterable[str], now: datetime, command: str
) -> Rotation | None:
    """Move to the next phase (refused while the current one is pending somewhere).

    After phase 3 is applied everywhere the rotation is finished: it moves to the history
    and None is returned. Runs inside the caller's state transaction.
    """
    rotation = state.rotation(kind)
    if rotation is None:
        raise PkiError(f"no {LABELS[kind]} is in progress")
    require_phase_complete(rotation, nodes, command)
    if rotation.phase == LAST_PHASE:
        del state.rotations[kind]
        state.rotation_history.append(
            {**rotation.to_json(), "finished_at": now.isoformat(timespec="seconds")}
        )
        return None
    rotation.phase += 1
    return rotation

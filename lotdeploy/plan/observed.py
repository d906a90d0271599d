"""Observed state: what the nodes are known to run, as the workspace recorded it.

Route attributes are recorded without the password, only the credential version it came
from, so `plan` can detect a password change without ever needing the passphrase. Apply
records what it did after every node step. A refresh (lotdeploy.plan.live) adds what the
live nodes showed: what is missing there is not observed, what differs is marked, so the
plan restores both. Until a node was applied there is no record, and everything is a
creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lotdeploy.plan.live import corrected
from lotdeploy.state import NodeRecord, State, StateStore
from lotdeploy.workspace import Workspace


@dataclass
class Observed:
    #: node -> route name -> recorded attributes (lotdeploy.plan.desired.DesiredRoute.attrs);
    #: a route a refresh found on the broker but never applied has no attributes ({})
    routes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    site_digest: str | None = None
    #: node -> broker users recorded as created there (None: not recorded)
    users: dict[str, list[str]] = field(default_factory=dict)
    #: node -> file name -> {sha256, mode}, as recorded by apply
    files: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    #: the state document's serial this was read at (a saved plan checks it)
    serial: int = 0
    #: nodes an apply has given something (a record made only by `doctor` does not count)
    applied: set[str] = field(default_factory=set)
    #: node -> {"release_dir", "tls_dir"} its recorded files are under (absent: not recorded)
    paths: dict[str, dict[str, str]] = field(default_factory=dict)
    #: node -> what a refresh found differing (lotdeploy.plan.live drift entries)
    drift: dict[str, dict[str, str]] = field(default_factory=dict)
    #: node -> hand-made route an import took over to remove -> why (State.adopted)
    removals: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: State) -> Observed:
        # A record made only by `doctor` (broker facts, nothing applied) is no applied node.
        nodes = {
            n: corrected(r, r.drift) if r.drift else r
            for n, r in state.nodes.items()
            if r.routes or r.files or r.release
        }
        return cls(
            routes={name: r.routes for name, r in nodes.items()},
            site_digest=state.site_digest,
            # a node no apply finished on (its files recorded, then a reload or a later step
            # failed; no routes recorded either) has no users yet unless recorded: none, so
            # the plan creates them. Records with routes but no users predate user records.
            users={
                name: r.users
                for name, r in nodes.items()
                if r.users or not (r.applied_at or r.routes)
            },
            files={name: r.files for name, r in nodes.items() if r.files},
            serial=state.serial,
            applied=set(nodes),
            paths={name: r.paths for name, r in nodes.items() if r.paths},
            drift={name: r.drift for name, r in nodes.items() if r.drift},
            removals={n: a.remove for n, a in state.adopted.items() if a.remove},
        )

    @classmethod
    def load(cls, workspace: Workspace) -> Observed:
        return cls.from_state(StateStore(workspace).read())

    def __post_init__(self) -> None:
        if not self.applied:  # built by hand (tests, old tools): every recorded node
            self.applied = set(self.routes) | set(self.files)

    def save(self, workspace: Workspace) -> None:
        """Record these routes as what the nodes run (apply's job; tests use it too)."""
        with StateStore(workspace).transaction() as state:
            state.site_digest = self.site_digest
            for node in set(state.nodes) - set(self.routes):
                del state.nodes[node]
            for node, routes in self.routes.items():
                state.nodes.setdefault(node, NodeRecord()).routes = routes

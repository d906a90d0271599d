"""Observed state: what the nodes are known to run, as the workspace recorded it.

Route attributes are recorded without the password, only the credential version it came
from, so `plan` can detect a password change without ever needing the passphrase. Apply
records what it did after every node step; `plan --refresh` will add live facts read from
the nodes. Until a node was applied there is no record, and everything is a creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lotdeploy.state import NodeRecord, State, StateStore
from lotdeploy.workspace import Workspace


@dataclass
class Observed:
    #: node -> route name -> recorded attributes (lotdeploy.plan.desired.DesiredRoute.attrs)
    routes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    site_digest: str | None = None
    #: node -> broker users recorded as created there (None: not recorded)
    users: dict[str, list[str]] = field(default_factory=dict)
    #: node -> file name -> {sha256, mode}, as recorded by apply
    files: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    #: the state document's serial this was read at (a saved plan checks it)
    serial: int = 0

    @classmethod
    def from_state(cls, state: State) -> Observed:
        return cls(
            routes=state.node_routes(),
            site_digest=state.site_digest,
            users={name: rec.users for name, rec in state.nodes.items() if rec.users},
            files={name: rec.files for name, rec in state.nodes.items() if rec.files},
            serial=state.serial,
        )

    @classmethod
    def load(cls, workspace: Workspace) -> Observed:
        return cls.from_state(StateStore(workspace).read())

    def save(self, workspace: Workspace) -> None:
        """Record these routes as what the nodes run (apply's job; tests use it too)."""
        with StateStore(workspace).transaction() as state:
            state.site_digest = self.site_digest
            for node in set(state.nodes) - set(self.routes):
                del state.nodes[node]
            for node, routes in self.routes.items():
                state.nodes.setdefault(node, NodeRecord()).routes = routes

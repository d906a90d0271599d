"""Known state: what the workspace recorded the nodes run after the last apply.

Route attributes are stored without the password; only the credential version it came
from, so `plan` can detect a password change without ever needing the passphrase.
Apply (a later issue) writes it; until then there is none and every route is a creation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.errors import WorkspaceError
from lotdeploy.fsutil import atomic_write
from lotdeploy.workspace import Workspace

STATE_FORMAT = 1


@dataclass
class KnownState:
    #: node -> route name -> attributes (as in compiler.routes.route_settings + password_version)
    routes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    site_digest: str | None = None

    @staticmethod
    def path(workspace: Workspace) -> Any:
        return workspace.state_dir / "state.json"

    @classmethod
    def load(cls, workspace: Workspace) -> KnownState:
        path = cls.path(workspace)
        if not path.exists():
            return cls()
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != STATE_FORMAT:
                raise ValueError("unknown format")
            return cls(routes=doc["routes"], site_digest=doc.get("site_digest"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise WorkspaceError(
                f"{path}: state file is unreadable; restore it from backup or remove it "
                "(the next plan then treats every route as new)"
            ) from None

    def save(self, workspace: Workspace) -> None:
        doc = {"format": STATE_FORMAT, "site_digest": self.site_digest, "routes": self.routes}
        workspace.ensure()
        atomic_write(self.path(workspace), json.dumps(doc, indent=1, sort_keys=True) + "\n")

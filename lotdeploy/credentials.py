"""The shared cluster credential: generated on first use, versioned, kept in the secret store.

Non-secret metadata (which version the routes use) lives in `credentials.json` in the
workspace, so `plan` can tell what will change without the passphrase; the password itself
lives only in the encrypted secret store under `cluster-password-v<N>`.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import asdict, dataclass
from pathlib import Path

from lotdeploy.errors import WorkspaceError
from lotdeploy.fsutil import atomic_write
from lotdeploy.secret import Secret
from lotdeploy.workspace import SecretStore, Workspace

# Letters and digits only: safe inside a LOT string and on a broker command line
# (`-addUser <user> <password>`); 32 of them carry ~190 bits.
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32


def generate_password() -> Secret:
    return Secret("".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH)))


def password_secret_name(version: int) -> str:
    return f"cluster-password-v{version}"


@dataclass
class CredentialState:
    """Which credential version the routes use; rotation phases extend this later."""

    active_version: int = 1
    #: True once a password for active_version exists in the secret store.
    generated: bool = False

    @classmethod
    def path(cls, workspace: Workspace) -> Path:
        return workspace.root / "credentials.json"

    @classmethod
    def load(cls, workspace: Workspace) -> CredentialState:
        path = cls.path(workspace)
        if not path.exists():
            return cls()
        try:
            doc = json.loads(path.read_text())
            return cls(active_version=int(doc["active_version"]), generated=bool(doc["generated"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise WorkspaceError(f"{path}: unreadable credential state; restore it from backup") from None

    def save(self, workspace: Workspace) -> None:
        workspace.ensure()
        atomic_write(self.path(workspace), json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def cluster_password(workspace: Workspace, store: SecretStore | None = None) -> Secret:
    """The password routes carry now, generated (and recorded) on first use."""
    state = CredentialState.load(workspace)
    store = store or workspace.secrets()
    password = store.get_or_create(password_secret_name(state.active_version), generate_password)
    if not state.generated:
        state.generated = True
        state.save(workspace)
    return password

"""The shared cluster credential: generated on first use, versioned, kept in the secret store.

Non-secret metadata (which version the routes use) lives in the state document
(lotdeploy.state), so `plan` can tell what will change without the passphrase; the password
itself lives only in the encrypted secret store under `cluster-password-v<N>`.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lotdeploy.errors import SecretStoreError
from lotdeploy.model import Site, username_for_version
from lotdeploy.rotation import (
    LAST_PHASE,
    Rotation,
    advance_rotation,
    load_rotation,
    require_phase_complete,
    start_rotation,
)
from lotdeploy.secret import Secret
from lotdeploy.state import StateStore
from lotdeploy.workspace import SecretStore, Workspace

__all__ = [
    "CredentialState",
    "advance_creds_rotation",
    "broker_users",
    "cluster_password",
    "cluster_username",
    "generate_password",
    "password_secret_name",
    "retired_users",
    "username_for_version",
]

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
        """The file that records it: the workspace's state document."""
        return StateStore(workspace).path

    @classmethod
    def load(cls, workspace: Workspace) -> CredentialState:
        state = StateStore(workspace).read()
        return cls(active_version=state.credential_version, generated=state.credential_generated)

    def save(self, workspace: Workspace) -> None:
        with StateStore(workspace).transaction() as state:
            state.credential_version = self.active_version
            state.credential_generated = self.generated


def cluster_password(workspace: Workspace, store: SecretStore | None = None) -> Secret:
    """The password routes carry now, generated (and recorded) on first use.

    Generating is the explicit first-render step the plan reports. Once the state says the
    password exists, a store without it is an error, never a reason to mint a new one (an
    edited state or a store from another workspace would otherwise change every route).
    """
    state = CredentialState.load(workspace)
    store = store or workspace.secrets()
    name = password_secret_name(state.active_version)
    existing = store.get(name)
    if existing is not None:
        if not state.generated:
            state.generated = True
            state.save(workspace)
        return existing
    if state.generated or state.active_version != 1:
        raise SecretStoreError(
            f"the state says cluster password v{state.active_version} exists, but the secret "
            f"store has none: restore the secret store and {CredentialState.path(workspace).name} "
            "of this workspace from the same backup (nothing was changed)"
        )
    password = store.get_or_create(name, generate_password)
    state.generated = True
    state.save(workspace)
    return password


# -- rotation -----------------------------------------------------------------------------
#
# A broker user has one password, and changing it (`-changeUserPassword`) would refuse every
# route still sending the old one. So a rotation adds a *second user* carrying the new
# password (`cluster_v2`), switches the routes to it, then removes the old user:
#   phase 1  every broker accepts the new user (old one still there)
#   phase 2  routes switch to the new user + password (the compiler reads `active_version`)
#   phase 3  the old user is removed from every broker
# Each phase must be applied on every node before the next starts (lotdeploy.rotation).


def cluster_username(workspace: Workspace, base: str) -> str:
    """The USERNAME routes carry now (no passphrase needed); `base` is `node.username`."""
    return username_for_version(base, CredentialState.load(workspace).active_version)


def broker_users(
    workspace: Workspace, bases: Iterable[str], store: SecretStore | None = None
) -> dict[str, Secret]:
    """Users every broker must accept in the current phase (username → password).

    Apply ensures these exist on each target broker (`-addUser`); in phase 1 that adds the
    new user beside the old one.
    """
    state = CredentialState.load(workspace)
    rotation = load_rotation(workspace, "creds")
    store = store or workspace.secrets()
    versions = [state.active_version]
    if rotation is not None and rotation.phase < 3:
        versions = [int(rotation.old), int(rotation.new)]
    users: dict[str, Secret] = {}
    for version in versions:
        password = (
            cluster_password(workspace, store)
            if version == state.active_version
            else store.get(password_secret_name(version))
        )
        if password is None:
            raise SecretStoreError(
                f"the secret store has no cluster password v{version}: restore the secret store "
                "that belongs to this workspace"
            )
        for base in sorted(set(bases)):
            users[username_for_version(base, version)] = password
    return users


def retired_users(workspace: Workspace, bases: Iterable[str]) -> list[str]:
    """Users apply removes from every broker now (phase 3 of a rotation), else none."""
    rotation = load_rotation(workspace, "creds")
    if rotation is None or rotation.phase != 3:
        return []
    return [username_for_version(b, int(rotation.old)) for b in sorted(set(bases))]


def advance_creds_rotation(site: Site, workspace: Workspace, now: datetime) -> Rotation | None:
    """`creds rotate`: start the phased credential rotation or move it one phase on.

    Refused while the current phase is not applied on every node. Returns None once the
    rotation has finished (old password dropped from the store).
    """
    nodes = [n.name for n in site.nodes]
    command = f"lotdeploy creds rotate {site.source}"
    with StateStore(workspace).transaction() as state:
        rotation = state.rotation("creds")
        if rotation is None:
            store = workspace.secrets()
            cluster_password(workspace, store)  # version in use exists before it is replaced
            state.credential_generated = True
            new_version = state.credential_version + 1
            store.set(password_secret_name(new_version), generate_password())
            store.save()
            return start_rotation(
                state, "creds", str(state.credential_version), str(new_version), now
            )
        require_phase_complete(rotation, nodes, command)
        if rotation.phase == 1:
            # Phase 2 begins: routes now carry the new version (every broker accepts it).
            state.credential_version = int(rotation.new)
            state.credential_generated = True
        elif rotation.phase == LAST_PHASE:
            store = workspace.secrets()
            store.delete(password_secret_name(int(rotation.old)))
            store.save()
        return advance_rotation(state, "creds", nodes, now, command)

"""Ansible Vault for the secret files handed to Ansible, when the site says so
(`ansible: vault_password_file:`): the files in the private data directory (or an export)
are then vault-encrypted, and Ansible's `copy` decrypts them on the way to the node."""

from __future__ import annotations

from pathlib import Path

from lotdeploy.errors import LotdeployError
from lotdeploy.fsutil import UnreadableFile, read_regular_file
from lotdeploy.model import Site
from lotdeploy.secret import Secret


def vault_file(site: Site) -> Path | None:
    path = site.ansible_vault_password_file
    if path is None:
        return None
    return path if path.is_absolute() else Path(site.base_dir) / path


def vault_password(path: Path) -> Secret:
    try:
        text = read_regular_file(path, 64 * 1024).decode("utf-8").strip()
    except (UnreadableFile, UnicodeDecodeError) as exc:
        why = exc.reason if isinstance(exc, UnreadableFile) else "not valid UTF-8"
        raise LotdeployError(f"vault password file {path}: {why}") from None
    if not text:
        raise LotdeployError(f"vault password file {path} is empty")
    return Secret(text)


def encrypt(data: bytes, password: Secret) -> bytes:
    from ansible.constants import DEFAULT_VAULT_ID_MATCH
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(password.reveal().encode()))])
    return bytes(vault.encrypt(data))

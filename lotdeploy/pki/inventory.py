"""What the workspace holds: public certificates on disk, private keys in the secret store.

Layout under `workspace.pki_dir`:
    ca/ca-<id>.crt      every CA this site has had (<id> = serial in hex)
    nodes/<node>.crt    the current certificate of each node
Which CA is active (issues when no rotation runs) is recorded in the state document
(lotdeploy.state), with the rotations. Secret store names: `ca-key-<id>`,
`node-key-<node>`. Nothing here needs the passphrase.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lotdeploy.errors import PkiError, WorkspaceError
from lotdeploy.fsutil import UnreadableFile, atomic_write, atomic_write_many, read_regular_file
from lotdeploy.pki.ca import ca_id
from lotdeploy.state import Rotation, StateStore
from lotdeploy.workspace import Workspace


def ca_key_name(ident: str) -> str:
    return f"ca-key-{ident}"


def node_key_name(node: str) -> str:
    return f"node-key-{node}"


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


#: A certificate or a CRL file of the workspace: kilobytes. Nothing bigger is read.
PKI_FILE_MAX_BYTES = 16 * 1024 * 1024


def _read(path: Path) -> bytes | None:
    """fsutil's bounded reader: a FIFO or device planted in the workspace never hangs."""
    try:
        return read_regular_file(path, PKI_FILE_MAX_BYTES)
    except UnreadableFile as exc:
        if exc.missing:
            return None
        raise WorkspaceError(f"{path}: {exc.about('the file')}") from None


@dataclass(frozen=True)
class Inventory:
    """Read and write the public PKI files of one workspace."""

    workspace: Workspace

    @property
    def root(self) -> Path:
        return self.workspace.pki_dir

    def ca_path(self, ident: str) -> Path:
        return self.root / "ca" / f"ca-{ident}.crt"

    def node_cert_path(self, node: str) -> Path:
        return self.root / "nodes" / f"{node}.crt"

    def active_ca_id(self) -> str | None:
        return StateStore(self.workspace).read().active_ca

    def set_active_ca(self, ident: str) -> None:
        with StateStore(self.workspace).transaction() as state:
            state.active_ca = ident

    def load_ca(self, ident: str) -> x509.Certificate:
        path = self.ca_path(ident)
        raw = _read(path)
        if raw is None:
            raise PkiError(f"{path}: CA certificate missing; restore the workspace from a backup")
        try:
            cert = x509.load_pem_x509_certificate(raw)
        except ValueError:
            raise PkiError(
                f"{path}: not a valid certificate; restore the workspace from a backup"
            ) from None
        if ca_id(cert) != ident:
            raise PkiError(f"{path}: holds another CA's certificate; restore it from a backup")
        return cert

    def load_node_cert(self, node: str) -> x509.Certificate | None:
        """The node's certificate; None when missing or unreadable as a certificate
        (it is public and reissued, so a damaged one is simply replaced)."""
        raw = _read(self.node_cert_path(node))
        if raw is None:
            return None
        try:
            return x509.load_pem_x509_certificate(raw)
        except ValueError:
            return None

    def write_ca(self, cert: x509.Certificate) -> None:
        self._write(self.ca_path(ca_id(cert)), cert_pem(cert))

    def write_node_cert(self, node: str, cert: x509.Certificate) -> None:
        self._write(self.node_cert_path(node), cert_pem(cert))

    def write_node_certs(self, certs: dict[str, x509.Certificate]) -> None:
        """Many node certificates at once: one directory fsync for the whole batch."""
        self.workspace.ensure()
        directory = self.node_cert_path("x").parent
        try:
            atomic_write_many(
                directory,
                [(f"{node}.crt", cert_pem(cert), 0o644) for node, cert in sorted(certs.items())],
                dir_mode=0o700,
                skip_unchanged=False,  # freshly issued: never equal to what is there
            )
        except OSError as exc:
            raise WorkspaceError(
                f"{exc.filename or directory}: cannot write: {exc.strerror}"
            ) from None

    def _write(self, path: Path, data: bytes | str) -> None:
        self.workspace.ensure()
        try:
            atomic_write(path, data, mode=0o644, dir_mode=0o700)
        except OSError as exc:
            raise WorkspaceError(f"{path}: cannot write: {exc.strerror}") from None


@dataclass(frozen=True)
class CaView:
    """Which CAs matter now: who issues node certificates, whom nodes trust."""

    active: str | None  # the CA of the last finished rotation (or the first CA)
    rotation: Rotation | None

    @property
    def issuing(self) -> str | None:
        """Phase 1 still issues under the old CA; phases 2 and 3 under the new one."""
        if self.rotation is None:
            return self.active
        return self.rotation.old if self.rotation.phase == 1 else self.rotation.new

    @property
    def trusted(self) -> list[str]:
        """Phases 1-2 trust old+new, phase 3 drops the old one."""
        if self.rotation is None:
            return [self.active] if self.active else []
        if self.rotation.phase == 3:
            return [self.rotation.new]
        return [self.rotation.old, self.rotation.new]


def ca_view(workspace: Workspace) -> CaView:
    state = StateStore(workspace).read()
    return CaView(state.active_ca, state.rotation("ca"))

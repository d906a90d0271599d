"""Each node's TLS files for render: trusted CA bundle, certificate, private key (0600)."""

from __future__ import annotations

from datetime import datetime

from lotdeploy.errors import PkiError
from lotdeploy.model import Node, Site
from lotdeploy.pki.inventory import cert_pem, node_key_name
from lotdeploy.pki.operations import PkiSession, ensure_pki
from lotdeploy.secret import Secret
from lotdeploy.workspace import Workspace

__all__ = ["ensure_pki", "node_tls_files"]

TlsFiles = dict[str, tuple[bytes | Secret, int]]


def node_tls_files(site: Site, workspace: Workspace, node: Node, now: datetime) -> TlsFiles:
    """File name → (content, mode) for `node`; {} when the node does not use TLS.

    Issues the node's certificate first if it is due (normally `ensure_pki` already did).
    The CA bundle holds the CAs trusted in the current rotation phase; the CA key never
    appears here.
    """
    if not node.tls:
        return {}
    session = PkiSession(site, workspace, now)
    session.issue([node])
    cert = session.inventory.load_node_cert(node.name)
    key = session.store.get(node_key_name(node.name))
    if cert is None or key is None:  # pragma: no cover - issue() just wrote both
        raise PkiError(f"node {node.name}: certificate or key missing after issuing")
    bundle = b"".join(cert_pem(session.ca(ident)) for ident in session.view.trusted)
    return {
        node.broker.ca_file: (bundle, 0o644),
        node.broker.cert_file: (cert_pem(cert), 0o644),
        node.broker.key_file: (key, 0o600),
    }

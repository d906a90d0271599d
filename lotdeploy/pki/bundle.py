"""Each node's TLS files for a bundle: trusted CA bundle, certificate, private key (0600).

Reads only: issuing is the explicit step `ensure_pki` (render and apply run it first, plan
reports it), so building a bundle never creates or changes anything.
"""

from __future__ import annotations

from datetime import datetime

from lotdeploy.errors import PkiError
from lotdeploy.model import Node, Site
from lotdeploy.pki.inventory import Inventory, ca_view, cert_pem, node_key_name
from lotdeploy.pki.operations import ensure_pki
from lotdeploy.secret import Secret
from lotdeploy.workspace import Workspace

__all__ = ["ensure_pki", "node_tls_files"]

TlsFiles = dict[str, tuple[bytes | Secret, int]]


def trusted_ca_bundle(workspace: Workspace) -> bytes:
    """The PEM bundle of the CAs trusted in the current rotation phase (the same for every
    node: read it once per render)."""
    inventory = Inventory(workspace)
    return b"".join(cert_pem(inventory.load_ca(ident)) for ident in ca_view(workspace).trusted)


def node_tls_files(
    site: Site, workspace: Workspace, node: Node, now: datetime, ca_bundle: bytes | None = None
) -> TlsFiles:
    """File name → (content, mode) for `node`; {} when the node does not use TLS.

    The CA bundle holds the CAs trusted in the current rotation phase (`trusted_ca_bundle`,
    passed in when building many nodes); the CA key never appears here. A certificate that
    is missing or due is an error naming the step to run.
    """
    if not node.tls:
        return {}
    inventory = Inventory(workspace)
    cert = inventory.load_node_cert(node.name)
    key = workspace.secrets().get(node_key_name(node.name))
    if cert is None or key is None:
        raise PkiError(
            f"node {node.name}: no certificate or key in the workspace yet: "
            "run `lotdeploy render` (it issues what is due)"
        )
    bundle = ca_bundle if ca_bundle is not None else trusted_ca_bundle(workspace)
    return {
        node.broker.ca_file: (bundle, 0o644),
        node.broker.cert_file: (cert_pem(cert), 0o644),
        node.broker.key_file: (key, 0o600),
    }

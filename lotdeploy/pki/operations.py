"""Everything that changes the PKI: create the CA, issue what is due, rotate.

These need the passphrase (they read or write private keys through `workspace.secrets()`).
One `PkiSession` per run caches the store and CAs, and saves the store once for a whole
batch of certificates: at 200 nodes, re-deriving the store key per certificate would cost
more than issuing them all (bench/bench_pki.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from lotdeploy.errors import PkiError
from lotdeploy.model import Node, Site
from lotdeploy.pki.ca import ca_id, create_ca
from lotdeploy.pki.inventory import CaView, Inventory, ca_key_name, ca_view, node_key_name
from lotdeploy.pki.issue import expected_sans, issue_node_cert
from lotdeploy.pki.keys import PrivateKey, generate_key, key_from_secret, key_matches, key_to_secret
from lotdeploy.pki.status import node_report
from lotdeploy.rotation import (
    LAST_PHASE,
    Rotation,
    advance_rotation,
    require_phase_complete,
    start_rotation,
)
from lotdeploy.state import StateStore
from lotdeploy.workspace import SecretStore, Workspace

log = logging.getLogger("lotdeploy.pki")


@dataclass(frozen=True)
class Issued:
    """One certificate issued in this run (public facts only)."""

    node: str
    serial: str
    reason: str
    not_after: datetime


class PkiSession:
    """PKI operations of one run against one workspace, at one `now`."""

    def __init__(self, site: Site, workspace: Workspace, now: datetime) -> None:
        self.site = site
        self.workspace = workspace
        self.now = now
        self.inventory = Inventory(workspace)
        self.view: CaView = ca_view(workspace)
        self._cas: dict[str, x509.Certificate] = {}
        self._ca_keys: dict[str, PrivateKey] = {}

    @property
    def store(self) -> SecretStore:
        return self.workspace.secrets()

    def ca(self, ident: str) -> x509.Certificate:
        if ident not in self._cas:
            self._cas[ident] = self.inventory.load_ca(ident)
        return self._cas[ident]

    def ca_key(self, ident: str) -> PrivateKey:
        """The CA's private key, checked against its certificate before any use."""
        if ident not in self._ca_keys:
            secret = self.store.get(ca_key_name(ident))
            if secret is None:
                raise PkiError(
                    f"the secret store has no key for CA {ident}: restore the secret store that "
                    "belongs to this workspace (nothing was changed)"
                )
            key = key_from_secret(secret, f"the key of CA {ident}")
            if not key_matches(self.ca(ident), key):
                raise PkiError(
                    f"the key of CA {ident} in the secret store does not match "
                    f"{self.inventory.ca_path(ident)}: restore both from the same backup "
                    "(nothing was changed)"
                )
            self._ca_keys[ident] = key
        return self._ca_keys[ident]

    # -- the CA ---------------------------------------------------------------------------

    def _new_ca(self) -> x509.Certificate:
        """Create a CA: key saved (encrypted) first, then its public certificate."""
        policy = self.site.pki
        cert, key = create_ca(self.site.name, policy.key_type, policy.ca_lifetime_days, self.now)
        ident = ca_id(cert)
        self.store.set(ca_key_name(ident), key_to_secret(key))
        self.store.save()
        self.inventory.write_ca(cert)
        self._cas[ident] = cert
        self._ca_keys[ident] = key
        log.info("created CA %s (%s)", ident, policy.key_type)
        return cert

    def ensure_ca(self) -> tuple[x509.Certificate, bool]:
        """The active CA, created on first need; True when created now."""
        if self.view.active is not None:
            cert = self.ca(self.view.active)
            self.ca_key(self.view.active)  # fail early on a mismatched key
            return cert, False
        cert = self._new_ca()
        self.inventory.set_active_ca(ca_id(cert))
        self.view = ca_view(self.workspace)
        return cert, True

    # -- node certificates ------------------------------------------------------------------

    def _due(self, node: Node, force: bool) -> str | None:
        """Why `node` needs a certificate now, or None."""
        if force:
            return "rotated on request"
        issuing = self.view.issuing
        assert issuing is not None
        cert = self.inventory.load_node_cert(node.name)
        report = node_report(
            node.name,
            cert,
            expected_sans(node),
            self.ca(issuing),
            self.site.pki,
            self.now,
            self.view.rotation.phase if self.view.rotation else None,
        )
        if report.reissue:
            return report.reason
        assert cert is not None
        secret = self.store.get(node_key_name(node.name))
        if secret is None:
            return "key missing from the secret store"
        if not key_matches(cert, key_from_secret(secret, f"the key of node {node.name}")):
            return "key does not match the certificate"
        return None

    def issue(self, nodes: Iterable[Node], force: bool = False) -> list[Issued]:
        """Issue for every node that is due (all of `nodes` with `force`); one store save."""
        self.ensure_ca()
        issuing = self.view.issuing
        assert issuing is not None
        ca_cert = self.ca(issuing)
        new: list[tuple[Node, x509.Certificate, str]] = []
        for node in nodes:
            if not node.tls:
                continue
            reason = self._due(node, force)
            if reason is None:
                continue
            key = generate_key(self.site.pki.key_type)
            cert = issue_node_cert(
                self.site.name,
                node,
                key,
                ca_cert,
                self.ca_key(issuing),
                self.site.pki.cert_lifetime_days,
                self.now,
            )
            self.store.set(node_key_name(node.name), key_to_secret(key))
            new.append((node, cert, reason))
        if not new:
            return []
        # Keys first (one encrypted save for the batch), then the public certificates: a crash
        # in between leaves a key/cert mismatch that the next run detects and reissues.
        self.store.save()
        self.inventory.write_node_certs({node.name: cert for node, cert, _ in new})
        issued = []
        for node, cert, reason in new:
            log.info("issued certificate for node %s (%s)", node.name, reason)
            issued.append(
                Issued(node.name, format(cert.serial_number, "x"), reason, cert.not_valid_after_utc)
            )
        return issued

    # -- CA rotation ------------------------------------------------------------------------

    def advance_ca_rotation(self) -> Rotation | None:
        """Start the CA rotation, or move it one phase on; None once it has finished.

        Refused while the current phase is not applied on every TLS node.
        """
        nodes = [n.name for n in self.site.tls_nodes]
        command = f"lotdeploy certs rotate-ca {self.site.source}"
        with StateStore(self.workspace).transaction() as state:
            rotation = state.rotation("ca")
            if rotation is None:
                if self.view.active is None:
                    raise PkiError("there is no CA to rotate yet: run `lotdeploy certs init` first")
                self.ensure_ca()  # proves the old CA key is intact before anything changes
                new = self._new_ca()
                rotation = start_rotation(state, "ca", self.view.active, ca_id(new), self.now)
            else:
                require_phase_complete(rotation, nodes, command)
                if rotation.phase == LAST_PHASE:
                    # Finish: the new CA becomes the active one, the old key leaves the store.
                    state.active_ca = rotation.new
                    self.store.delete(ca_key_name(rotation.old))
                    self.store.save()
                rotation = advance_rotation(state, "ca", nodes, self.now, command)
        self.view = ca_view(self.workspace)
        return rotation


def ensure_ca(site: Site, workspace: Workspace, now: datetime) -> tuple[x509.Certificate, bool]:
    """`certs init`: the site CA, created if missing (True when created now)."""
    return PkiSession(site, workspace, now).ensure_ca()


def ensure_pki(site: Site, workspace: Workspace, now: datetime) -> list[Issued]:
    """Issue everything due for all TLS nodes in one pass (render calls this once)."""
    if not site.tls_nodes:
        return []
    return PkiSession(site, workspace, now).issue(site.tls_nodes)


def rotate_certs(
    site: Site, workspace: Workspace, now: datetime, node_names: Iterable[str] = ()
) -> list[Issued]:
    """`certs rotate`: reissue now, for the named nodes or every TLS node."""
    wanted = list(dict.fromkeys(node_names))  # `--node a --node a` is one node
    by_name = {n.name: n for n in site.nodes}
    for name in wanted:
        if name not in by_name:
            raise PkiError(f"no node named {name!r} in the site")
        if not by_name[name].tls:
            raise PkiError(f"node {name} does not use TLS (set `tls: true` for it)")
    nodes = [by_name[n] for n in wanted] if wanted else list(site.tls_nodes)
    if not nodes:
        raise PkiError("no node of this site uses TLS: set `tls: true` in the spec")
    return PkiSession(site, workspace, now).issue(nodes, force=True)


def advance_ca_rotation(site: Site, workspace: Workspace, now: datetime) -> Rotation | None:
    """`certs rotate-ca`: start or advance the phased CA rotation."""
    if not site.tls_nodes:
        raise PkiError("no node of this site uses TLS: set `tls: true` in the spec")
    return PkiSession(site, workspace, now).advance_ca_rotation()

"""Node certificates: SANs from everything peers and clients use, server+client auth."""

from __future__ import annotations

import functools
import ipaddress
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lotdeploy.model import Node
from lotdeploy.pki.ca import BACKDATE
from lotdeploy.pki.keys import PrivateKey


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def expected_sans(node: Node) -> tuple[str, ...]:
    """Every name a peer or client may dial, as sorted "dns:..." / "ip:..." strings."""
    sans: set[str] = set()
    for value in (node.address, *node.dns_names, *node.ip_addresses):
        if _is_ip(value):
            sans.add(f"ip:{ipaddress.ip_address(value)}")
        else:
            sans.add(f"dns:{value.rstrip('.').lower()}")
    return tuple(sorted(sans))


def cert_sans(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's SANs in the same notation as `expected_sans`."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    sans = {f"dns:{name.lower()}" for name in ext.get_values_for_type(x509.DNSName)}
    sans |= {f"ip:{ip}" for ip in ext.get_values_for_type(x509.IPAddress)}
    return tuple(sorted(sans))


def _general_name(san: str) -> x509.GeneralName:
    kind, _, value = san.partition(":")
    if kind == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    return x509.DNSName(value)


#: The parts of a node certificate that are the same for every node (made once, not per
#: certificate: with them, issuing is mostly the signature).
_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_SERVER_AND_CLIENT = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


@functools.lru_cache(maxsize=8)
def _key_usage(key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@functools.lru_cache(maxsize=8)
def _issuer(
    ca_cert: x509.Certificate,
) -> tuple[x509.Name, x509.AuthorityKeyIdentifier, datetime, datetime]:
    """What every certificate the CA signs takes from it: subject, key identifier, validity
    (a rotation batch signs hundreds with the same CA)."""
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        ca_cert.subject,
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
        ca_cert.not_valid_before_utc,
        ca_cert.not_valid_after_utc,
    )


def issue_node_cert(
    site_name: str,
    node: Node,
    key: PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    lifetime_days: int,
    now: datetime,
) -> x509.Certificate:
    """Sign `key` for `node`; not-after never beyond the CA's own not-after."""
    issuer, authority_key_id, ca_not_before, ca_not_after = _issuer(ca_cert)
    not_after = min(now + timedelta(days=lifetime_days), ca_not_after)
    not_before = max(now - BACKDATE, ca_not_before)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, site_name),
                    x509.NameAttribute(NameOID.COMMON_NAME, node.name),
                ]
            )
        )
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_BASIC_CONSTRAINTS, critical=True)
        .add_extension(_key_usage(isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(_SERVER_AND_CLIENT, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(s) for s in expected_sans(node)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(authority_key_id, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

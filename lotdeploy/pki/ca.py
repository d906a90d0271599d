"""The site CA: a self-signed root whose key never leaves the encrypted secret store."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from lotdeploy.pki.keys import PrivateKey, generate_key

#: Backdating absorbs small clock differences between the machine and the nodes.
BACKDATE = timedelta(hours=1)


def ca_id(cert: x509.Certificate) -> str:
    """The CA's short name in file and secret names: its serial number in hex."""
    return format(cert.serial_number, "x")


def create_ca(
    site_name: str, key_type: str, lifetime_days: int, now: datetime
) -> tuple[x509.Certificate, PrivateKey]:
    """A new root CA for `site_name`, valid `lifetime_days` from `now`."""
    key = generate_key(key_type)
    serial = x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lotdeploy"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{site_name} cluster CA {serial:x}"[:64]),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=lifetime_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key

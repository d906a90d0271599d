"""Private keys: generated, serialised into Secrets, and matched against certificates.

A private key is held as a PEM inside a `Secret` from the moment it exists; only the secret
store (encrypted) and a node bundle's key file (0600) ever receive the revealed value.
"""

from __future__ import annotations

from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lotdeploy.errors import PkiError
from lotdeploy.secret import Secret

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]  # noqa: UP007
KEY_TYPES = ("ecdsa-p256", "rsa-3072")


def generate_key(key_type: str) -> PrivateKey:
    """A fresh key of the policy's type (P-256 by default: fast and small, as `step` does)."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise PkiError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def key_to_secret(key: PrivateKey) -> Secret:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Secret(pem.decode("ascii"))


def key_from_secret(secret: Secret, what: str) -> PrivateKey:
    """Parse a stored key; `what` names it in the error (never the value)."""
    try:
        key = serialization.load_pem_private_key(
            secret.reveal().encode("ascii"),
            password=None,
            # Keys come from our own authenticated (AES-GCM) store: skip the slow RSA check.
            unsafe_skip_rsa_key_validation=True,
        )
    except (ValueError, TypeError, UnicodeError):
        raise PkiError(
            f"{what} in the secret store is not a valid private key; restore the workspace "
            "from a backup"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{what} in the secret store has an unsupported key type")
    return key


def key_type_of(public_key: object) -> str:
    """The policy name of a key ("ecdsa-p256", "rsa-3072"), or a description of another."""
    if isinstance(public_key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        curve = public_key.curve.name
        return "ecdsa-p256" if curve == "secp256r1" else f"ecdsa-{curve}"
    if isinstance(public_key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"rsa-{public_key.key_size}"
    return type(public_key).__name__


def _public_der(public_key: object) -> bytes:
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    """True when `key` is the private half of `cert`'s public key."""
    return _public_der(cert.public_key()) == _public_der(key.public_key())

"""Certificate status, pure: certificate + expectations + `now` → a report.

No clock is read here: every caller passes `now`, so tests and cron runs agree.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from lotdeploy.model import PkiPolicy
from lotdeploy.pki.inventory import cert_pem
from lotdeploy.pki.issue import cert_sans
from lotdeploy.pki.keys import key_type_of

Status = Literal[
    "ok", "renew soon", "expired", "SAN mismatch", "wrong CA", "key type changed", "missing"
]


def renew_threshold_days(policy: PkiPolicy) -> int:
    """Reissue with fewer days left than this: default a third of the lifetime (like `step`)."""
    if policy.renew_before_days is not None:
        return policy.renew_before_days
    return policy.cert_lifetime_days // 3


def ca_renew_threshold_days(policy: PkiPolicy) -> int:
    """Warn about the CA when node certificates can no longer get their full lifetime
    (capped at a third of the CA's own lifetime for short-lived CAs)."""
    return min(policy.cert_lifetime_days, policy.ca_lifetime_days // 3)


def days_left(cert: x509.Certificate, now: datetime) -> int:
    """Whole days until not-after (negative once expired)."""
    return math.floor((cert.not_valid_after_utc - now).total_seconds() / 86400)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def subject_text(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def serial_text(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


@dataclass(frozen=True)
class CertReport:
    """One line of `certs list`; `reason` is what plan prints when `reissue` is True."""

    name: str  # "ca" or the node name
    role: str  # "ca", "ca (old)", "ca (new)" or "node"
    status: Status
    detail: str = ""
    subject: str = ""
    sans: tuple[str, ...] = ()
    serial: str = ""
    not_after: datetime | None = None
    days_left: int | None = None
    reissue: bool = False
    reason: str = ""
    #: sha256 of the certificate as a node's bundle carries it (PEM); what the state records
    sha256: str = ""

    @property
    def needs_action(self) -> bool:
        return self.status != "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "status": self.status,
            "detail": self.detail,
            "subject": self.subject,
            "sans": list(self.sans),
            "serial": self.serial,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_left": self.days_left,
        }


def ca_report(
    cert: x509.Certificate, policy: PkiPolicy, now: datetime, role: str = "ca"
) -> CertReport:
    left = days_left(cert, now)
    threshold = ca_renew_threshold_days(policy)
    status: Status = "ok"
    detail = f"expires in {left} days"
    if left < 0 or cert.not_valid_after_utc <= now:
        status, detail = "expired", f"expired {-left} days ago: run `lotdeploy certs rotate-ca`"
    elif left < threshold:
        status = "renew soon"
        detail = f"expires in {left} days (threshold {threshold}): run `lotdeploy certs rotate-ca`"
    return CertReport(
        name="ca",
        role=role,
        status=status,
        detail=detail,
        subject=subject_text(cert),
        serial=serial_text(cert),
        not_after=cert.not_valid_after_utc,
        days_left=left,
    )


def _san_diff(have: tuple[str, ...], want: tuple[str, ...]) -> str:
    added = [f"+{s}" for s in want if s not in have]
    removed = [f"-{s}" for s in have if s not in want]
    return " ".join(added + removed)


def node_report(
    node: str,
    cert: x509.Certificate | None,
    expected_sans: tuple[str, ...],
    issuing_ca: x509.Certificate,
    policy: PkiPolicy,
    now: datetime,
    rotation_phase: int | None = None,
) -> CertReport:
    """Status of a node certificate and whether (and why) to reissue it.

    Checked in order of severity; the first finding names the status and the reason.
    A certificate whose expiry is capped by the CA's own is not reissued (it would not
    get any longer): the CA needs rotating instead.
    """
    if cert is None:
        return CertReport(
            node, "node", "missing", "no certificate yet", reissue=True, reason="missing"
        )
    left = days_left(cert, now)
    sans = cert_sans(cert)
    base: dict[str, Any] = {
        "subject": subject_text(cert),
        "sans": sans,
        "serial": serial_text(cert),
        "not_after": cert.not_valid_after_utc,
        "days_left": left,
        "sha256": hashlib.sha256(cert_pem(cert)).hexdigest(),
    }
    threshold = renew_threshold_days(policy)
    if not issued_by(cert, issuing_ca):
        reason = (
            f"CA rotation phase {rotation_phase}: reissue under new CA"
            if rotation_phase in (2, 3)
            else "CA changed"
        )
        return CertReport(
            node,
            "node",
            "wrong CA",
            "not issued by the current CA",
            reissue=True,
            reason=reason,
            **base,
        )
    if cert.not_valid_after_utc <= now:
        return CertReport(
            node,
            "node",
            "expired",
            f"expired {-left} days ago",
            reissue=True,
            reason=f"expired {-left} days ago",
            **base,
        )
    if sans != expected_sans:
        diff = _san_diff(sans, expected_sans)
        return CertReport(
            node,
            "node",
            "SAN mismatch",
            f"SANs changed: {diff}",
            reissue=True,
            reason=f"SANs changed: {diff}",
            **base,
        )
    have_type = key_type_of(cert.public_key())
    if have_type != policy.key_type:
        return CertReport(
            node,
            "node",
            "key type changed",
            f"{have_type}, policy {policy.key_type}",
            reissue=True,
            reason="key type changed",
            **base,
        )
    if left < threshold:
        capped = cert.not_valid_after_utc >= issuing_ca.not_valid_after_utc - timedelta(days=1)
        if capped:
            return CertReport(
                node,
                "node",
                "renew soon",
                f"expires in {left} days with the CA: run `lotdeploy certs rotate-ca`",
                **base,
            )
        reason = f"expires in {left} days (renewal threshold {threshold})"
        return CertReport(node, "node", "renew soon", reason, reissue=True, reason=reason, **base)
    return CertReport(node, "node", "ok", f"expires in {left} days", **base)

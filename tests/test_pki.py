"""Cluster PKI: CA, node certificates, status with an injected clock, rotation, bad input."""

from __future__ import annotations

import json
import ssl
from datetime import UTC, datetime, timedelta
from itertools import pairwise, product
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from lotdeploy.cli.pki import certs
from lotdeploy.errors import LotdeployError, PkiError, SecretStoreError, WorkspaceError
from lotdeploy.pki.bundle import ensure_pki, node_tls_files
from lotdeploy.pki.inventory import Inventory, ca_key_name, ca_view, node_key_name
from lotdeploy.pki.issue import cert_sans, expected_sans
from lotdeploy.pki.keys import key_to_secret
from lotdeploy.pki.operations import advance_ca_rotation, ensure_ca, rotate_certs
from lotdeploy.pki.reports import pki_reports
from lotdeploy.pki.status import days_left, renew_threshold_days
from lotdeploy.plan.pki import pki_changes
from lotdeploy.rotation import (
    current_phase,
    load_rotation,
    mark_phase_applied,
    phase_complete,
)
from lotdeploy.secret import Secret
from lotdeploy.workspace import SecretStore
from tests.pki_helpers import (
    DEFAULT_NODES,
    NOW,
    handshake,
    load,
    materialise,
    no_passphrase_workspace,
    openssl_verify,
    workspace_for,
    write_site,
)


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    return write_site(tmp_path)


def node_cert(site_file: Path, node: str) -> x509.Certificate:
    cert = Inventory(no_passphrase_workspace(site_file)).load_node_cert(node)
    assert cert is not None
    return cert


# -- issuance ---------------------------------------------------------------------------


def test_ca_and_node_certificates(site_file: Path) -> None:
    site = load(site_file)
    ws = workspace_for(site_file)
    issued = ensure_pki(site, ws, NOW)
    assert sorted(i.node for i in issued) == ["a", "b", "c"]
    view = ca_view(ws)
    assert view.active is not None
    ca = Inventory(ws).load_ca(view.active)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert = node_cert(site_file, "b")
    assert cert_sans(cert) == ("dns:b.test", "ip:127.0.0.102")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert cert.not_valid_after_utc - NOW == timedelta(days=397)
    # Private keys live only in the store; no key material on disk in the clear.
    for path in ws.root.rglob("*"):
        if path.is_file() and path.name != "secrets.enc":
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert oct(ws.secrets_path.stat().st_mode & 0o777) == "0o600"


def test_second_run_issues_nothing_and_saves_store_once(
    site_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = load(site_file)
    saves: list[int] = []
    original = SecretStore.save

    def counting_save(self: SecretStore) -> None:
        saves.append(1)
        original(self)

    monkeypatch.setattr(SecretStore, "save", counting_save)
    ensure_pki(site, workspace_for(site_file), NOW)
    assert len(saves) == 2  # the CA, then all three node keys at once
    saves.clear()
    assert ensure_pki(site, workspace_for(site_file), NOW + timedelta(days=10)) == []
    assert saves == []
    rotate_certs(site, workspace_for(site_file), NOW)
    assert len(saves) == 1


def test_not_after_never_beyond_ca(tmp_path: Path) -> None:
    site_file = write_site(tmp_path, pki={"ca_lifetime_days": 100})
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    ca = Inventory(workspace_for(site_file)).load_ca(ca_view(workspace_for(site_file)).active or "")
    cert = node_cert(site_file, "a")
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    # Capped by the CA: within the threshold, yet reissuing would not help -> no churn,
    # a warning that points at rotate-ca instead.
    assert ensure_pki(site, workspace_for(site_file), NOW + timedelta(days=1)) == []
    changes, warnings = pki_changes(site, no_passphrase_workspace(site_file), NOW)
    assert [c for c in changes if c.kind == "certificate"] == []
    assert any("rotate-ca" in w for w in warnings)


def test_node_bundle_files(site_file: Path, tmp_path: Path) -> None:
    site = load(site_file)
    ws = workspace_for(site_file)
    ensure_pki(site, ws, NOW)
    files = node_tls_files(site, ws, site.node("a"), NOW)
    assert set(files) == {"ca.crt", "server.crt", "server.key"}
    assert files["server.key"][1] == 0o600
    assert isinstance(files["server.key"][0], Secret)
    assert str(files["server.key"][0]) == "(sensitive)"
    ca_key = ws.secrets().get(ca_key_name(ca_view(ws).active or ""))
    assert ca_key is not None
    for content, _mode in files.values():
        text = content.reveal() if isinstance(content, Secret) else content.decode()
        assert ca_key.reveal() not in text
    assert files["ca.crt"][0].count(b"BEGIN CERTIFICATE") == 1  # type: ignore[union-attr]


def test_no_tls_no_pki(tmp_path: Path) -> None:
    site_file = write_site(tmp_path, tls=False)
    site = load(site_file)
    ws = no_passphrase_workspace(site_file)
    assert ensure_pki(site, ws, NOW) == []
    assert pki_changes(site, ws, NOW) == ([], [])
    assert node_tls_files(site, ws, site.node("a"), NOW) == {}
    assert not ws.root.exists()


# -- verification with openssl and Python ssl ---------------------------------------------


def test_openssl_verify_chain_ip_and_dns(site_file: Path, tmp_path: Path) -> None:
    site = load(site_file)
    ws = workspace_for(site_file)
    ensure_pki(site, ws, NOW)
    paths = materialise(node_tls_files(site, ws, site.node("b"), NOW), tmp_path / "b")
    ca, crt = paths["ca.crt"], paths["server.crt"]
    at = NOW + timedelta(days=1)
    for purpose in ("sslserver", "sslclient"):
        ok = openssl_verify(ca, crt, purpose=purpose, at=at)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    assert openssl_verify(ca, crt, ip="127.0.0.102", at=at).returncode == 0
    assert openssl_verify(ca, crt, hostname="b.test", at=at).returncode == 0
    assert openssl_verify(ca, crt, hostname="other.test", at=at).returncode != 0
    assert openssl_verify(ca, crt, ip="127.0.0.109", at=at).returncode != 0
    # The injected clock matters: after not-after, openssl rejects it too.
    assert openssl_verify(ca, crt, at=NOW + timedelta(days=398)).returncode != 0


def test_python_ssl_mutual_handshake_ip_and_dns(site_file: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)  # Python's ssl checks validity against the real clock
    site = load(site_file)
    ws = workspace_for(site_file)
    ensure_pki(site, ws, now)
    a = materialise(node_tls_files(site, ws, site.node("a"), now), tmp_path / "a")
    b = materialise(node_tls_files(site, ws, site.node("b"), now), tmp_path / "b")
    # b as broker, reached by IP SAN and by DNS SAN; a as route client (client cert checked).
    assert handshake(b, a, "127.0.0.102", "127.0.0.102") == "a"
    assert handshake(b, a, "127.0.0.102", "b.test") == "a"
    assert handshake(a, b, "127.0.0.101", "a.test") == "b"
    with pytest.raises(ssl.SSLError, match=r"(?i)hostname|certificate verify failed"):
        handshake(b, a, "127.0.0.102", "not-b.test")


# -- status with an injected clock ---------------------------------------------------------


def test_renewal_threshold_and_expiry(site_file: Path) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    ws = no_passphrase_workspace(site_file)
    assert renew_threshold_days(site.pki) == 132
    issued = node_cert(site_file, "a")

    def status_at(when: datetime) -> dict[str, str]:
        _view, reports = pki_reports(site, ws, when)
        return {r.name: r.status for r in reports if r.role == "node"}

    edge = issued.not_valid_after_utc - timedelta(days=132)
    assert days_left(issued, edge) == 132
    assert status_at(edge) == {"a": "ok", "b": "ok", "c": "ok"}
    assert status_at(edge + timedelta(seconds=1))["a"] == "renew soon"
    assert status_at(issued.not_valid_after_utc)["a"] == "expired"
    changes, warnings = pki_changes(site, ws, NOW + timedelta(days=357))
    reasons = {c.node: c.reason for c in changes if c.kind == "certificate"}
    assert reasons["a"] == "expires in 40 days (renewal threshold 132)"
    assert "certificate of node a: renew soon: expires in 40 days (renewal threshold 132)" in (
        warnings
    )
    # render at that time reissues all three, then all is well again
    later = NOW + timedelta(days=357)
    assert len(ensure_pki(site, workspace_for(site_file), later)) == 3
    assert set(status_at(later).values()) == {"ok"}


def test_custom_renew_before_days(tmp_path: Path) -> None:
    site_file = write_site(tmp_path, pki={"cert_lifetime_days": 90, "renew_before_days": 10})
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    ws = no_passphrase_workspace(site_file)
    changes, _ = pki_changes(site, ws, NOW + timedelta(days=79))
    assert not [c for c in changes if c.kind == "certificate"]
    changes, _ = pki_changes(site, ws, NOW + timedelta(days=81))
    assert {c.reason for c in changes} == {"expires in 9 days (renewal threshold 10)"}


def test_san_and_key_type_changes_reissue(tmp_path: Path) -> None:
    site_file = write_site(tmp_path)
    ensure_pki(load(site_file), workspace_for(site_file), NOW)
    nodes = [dict(n) for n in DEFAULT_NODES]
    nodes[2]["dns_names"] = ["c.test"]
    write_site(tmp_path, nodes=nodes, pki={"key_type": "rsa-3072"})
    site = load(site_file)
    changes, warnings = pki_changes(site, no_passphrase_workspace(site_file), NOW)
    reasons = {c.node: c.reason for c in changes if c.kind == "certificate"}
    assert reasons == {
        "a": "key type changed",
        "b": "key type changed",
        "c": "SANs changed: +dns:c.test",
    }
    assert all(c.action == "replace" for c in changes)
    assert "certificate of node c: SAN mismatch: SANs changed: +dns:c.test" in warnings
    rotate_certs(site, workspace_for(site_file), NOW, ["c"])
    cert = node_cert(site_file, "c")
    assert cert_sans(cert) == expected_sans(site.node("c")) == ("dns:c.test", "ip:127.0.0.103")
    assert cert.public_key().key_size == 3072  # type: ignore[union-attr]


def test_first_plan_lists_ca_and_certs_without_passphrase(site_file: Path) -> None:
    site = load(site_file)
    changes, warnings = pki_changes(site, no_passphrase_workspace(site_file), NOW)
    assert [(c.action, c.kind, c.node, c.reason) for c in changes] == [
        ("create", "ca", None, "missing"),
        ("create", "certificate", "a", "missing"),
        ("create", "certificate", "b", "missing"),
        ("create", "certificate", "c", "missing"),
    ]
    assert warnings == []


# -- certs list -----------------------------------------------------------------------------


def test_certs_list_json_and_exit_codes(site_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lotdeploy.cli.pki.utcnow", lambda: NOW)
    runner = CliRunner()
    missing = runner.invoke(certs, ["list", str(site_file)])
    assert missing.exit_code == 2
    ensure_pki(load(site_file), workspace_for(site_file), NOW)
    ok = runner.invoke(certs, ["list", str(site_file), "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["needs_action"] is False
    assert [c["status"] for c in doc["certificates"]] == ["ok"] * 4
    node_a = doc["certificates"][1]
    assert node_a["sans"] == ["dns:a.test", "ip:127.0.0.101"] and node_a["days_left"] == 397
    monkeypatch.setattr("lotdeploy.cli.pki.utcnow", lambda: NOW + timedelta(days=380))
    soon = runner.invoke(certs, ["list", str(site_file)])
    assert soon.exit_code == 2
    assert "renew soon" in soon.stdout
    assert "warning: certificate of node a: renew soon: expires in 17 days" in soon.stderr


# -- CA rotation --------------------------------------------------------------------------


def test_ca_rotation_handshakes_at_every_phase(site_file: Path, tmp_path: Path) -> None:
    """During the rollout of each phase a node runs either the previous or the current phase's
    files; every such pair must complete a mutual-TLS handshake both ways."""
    now = datetime.now(UTC)
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), now)

    def snapshot(label: str) -> dict[str, dict[str, Path]]:
        ws = workspace_for(site_file)
        ensure_pki(site, ws, now)
        return {
            n: materialise(node_tls_files(site, ws, site.node(n), now), tmp_path / label / n)
            for n in ("a", "b")
        }

    states = [snapshot("phase0")]
    for phase in (1, 2, 3):
        rotation = advance_ca_rotation(site, workspace_for(site_file), now)
        assert rotation is not None and rotation.phase == phase
        states.append(snapshot(f"phase{phase}"))
        with pytest.raises(PkiError, match=f"phase {phase} is not applied on a, b, c"):
            advance_ca_rotation(site, workspace_for(site_file), now)
        for node in ("a", "b", "c"):
            mark_phase_applied(workspace_for(site_file), "ca", node, phase)
    assert advance_ca_rotation(site, workspace_for(site_file), now) is None  # finished
    states.append(snapshot("done"))

    for before, after in pairwise(states):
        for sa, sb in product((before, after), repeat=2):
            assert handshake(sb["b"], sa["a"], "127.0.0.102", "b.test") == "a"
            assert handshake(sa["a"], sb["b"], "127.0.0.101", "127.0.0.101") == "b"
    # Interim bundle (phases 1-2) trusts old- and new-issued certs alike (openssl as well).
    interim = states[2]["a"]["ca.crt"]
    for cert in (states[0]["b"]["server.crt"], states[2]["b"]["server.crt"]):
        assert openssl_verify(interim, cert, ip="127.0.0.102").returncode == 0
    # Why the phases must not be skipped: a node still trusting only the old CA refuses a
    # certificate issued under the new one, and after the rotation the old CA is gone.
    with pytest.raises(ssl.SSLError, match=r"certificate verify failed"):
        handshake(states[2]["b"], states[0]["a"], "127.0.0.102", "b.test")
    assert openssl_verify(states[4]["a"]["ca.crt"], states[0]["b"]["server.crt"]).returncode != 0
    ws = workspace_for(site_file)
    assert load_rotation(ws, "ca") is None
    assert len([n for n in ws.secrets().names() if n.startswith("ca-key-")]) == 1


def test_rotation_plan_reasons_and_seam(site_file: Path) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    advance_ca_rotation(site, workspace_for(site_file), NOW)
    ws = no_passphrase_workspace(site_file)
    assert current_phase(ws, "ca") == 1
    changes, _ = pki_changes(site, ws, NOW)
    assert {(c.kind, c.node, c.reason) for c in changes} == {
        ("ca", n, "CA rotation phase 1: trust old+new CA") for n in "abc"
    }
    mark_phase_applied(ws, "ca", "a")
    assert not phase_complete(ws, "ca", ["a", "b", "c"])
    assert {c.node for c in pki_changes(site, ws, NOW)[0]} == {"b", "c"}
    mark_phase_applied(ws, "ca", "b")
    mark_phase_applied(ws, "ca", "c")
    assert phase_complete(ws, "ca", ["a", "b", "c"])
    assert any("rotate-ca" in w for w in pki_changes(site, ws, NOW)[1])
    advance_ca_rotation(site, workspace_for(site_file), NOW)
    changes, _ = pki_changes(site, ws, NOW)
    assert {(c.kind, c.action, c.reason) for c in changes} == {
        ("certificate", "replace", "CA rotation phase 2: reissue under new CA")
    }
    with pytest.raises(PkiError, match="render and apply again"):
        mark_phase_applied(ws, "ca", "a", phase=1)  # stale files from phase 1
    assert mark_phase_applied(ws, "creds", "a") is False  # nothing in progress


# -- bad input --------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_wrong_and_missing_passphrase(site_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    before = _snapshot(site_file.parent / ".lotdeploy")
    with pytest.raises(SecretStoreError, match="wrong passphrase") as err:
        rotate_certs(site, workspace_for(site_file, "another-long-passphrase"), NOW)
    assert "\n" not in str(err.value)
    from lotdeploy.workspace import Workspace

    monkeypatch.delenv("LOTDEPLOY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    with pytest.raises(SecretStoreError, match="LOTDEPLOY_PASSPHRASE"):
        rotate_certs(site, Workspace.for_site(site_file), NOW)
    assert _snapshot(site_file.parent / ".lotdeploy") == before


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_store(site_file: Path, damage: str) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    ws = workspace_for(site_file)
    raw = bytearray(ws.secrets_path.read_bytes())
    if damage == "flip":
        doc = json.loads(raw)
        ct = bytearray(doc["ciphertext"].encode())
        ct[10] = ord("A") if ct[10] != ord("A") else ord("B")
        doc["ciphertext"] = ct.decode()
        ws.secrets_path.write_text(json.dumps(doc))
    else:
        ws.secrets_path.write_bytes(bytes(raw[: len(raw) // 2]))
    before = _snapshot(ws.root)
    with pytest.raises(SecretStoreError, match=r"tampered|damaged or truncated"):
        rotate_certs(site, ws, NOW)
    assert _snapshot(ws.root) == before


def test_ca_key_mismatch(site_file: Path) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    ws = workspace_for(site_file)
    ident = ca_view(ws).active or ""
    store = ws.secrets()
    store.set(ca_key_name(ident), key_to_secret(ec.generate_private_key(ec.SECP256R1())))
    store.save()
    before = _snapshot(ws.root)
    with pytest.raises(PkiError, match="does not match") as err:
        rotate_certs(site, workspace_for(site_file), NOW)
    assert "restore" in str(err.value)
    with pytest.raises(PkiError, match="does not match"):
        advance_ca_rotation(site, workspace_for(site_file), NOW)
    assert _snapshot(ws.root) == before


def test_unreadable_workspace_files(site_file: Path) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    ws = no_passphrase_workspace(site_file)
    state = ws.root / "state.json"
    good = state.read_text()
    state.write_text("{not json")
    with pytest.raises(WorkspaceError, match="state is damaged"):
        pki_changes(site, ws, NOW)
    state.unlink()
    state.mkdir()
    with pytest.raises(WorkspaceError, match="cannot read"):
        pki_changes(site, ws, NOW)
    state.rmdir()
    state.write_text(good.replace('"active_ca": "', '"active_ca": "../../etc'))
    with pytest.raises(WorkspaceError, match="damaged"):
        pki_changes(site, ws, NOW)


def test_damaged_node_cert_is_reissued(site_file: Path) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    Inventory(workspace_for(site_file)).node_cert_path("a").write_text("garbage")
    issued = ensure_pki(site, workspace_for(site_file), NOW)
    assert [(i.node, i.reason) for i in issued] == [("a", "missing")]


def test_key_lost_from_store_is_reissued(site_file: Path) -> None:
    site = load(site_file)
    ensure_pki(site, workspace_for(site_file), NOW)
    ws = workspace_for(site_file)
    ws.secrets().delete(node_key_name("b"))
    ws.secrets().save()
    issued = ensure_pki(site, workspace_for(site_file), NOW)
    assert [(i.node, i.reason) for i in issued] == [("b", "key missing from the secret store")]


def test_operator_mistakes_are_one_line_errors(site_file: Path) -> None:
    site = load(site_file)
    errors = []
    for call in (
        lambda: advance_ca_rotation(site, workspace_for(site_file), NOW),
        lambda: rotate_certs(site, workspace_for(site_file), NOW, ["zz"]),
        lambda: (
            ensure_ca(site, workspace_for(site_file), NOW)
            and advance_ca_rotation(site, workspace_for(site_file), NOW)
            and advance_ca_rotation(site, workspace_for(site_file), NOW)
        ),
    ):
        with pytest.raises(LotdeployError) as err:
            call()
        errors.append(str(err.value))
    assert "certs init" in errors[0]
    assert "no node named 'zz'" in errors[1]
    assert "not applied on a, b, c yet" in errors[2]
    assert all("\n" not in e for e in errors)

"""The encrypted secret store: round trip, wrong passphrase, tampering, atomic 0600 writes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lotdeploy.errors import SecretStoreError
from lotdeploy.secret import Secret
from lotdeploy.workspace import SecretStore, Workspace, passphrase_from_environment

PASS = Secret("a good passphrase")


def make_store(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.enc"
    store = SecretStore.open(path, PASS)
    store.set("cluster-password-v1", Secret("s3cretValue123"))
    store.save()
    return path


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"s3cretValue123" not in path.read_bytes()
    again = SecretStore.open(path, PASS)
    assert again.get("cluster-password-v1") == Secret("s3cretValue123")
    assert again.names() == ["cluster-password-v1"]


def test_wrong_passphrase_changes_nothing(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    before = path.read_bytes()
    with pytest.raises(SecretStoreError, match="wrong passphrase"):
        SecretStore.open(path, Secret("not the passphrase"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["ciphertext", "nonce", "salt", "n"])
def test_tampering_is_detected(tmp_path: Path, where: str) -> None:
    path = make_store(tmp_path)
    doc = json.loads(path.read_text())
    if where == "n":
        doc["header"]["kdf"]["n"] = 2**14
    elif where == "salt":
        doc["header"]["kdf"]["salt"] = "AAAAAAAAAAAAAAAAAAAAAA=="
    else:
        raw = bytearray(__import__("base64").b64decode(doc[where]))
        raw[0] ^= 1
        doc[where] = __import__("base64").b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(
        SecretStoreError, match="wrong passphrase, or the secret store was tampered"
    ):
        SecretStore.open(path, PASS)


@pytest.mark.parametrize("cut", [0, 10, 100])
def test_truncated_store(tmp_path: Path, cut: int) -> None:
    path = make_store(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(SecretStoreError, match="damaged or truncated"):
        SecretStore.open(path, PASS)


def test_no_passphrase_without_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOTDEPLOY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(SecretStoreError, match="set LOTDEPLOY_PASSPHRASE"):
        passphrase_from_environment(False)


def test_workspace_dir_is_private(tmp_path: Path, passphrase: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: s\n")
    workspace = Workspace.for_site(site)
    assert workspace.root == tmp_path / ".lotdeploy"
    store = workspace.secrets()
    store.get_or_create("x", lambda: Secret("generated-value"))
    assert stat.S_IMODE(workspace.root.stat().st_mode) == 0o700
    assert Workspace.for_site(site).secrets().get("x") == Secret("generated-value")


def test_new_store_refuses_a_short_passphrase(tmp_path: Path) -> None:
    with pytest.raises(SecretStoreError, match="at least 8 characters"):
        SecretStore.open(tmp_path / "secrets.enc", Secret("short"))
    assert not (tmp_path / "secrets.enc").exists()


def test_workspace_lock_excludes_a_second_writer(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from lotdeploy.errors import WorkspaceError

    workspace = Workspace(tmp_path / "ws")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom lotdeploy.workspace import Workspace\n"
            "with Workspace(Path(sys.argv[1])).lock('render'):\n"
            "    print('locked', flush=True)\n    time.sleep(30)\n",
            str(tmp_path / "ws"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with (
            pytest.raises(
                WorkspaceError,
                match=rf"in use by another lotdeploy run \(pid {holder.pid}: render\)",
            ),
            workspace.lock("certs rotate", timeout=0.5),
        ):
            pass
        assert time.monotonic() - start < 5
    finally:
        holder.kill()
        holder.wait(10)
    # the kernel released the dead holder's lock: no stale lock
    with workspace.lock("render", timeout=2):
        pass

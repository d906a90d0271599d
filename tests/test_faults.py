"""Faults and hostile workspaces: nothing written where it must not be, nothing trusted
blindly, every failure one line naming the file. Through the real CLI where a user would
meet it (docs/reliability.md lists each case and its promised outcome)."""

from __future__ import annotations

import json
import os
import pty
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lotdeploy.errors import SecretStoreError, WorkspaceError
from lotdeploy.secret import Secret
from lotdeploy.workspace import SecretStore, Workspace
from tests.conftest import REPO, TEST_PASSPHRASE, run_cli

ENV = {"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE}


def _site(tmp_path: Path, name: str = "geo.yaml", site: str | None = None) -> Path:
    path = tmp_path / "site.yaml"
    text = (REPO / "inventories" / name).read_text()
    if site is not None:
        text = text.replace("site: plant-a", f"site: {site}")
    path.write_text(text)
    return path


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below root (mode, content); symlinks as their target text."""
    out: dict[str, tuple[int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = (0, os.readlink(path).encode())
        elif path.is_file():
            out[rel] = (path.stat().st_mode & 0o7777, path.read_bytes())
        else:
            out[rel + "/"] = (path.stat().st_mode & 0o7777, b"")
    return out


# -- the lock and the workspace directory -----------------------------------------------------


def test_lock_file_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    site = _site(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    ws = tmp_path / ".lotdeploy"
    ws.mkdir(mode=0o700)
    (ws / "lock").symlink_to(victim)
    result = run_cli("render", site, "--out", tmp_path / "out", env=ENV)
    assert result.returncode == 1
    assert "symbolic link" in result.stderr and "lock" in result.stderr
    assert victim.read_text() == "precious\n"
    assert "Traceback" not in result.stderr


def test_an_existing_shared_directory_is_refused_not_chmodded(tmp_path: Path) -> None:
    site = _site(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    result = run_cli("render", site, "--out", tmp_path / "out", "--workspace", shared, env=ENV)
    assert result.returncode == 1
    assert "open to other users" in result.stderr and "0755" in result.stderr
    assert shared.stat().st_mode & 0o777 == 0o755
    assert list(shared.iterdir()) == []


def test_umask_000_gives_no_world_writable_directory(tmp_path: Path) -> None:
    site = _site(tmp_path)
    out = tmp_path / "deep" / "out"
    code = (
        "import os, sys; os.umask(0); from lotdeploy.cli import main; "
        f"main(['render', {str(site)!r}, '--out', {str(out)!r}])"
    )
    env = {**os.environ, **ENV}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for root in (tmp_path / "deep", tmp_path / ".lotdeploy"):
        for path in [root, *root.rglob("*")]:
            assert not path.stat().st_mode & 0o022, f"{path} is writable by others"
    assert (tmp_path / ".lotdeploy").stat().st_mode & 0o777 == 0o700


# -- render's output directory ----------------------------------------------------------------


def test_a_second_site_in_the_same_out_keeps_the_first_sites_bundles(tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    out = tmp_path / "out"
    first = _site(first_dir, site="site-a")
    assert run_cli("render", first, "--out", out, env=ENV).returncode == 0
    before = _tree(out)
    second = second_dir / "site.yaml"
    second.write_text(
        "site: site-b\nnodes:\n  - {name: b1, address: 10.9.0.1}\n  - {name: b2, address: 10.9.0.2}\n"
    )
    result = run_cli("render", second, "--out", out, env=ENV)
    assert result.returncode == 0, result.stderr
    assert "removed" not in result.stdout
    assert {k: v for k, v in _tree(out).items() if not k.startswith("b")} == before
    clash = second_dir / "clash.yaml"
    clash.write_text(
        "site: site-b\nnodes:\n  - {name: eu1, address: 10.9.0.1}\n  - {name: b2, address: 10.9.0.2}\n"
    )
    result = run_cli("render", clash, "--out", out, env=ENV)
    assert result.returncode == 1
    assert "holds the bundle of site site-a" in result.stderr
    assert {k: v for k, v in _tree(out).items() if k.startswith("eu1")} == {
        k: v for k, v in before.items() if k.startswith("eu1")
    }


def test_a_symlinked_stale_directory_is_left_alone(tmp_path: Path) -> None:
    site = _site(tmp_path)
    out = tmp_path / "out"
    assert run_cli("render", site, "--out", out, env=ENV).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out / "eu1", elsewhere)
    (out / "old").symlink_to(elsewhere)
    result = run_cli("render", site, "--out", out, env=ENV)
    assert result.returncode == 0, result.stderr
    assert (out / "old").is_symlink() and (elsewhere / "manifest.json").exists()
    (out / "eu2").rename(tmp_path / "eu2-moved")
    (out / "eu2").symlink_to(tmp_path / "eu2-moved")
    result = run_cli("render", site, "--out", out, env=ENV)
    assert result.returncode == 1
    assert "eu2: is a symbolic link" in result.stderr and "None" not in result.stderr


def test_out_must_not_be_empty(tmp_path: Path) -> None:
    site = _site(tmp_path)
    result = run_cli("render", site, "--out", "", env=ENV, cwd=tmp_path)
    assert result.returncode == 1 and "must not be empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml"]


def test_render_unchanged_rewrites_nothing(tmp_path: Path) -> None:
    site = _site(tmp_path)
    out = tmp_path / "out"
    assert run_cli("render", site, "--out", out, env=ENV).returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    inodes = {p: p.stat().st_ino for p in stamps}
    time.sleep(0.05)
    assert run_cli("render", site, "--out", out, env=ENV).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {p: p.stat().st_ino for p in stamps} == inodes


def test_render_killed_at_random_points_converges(tmp_path: Path) -> None:
    """SIGKILL render at random moments; each rerun converges to the uninterrupted output
    byte for byte, with no temporary file left (one of them may hold a private key)."""
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference_site = _site(reference_dir)
    assert (
        run_cli("render", reference_site, "--out", reference_dir / "out", env=ENV).returncode == 0
    )
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(reference_dir / ".lotdeploy", work / ".lotdeploy")
    site = _site(work)
    out = work / "out"
    rng = random.Random(1234)
    env = {**os.environ, **ENV}
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "lotdeploy", "render", str(site), "--out", str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        result = run_cli("render", site, "--out", out, env=ENV)
        assert result.returncode == 0, result.stderr
        assert _tree(out) == _tree(reference_dir / "out")
        leftovers = [p for p in work.rglob("*.tmp")]
        assert leftovers == []


# -- what lotdeploy reads back ----------------------------------------------------------------


def test_an_edited_credential_version_does_not_mint_a_password(tmp_path: Path) -> None:
    site = _site(tmp_path)
    out = tmp_path / "out"
    assert run_cli("render", site, "--out", out, env=ENV).returncode == 0
    state_file = tmp_path / ".lotdeploy" / "state.json"
    doc = json.loads(state_file.read_text())
    doc["credentials"]["active_version"] = 5
    state_file.write_text(json.dumps(doc))

    def snapshot() -> tuple[dict[str, tuple[int, bytes]], ...]:
        workspace = _tree(tmp_path / ".lotdeploy")
        workspace.pop("lock")  # records the last holder's pid
        return workspace, _tree(out)

    before = snapshot()
    result = run_cli("render", site, "--out", out, env=ENV)
    assert result.returncode == 1
    assert "cluster password v5" in result.stderr and "restore" in result.stderr
    assert snapshot() == before


@pytest.mark.parametrize(
    ("kdf", "why"),
    [
        ({"n": 2**22}, "inflated"),
        ({"r": 64}, "inflated"),
        ({"p": 64}, "inflated"),
        ({"n": 1000}, "not a power of two"),
        ({"n": "32768"}, "a string"),
        ({"name": "argon2"}, "unknown KDF"),
    ],
)
def test_hostile_kdf_parameters_are_refused_before_any_work(
    tmp_path: Path, kdf: dict[str, object], why: str
) -> None:
    path = tmp_path / "secrets.enc"
    store = SecretStore.open(path, Secret("p" * 12))
    store.set("x", Secret("y" * 12))
    store.save()
    doc = json.loads(path.read_text())
    doc["header"]["kdf"].update(kdf)
    path.write_text(json.dumps(doc))
    start = time.perf_counter()
    with pytest.raises(SecretStoreError, match="damaged"):
        SecretStore.open(path, Secret("p" * 12))
    assert time.perf_counter() - start < 0.5, why


def test_wrong_passphrase_hint_names_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOTDEPLOY_PASSPHRASE", raising=False)
    ws = Workspace(tmp_path / "ws", passphrase_provider=lambda creating: Secret("first-passphrase"))
    ws.secrets().save()
    typed = Workspace(
        tmp_path / "ws", passphrase_provider=lambda creating: Secret("other-passphrase")
    )
    with pytest.raises(SecretStoreError) as err:
        typed.secrets()
    assert "LOTDEPLOY_PASSPHRASE" not in str(err.value) and "passphrase given" in str(err.value)
    monkeypatch.setenv("LOTDEPLOY_PASSPHRASE", "other-passphrase")
    with pytest.raises(SecretStoreError, match="check LOTDEPLOY_PASSPHRASE"):
        Workspace(
            tmp_path / "ws", passphrase_provider=lambda c: Secret("other-passphrase")
        ).secrets()


def test_workspace_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    ws = tmp_path / "ws"
    ws.mkdir(mode=0o700)
    os.chown(ws, 65534, 65534)
    with pytest.raises(WorkspaceError, match="belongs to another user"):
        Workspace(ws).ensure()


# -- output ---------------------------------------------------------------------------------


def test_a_failed_write_to_stdout_is_an_error(tmp_path: Path) -> None:
    site = _site(tmp_path)
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "lotdeploy", "plan", str(site), "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "cannot write the output" in result.stderr


def test_json_mode_reports_errors_as_json_on_stdout(tmp_path: Path) -> None:
    broken = tmp_path / "site.yaml"
    broken.write_text("site: s\nnodes:\n  - {name: a, address: 10.0.0.1, bogus: 1}\n")
    result = run_cli("plan", broken, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["error"]["exit_status"] == 1
    assert doc["diagnostics"][0]["line"] == 3 and "bogus" in doc["diagnostics"][0]["message"]
    assert "site.yaml:3:" in result.stderr  # the human line stays on stderr
    missing = run_cli("certs", "list", tmp_path / "nope.yaml", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["message"]


def test_dumb_terminal_gets_no_colour(tmp_path: Path) -> None:
    site = _site(tmp_path, "plant-a.yaml")
    outputs = {}
    for term in ("xterm-256color", "dumb"):
        pid, fd = pty.fork()
        if pid == 0:  # the child: the real CLI on a terminal
            os.environ.update(TERM=term)
            os.environ.pop("NO_COLOR", None)
            os.execv(sys.executable, [sys.executable, "-m", "lotdeploy", "plan", str(site)])
        chunks = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.waitpid(pid, 0)
        os.close(fd)
        outputs[term] = b"".join(chunks)
    assert b"\x1b[" in outputs["xterm-256color"]
    assert b"\x1b[" not in outputs["dumb"] and b"Plan:" in outputs["dumb"]


def test_duplicate_node_values_issue_one_certificate(tmp_path: Path) -> None:
    site = _site(tmp_path)
    assert run_cli("render", site, "--out", tmp_path / "out", env=ENV).returncode == 0
    result = run_cli("certs", "rotate", site, "--node", "eu1", "--node", "eu1", env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("eu1") == 1, result.stdout

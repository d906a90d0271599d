"""Safe on every surface (issue 19), through the real CLI where a user meets it: readers that
never hang or crash, one output writer that destroys nothing, destructive commands that act
only on what they made, Ansible that never templates a site value, selections that never mean
the opposite, and one terminal sanitiser. docs/reliability.md lists each row and its test;
the node side (secrets private from creation, output caps) is tests/test_safety_lab.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lotdeploy import fsutil, terminal
from lotdeploy.fsutil import UnreadableFile, parse_json, read_json, write_output
from tests.conftest import REPO, TEST_PASSPHRASE

ENV = {"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE}
BIN = Path(sys.executable).parent
HOSTILE = '{{ lookup("pipe", "touch PWNED") }}'


def cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, bounded: a hang fails the test in `timeout` seconds."""
    full = {k: v for k, v in os.environ.items() if k != "LOTDEPLOY_PASSPHRASE"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lotdeploy", *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=timeout,
    )


def one_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run failed with exit 1 and exactly one error line (`lotdeploy: error: ...` or a
    located `file:1:1: error: ...`), holding every needle."""
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def site(tmp_path: Path, name: str = "geo.yaml", change: str = "") -> Path:
    path = tmp_path / "site.yaml"
    text = (REPO / "inventories" / name).read_text()
    path.write_text(text.replace("  tls: true", "  tls: false") + change)
    return path


def without_us1(text: str) -> str:
    """inventories/geo.yaml without its last node, us1 (and its region and link)."""
    return text[: text.index("  - name: us1")].replace("  us: {}\n", "")


def private_null(tmp_path: Path) -> Path | None:
    """A character device like /dev/null (1,3) of the test's own (None without root): the
    machine's /dev/null is shared, and code with the bug under test would replace it by a
    regular file."""
    if os.geteuid() != 0:
        return None
    path = tmp_path / "null"
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


# -- one bounded reader ------------------------------------------------------------------------

#: What a file lotdeploy reads back may be instead of what it wrote.
BAD = {
    "deep": b'{"format": "lotdeploy-plan", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nan": b'{"format": "lotdeploy-plan", "format_version": NaN}',
    "infinity": b'{"format": "lotdeploy-plan", "n": 1e999}',
    "not-utf8": b'{"format": "lotdeploy-plan", "\xff": 1}',
    "huge-int": b'{"format": "lotdeploy-plan", "n": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", *BAD])
def test_saved_plan_that_is_no_plan_is_one_line(tmp_path: Path, kind: str) -> None:
    """The latest plan a bare `apply` reads, and a plan named on the command line."""
    site(tmp_path)
    latest = tmp_path / ".lotdeploy" / "plans" / "latest.json"
    latest.parent.mkdir(parents=True)
    (tmp_path / ".lotdeploy").chmod(0o700)
    if kind == "fifo":
        fifo(latest)
    elif kind == "dev-zero":
        latest.symlink_to("/dev/zero")
    else:
        latest.write_bytes(BAD[kind])
    started = time.monotonic()
    one_error(cli("apply", "--auto-approve", cwd=tmp_path), ".lotdeploy/plans/latest.json")
    if kind in BAD:
        named = tmp_path / "named.plan"
        shutil.copy(latest, named)
        one_error(cli("apply", named, "--auto-approve", cwd=tmp_path), str(named))
    else:  # not a regular file: not taken for a plan, and the site loader refuses it too
        one_error(cli("apply", latest, "--auto-approve", cwd=tmp_path), str(latest), "not a")
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep", "nan", "not-utf8"])
def test_state_that_is_no_state_is_one_line(tmp_path: Path, kind: str) -> None:
    site_file = site(tmp_path)
    state = tmp_path / ".lotdeploy" / "state.json"
    state.parent.mkdir(mode=0o700)
    if kind == "fifo":
        fifo(state)
    elif kind == "dev-zero":
        state.symlink_to("/dev/zero")
    else:
        state.write_bytes(BAD[kind].replace(b"lotdeploy-plan", b"lotdeploy-state"))
    one_error(cli("plan", site_file), str(state), "nothing was changed")


@pytest.mark.parametrize("kind", ["fifo", "deep", "nan"])
def test_secret_store_that_is_no_store_is_one_line(tmp_path: Path, kind: str) -> None:
    site_file = site(tmp_path)
    store = tmp_path / ".lotdeploy" / "secrets.enc"
    store.parent.mkdir(mode=0o700)
    if kind == "fifo":
        fifo(store)
    else:
        store.write_bytes(BAD[kind])
    one_error(cli("render", site_file, "--out", tmp_path / "out", env=ENV), str(store))
    assert not (tmp_path / "out").exists()


def test_run_log_lines_that_are_no_runs_are_warnings_naming_the_line(tmp_path: Path) -> None:
    site_file = site(tmp_path)
    log = tmp_path / ".lotdeploy" / "ansible" / "runs.jsonl"
    (tmp_path / ".lotdeploy").mkdir(mode=0o700)  # a workspace is private
    log.parent.mkdir()
    good = {"ident": "run-1", "status": "successful", "artifacts": "/a", "nodes": [], "hosts": {}}
    hostile = {**good, "ident": "run-2\x1b]52;c;cHduZWQ=\x07", "hosts": {"eu1": {}}}
    lines = [
        json.dumps(good),
        '{"ident": "torn',
        "[" * 50_000,
        '{"ident": NaN}',
        "[1, 2]",
        json.dumps(hostile),
    ]
    log.write_text("\n".join(lines) + "\n")
    result = cli("ansible-runs", site_file)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert [w.split(":")[2] for w in warned] == ["2", "3", "4", "5"], warned
    assert "run-1" in result.stdout
    # a run's text came from a file: shown, never acted on by the terminal
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "run-2\\x1b]52;c;cHduZWQ=\\x07" in result.stdout  # OSC 52: the clipboard


def test_a_last_verify_result_that_is_a_fifo_is_a_warning_not_a_hang(tmp_path: Path) -> None:
    site_file = site(tmp_path)
    last = tmp_path / ".lotdeploy" / "verify" / "last.json"
    (tmp_path / ".lotdeploy").mkdir(mode=0o700)
    fifo(last)
    result = cli("plan", site_file)
    assert result.returncode == 0, result.stderr
    assert f"warning: {last}: cannot read the last verify result: it is a FIFO" in result.stderr


def test_a_lab_state_that_is_a_fifo_is_one_line(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    fifo(lab_dir / ".lab" / "state.json")
    result = subprocess.run(
        [sys.executable, "-m", "lotdeploy.lab", "status", "--dir", str(lab_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    one_error(result, "state.json", "FIFO")


def test_read_json_rules() -> None:
    assert parse_json(b'{"a": [1, 2.5, "x\\u00e9"]}') == {"a": [1, 2.5, "x\u00e9"]}
    assert parse_json(b"[" * 64 + b"]" * 64) is not None
    for data, reason in (
        (b"[" * 65 + b"]" * 65, "nests deeper than 64 levels"),
        (b'{"a": "' + b"[" * 1000 + b'"}', None),  # brackets in a string are text
        (b"NaN", "NaN is not a JSON number"),
        (b"[-Infinity]", "-Infinity is not a JSON number"),
        (b"[1e400]", "out of range"),
        (b"\xc3\x28", "not valid UTF-8"),
        (b"[1,]", "is not JSON (line 1, column 4"),
    ):
        if reason is None:
            parse_json(data)
            continue
        with pytest.raises(UnreadableFile, match=reason.replace("(", r"\(")):
            parse_json(data)
    with pytest.raises(UnreadableFile, match="is a character device") as info:
        read_json(Path("/dev/zero"), 100)
    assert info.value.about("the plan") == (
        "cannot read the plan: it is a character device, not a regular file"
    )


# -- one output writer -------------------------------------------------------------------------


def test_write_output_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nothing there, then a regular file: created, then replaced atomically with the mode
    target = tmp_path / "sub" / "out.txt"
    write_output(target, "one\n", 0o600)
    inode = target.stat().st_ino
    write_output(target, "two\n", 0o640)
    assert target.read_text() == "two\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.stat().st_ino != inode  # a new file renamed over the old: atomic
    # a character device is written in place, never replaced
    null = private_null(tmp_path)
    if null is not None:
        write_output(null, "gone\n")
        assert stat.S_ISCHR(os.lstat(null).st_mode)
    # a symlink stays; its target is written (atomically, in the target's directory)
    real = tmp_path / "real" / "report.html"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    write_output(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real) and real.read_text() == "new"
    # a symlink to nothing, a directory, a socket: refused, nothing created or changed
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(OSError, match="symbolic link to nothing"):
        write_output(dangling, "x")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(OSError, match="is a directory"):
        write_output(tmp_path / "sub", "x")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        with pytest.raises(OSError, match="is a socket"):
            write_output(tmp_path / "sock", "x")
    assert stat.S_ISSOCK(os.lstat(tmp_path / "sock").st_mode)
    # a FIFO: written in place when a reader comes; refused after a bounded wait otherwise
    pipe = fifo(tmp_path / "pipe")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()
    write_output(pipe, "through the pipe\n")
    reader.join(10)
    assert got == [b"through the pipe\n"] and stat.S_ISFIFO(os.lstat(pipe).st_mode)
    monkeypatch.setattr(fsutil, "FIFO_WAIT", 0.3)
    started = time.monotonic()
    with pytest.raises(OSError, match="FIFO no one reads"):
        write_output(pipe, "nobody\n")
    assert time.monotonic() - started < 5


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's link")
def test_write_output_does_not_follow_a_strangers_link_in_a_shared_directory(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = shared / "report.html"
    planted.symlink_to(victim)
    os.lchown(planted, 65534, 65534)  # nobody's link
    with pytest.raises(OSError, match="another user's symbolic link"):
        write_output(planted, "x")
    assert victim.read_text() == "precious\n"


def test_cli_outputs_never_replace_a_device_fifo_or_link(tmp_path: Path) -> None:
    site_file = site(tmp_path)
    # plan --out /dev/null (a private one): it stays the device
    null = private_null(tmp_path)
    if null is not None:
        assert cli("plan", site_file, "--out", null).returncode == 0
        assert stat.S_ISCHR(os.lstat(null).st_mode)
    # inventory --out a FIFO another process reads
    pipe = fifo(tmp_path / "inventory.pipe")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()
    result = cli("inventory", site_file, "--out", pipe)
    reader.join(10)
    assert result.returncode == 0, result.stderr
    assert got and b"ansible_host" in got[0] and stat.S_ISFIFO(os.lstat(pipe).st_mode)
    # plan --out a symlink: the link stays, what it points to gets the plan
    real = tmp_path / "plans" / "release.plan"
    real.parent.mkdir()
    real.write_text("an older plan")
    (tmp_path / "release.plan").symlink_to(real)
    assert cli("plan", site_file, "--out", tmp_path / "release.plan").returncode == 0
    assert (tmp_path / "release.plan").is_symlink() and b"lotdeploy-plan" in real.read_bytes()
    # a directory: one line, nothing written
    (tmp_path / "adir").mkdir()
    one_error(cli("inventory", site_file, "--out", tmp_path / "adir"), "adir", "directory")
    assert list((tmp_path / "adir").iterdir()) == []


def test_output_next_to_a_users_own_temporary_leaves_it(tmp_path: Path) -> None:
    """atomic_write sweeps what a killed run of lotdeploy left, and only that."""
    site_file = site(tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    theirs = reports / ".notes.abcd1234.tmp"  # what tempfile.mkstemp makes for anyone
    theirs.write_text("mine\n")
    ours = reports / ".x.plan.lotdeploy-abcd1234.tmp"
    ours.write_text("left by a killed run")
    assert cli("plan", site_file, "--out", reports / "x.plan").returncode == 0
    assert theirs.read_text() == "mine\n" and not ours.exists()


# -- destructive commands act only on what they made --------------------------------------------


def test_lab_down_on_a_directory_that_is_no_lab_removes_nothing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("site.yaml", "known_hosts"):
        (project / name).write_text(f"{name} of the user\n")
    for sub in ("keys", "secrets", "nodes"):
        (project / sub).mkdir()
        (project / sub / "f").write_text("theirs\n")
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    for command in ("down", "up"):
        result = subprocess.run(
            [sys.executable, "-m", "lotdeploy.lab", command, "--dir", str(project)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if command == "up" and "lotdeploy: error:" not in result.stderr:
            pytest.fail(f"lab up accepted a project directory: {result.stdout}")
        one_error(result, str(project), "no lab" if command == "down" else "not empty")
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before
    assert (project / "site.yaml").read_text() == "site.yaml of the user\n"


def test_export_ansible_overwrites_only_what_it_wrote(tmp_path: Path) -> None:
    site_file = site(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    (out / "deploy.yml").write_text("their playbook\n")
    # a file in the way that the export did not write: refused, nothing written
    result = cli("export-ansible", site_file, out, env=ENV)
    one_error(result, str(out / "deploy.yml"), "not written by export-ansible")
    assert sorted(p.name for p in out.iterdir()) == ["deploy.yml"]
    assert (out / "deploy.yml").read_text() == "their playbook\n"
    # a symlinked sub-directory: refused, never followed
    (out / "deploy.yml").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "bundles").symlink_to(elsewhere)
    one_error(cli("export-ansible", site_file, out, env=ENV), str(out / "bundles"), "symbolic")
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["bundles"]
    # beside the user's own files: fine; again over its own export: fine
    (out / "bundles").unlink()
    (out / "NOTES.md").write_text("mine\n")
    for _ in range(2):
        result = cli("export-ansible", site_file, out, env=ENV)
        assert result.returncode == 0, result.stderr
    assert (out / "NOTES.md").read_text() == "mine\n"
    marker = json.loads((out / ".lotdeploy-export.json").read_text())
    assert "bundles/eu1/release.tar" in marker["files"] and "NOTES.md" not in marker["files"]
    # a node that leaves the site: its files go, a file someone put beside them stays
    (out / "bundles" / "us1" / "theirs.txt").write_text("keep\n")
    smaller = tmp_path / "smaller.yaml"  # the same site and workspace, without us1
    smaller.write_text(without_us1(site_file.read_text()))
    result = cli("export-ansible", smaller, out, env=ENV)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "bundles" / "us1").iterdir()) == ["theirs.txt"]
    assert not (out / "bundles" / "eu1").is_symlink() and (out / "bundles" / "eu1").is_dir()


def test_render_removes_of_a_stale_bundle_only_the_files_it_lists(tmp_path: Path) -> None:
    site_file = site(tmp_path)
    out = tmp_path / "out"
    assert cli("render", site_file, "--out", out, env=ENV).returncode == 0
    (out / "us1" / "notes.txt").write_text("theirs\n")
    site_file.write_text(without_us1(site_file.read_text()))
    result = cli("render", site_file, "--out", out, env=ENV)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "us1").iterdir()) == ["notes.txt"]


# -- selections that mean the opposite ---------------------------------------------------------


@pytest.mark.parametrize("words", [("--limit", ""), ("--limit", "eu1,"), ("--exclude", " ")])
def test_an_empty_selection_word_is_refused(tmp_path: Path, words: tuple[str, str]) -> None:
    one_error(cli("plan", site(tmp_path), *words), words[0], "empty name")


def test_tags_that_would_be_one_ansible_group_are_refused(tmp_path: Path) -> None:
    site_file = site(tmp_path)
    text = site_file.read_text()
    text = text.replace("    region: eu\n", "    region: eu\n    tags: [blue-green]\n", 1)
    text = text.replace("    region: us\n", "    region: us\n    tags: [blue_green]\n", 1)
    site_file.write_text(text)
    one_error(cli("inventory", site_file), "'blue-green'", "'blue_green'", "tag_blue_green")


# -- data is never code ------------------------------------------------------------------------


def test_the_exported_project_never_templates_a_site_value(tmp_path: Path) -> None:
    """`export-ansible` of a site whose reload_command is a Jinja lookup, then real
    `ansible-playbook` with that inventory: the value is shown and passed as it is."""
    pwned = tmp_path / "pwned"
    hostile = HOSTILE.replace("PWNED", str(pwned))
    site_file = site(tmp_path)
    site_file.write_text(
        site_file.read_text().replace(
            "reload_command: systemctl restart coreflux-broker",
            f"reload_command: '{hostile}'",
        )
    )
    out = tmp_path / "export"
    result = cli("export-ansible", site_file, out, env=ENV)
    assert result.returncode == 0, result.stderr
    probe = out / "probe.yml"
    probe.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.debug:\n        msg: 'reload: {{ lotdeploy_reload_command }}'\n"
        "    - ansible.builtin.set_fact:\n        copied: '{{ lotdeploy_reload_command }}'\n"
        "    - ansible.builtin.command: echo {{ copied | quote }}\n"
        "      register: echoed\n      changed_when: false\n"
        "    - ansible.builtin.assert:\n        that: echoed.stdout == lotdeploy_reload_command\n"
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1"}
    env.pop("LOTDEPLOY_PASSPHRASE", None)
    played = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "inventory",
            "probe.yml",
            "-c",
            "local",
            "-e",
            "ansible_python_interpreter=" + sys.executable,
        ],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert played.returncode == 0, played.stdout[-3000:] + played.stderr[-2000:]
    assert "reload: {{ lookup(" in played.stdout  # shown as it is, never evaluated
    assert not pwned.exists()
    assert "reload_command: !unsafe" in (out / "inventory" / "hosts.yml").read_text().replace(
        "lotdeploy_reload_command", "reload_command"
    )


# -- one terminal sanitiser --------------------------------------------------------------------


def test_clean_shows_every_character_a_terminal_acts_on() -> None:
    clean = terminal.clean
    assert clean("plain text, tabs\tand\nnewlines, é and 漢字") == (
        "plain text, tabs\tand\nnewlines, é and 漢字"
    )
    assert clean("\x1b[2J\x1b]0;title\x07\r\x7f") == "\\x1b[2J\\x1b]0;title\\x07\\x0d\\x7f"
    assert clean("é\u009b31m \u202eevil \u200b \u2028 \ud800") == (
        "é\\u009b31m \\u202eevil \\u200b \\u2028 \\ud800"
    )


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_guard_passes_only_lotdeploys_own_styling(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _Tty()
    guard = terminal.Guard(tty)
    monkeypatch.setattr(terminal, "_guards", [guard])
    forged = "\x00" + "0" * 16 + ":31\x00"  # a mark with another token: text, shown
    guard.write(terminal.style("+", fg="green", bold=True) + " route \x1b[8mhidden" + forged)
    assert tty.getvalue() == "\x1b[32;1m+\x1b[0m route \\x1b[8mhidden\\x00" + "0" * 16 + ":31\\x00"
    piped = io.StringIO()
    terminal.Guard(piped).write(terminal.style("+", fg="red") + " x")
    assert piped.getvalue() == "+ x"  # no terminal: no colour at all


def test_colour_and_the_guard_on_a_real_terminal(tmp_path: Path) -> None:
    """The real CLI on a pty: lotdeploy's colours arrive, a hostile run ident does not act."""
    import pty
    import select

    site_file = site(tmp_path)
    log = tmp_path / ".lotdeploy" / "ansible" / "runs.jsonl"
    (tmp_path / ".lotdeploy").mkdir(mode=0o700)  # a workspace is private
    log.parent.mkdir()
    log.write_text(
        json.dumps({"ident": "x\x1b]0;pwned\x07", "status": "s", "artifacts": "/a", "nodes": []})
        + "\n"
    )
    outputs = {}
    for args in (["plan", str(site_file)], ["ansible-runs", str(site_file)]):
        pid, fd = pty.fork()
        if pid == 0:
            os.environ.update(TERM="xterm-256color")
            os.environ.pop("NO_COLOR", None)
            os.execv(sys.executable, [sys.executable, "-m", "lotdeploy", *args])
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
        outputs[args[0]] = b"".join(chunks)
    assert b"\x1b[32;1m+\x1b[0m" in outputs["plan"]
    assert (
        b"x\\x1b]0;pwned\\x07" in outputs["ansible-runs"] and b"\x07" not in outputs["ansible-runs"]
    )


# -- broker replies are bounded --------------------------------------------------------------


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


def test_a_broker_reply_of_hundreds_of_mb_costs_no_memory() -> None:
    """A 'broker' on loopback answers the subscription, then starts a 256 MB reply: the
    session refuses it by its announced length, the connection ends saying why, and the
    process's peak memory does not grow by the reply (paho would read it whole)."""
    import resource

    from lotdeploy.broker.session import BrokerClient
    from lotdeploy.errors import BrokerError
    from lotdeploy.secret import Secret

    sent = 0

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await _read_packet(reader)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK: accepted
        _, body = await _read_packet(reader)  # SUBSCRIBE
        writer.write(b"\x90\x03" + body[:2] + b"\x01")  # SUBACK, QoS 1
        topic = b"$SYS/Coreflux/Command/Output"
        writer.write(b"\x30\xff\xff\xff\x7f" + len(topic).to_bytes(2, "big") + topic)
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(OSError):
            while sent < 300 * (1 << 20):  # bounded, whatever the client does
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        writer.close()

    async def scenario() -> str:
        server = await asyncio.start_server(broker, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = BrokerClient(
            "n1", "127.0.0.1", port, "root", Secret("x"), reply_timeout=5.0, request_ids=False
        )
        try:
            await client.connect()
            with pytest.raises(BrokerError) as info:
                await client.command("listRoutes")
            return str(info.value)
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    message = asyncio.run(asyncio.wait_for(scenario(), 30))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert time.monotonic() - started < 15
    assert "268435455 bytes, more than the 16777216 accepted" in message, message
    assert grown_mib < 48, f"peak memory grew by {grown_mib:.0f} MiB"
    assert sent < 300 * (1 << 20)  # the client hung up, it did not read it all


def test_ssh_percent_tokens_in_site_values_stay_literal(tmp_path: Path) -> None:
    """ssh expands %-tokens in ProxyCommand, then a shell runs it: a jump user `%r` would
    become the node's user (a spec value) inside that shell command. The real ssh runs our
    options; the ProxyCommand's `ssh` is a stand-in that records the words it got."""
    from lotdeploy.transport.sshopts import SshOptions

    if shutil.which("ssh") is None:
        pytest.skip("no ssh")
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    record = tmp_path / "words"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexit 1\n')
    fake.chmod(0o755)
    options = SshOptions(
        host="127.0.0.1",
        port=9,
        user="node-user",
        key=str(tmp_path / "k%d"),
        known_hosts=str(tmp_path / "kh%u"),
        jump="%r@127.0.0.1:9",
    )
    argv = [shutil.which("ssh") or "ssh", *options.argv()[1:], "true"]
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(argv, capture_output=True, timeout=30, env=env, check=False)
    words = record.read_text().splitlines()
    assert words[words.index("-l") + 1] == "%r"  # not "node-user"
    assert f"UserKnownHostsFile={tmp_path}/kh%u" in words and f"{tmp_path}/k%d" in words


def test_the_runs_secret_directory_is_never_followed(tmp_path: Path) -> None:
    from lotdeploy.ansible.runner import PrivateDataDir
    from lotdeploy.errors import LotdeployError

    pdd = PrivateDataDir(tmp_path)
    pdd.root.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "theirs").write_text("keep\n")
    pdd.bundles.symlink_to(elsewhere)
    files = {"n1": [("server.key", b"secret", 0o600)]}
    with pytest.raises(LotdeployError, match="refusing to remove it"), pdd.secret_files(files):
        pass
    assert sorted(p.name for p in elsewhere.iterdir()) == ["theirs"]


def test_a_file_system_error_naming_a_path_is_one_line_not_an_internal_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """fleet's run directory on a read-only FLEET_DIR, `watch --log` in a missing directory:
    an OSError with a path that no layer put into words is the user's environment (exit 1,
    the path and the cause), never "internal error" (exit 70)."""
    from lotdeploy.cli.run import report

    assert report(PermissionError(13, "Permission denied", "/fleet/.runs")) == 1
    assert report(FileNotFoundError(2, "No such file or directory", "/nope/watch.log")) == 1
    err = capsys.readouterr().err
    assert "/fleet/.runs: Permission denied" in err and "/nope/watch.log" in err
    assert "internal error" not in err

"""Helpers for the lab tests: skip conditions, bounded probes, and the leftover check that
proves `lab down` removed everything (namespaces, links, rules, mounts, processes)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lotdeploy.lab import labstate, netns

ROOT_TOOLS = ("ip", "iptables", "sshd", "ssh", "ssh-keygen")
TEST_USER = "lotdeploy-test"
PROJECT = Path(__file__).resolve().parent.parent

# Measures TCP connect times (ms) to HOST:PORT, or the error; bounded in count and time.
CONNECT_PROBE = """
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(count):
    t = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=3).close()
        out.append(round((time.monotonic() - t) * 1000, 1))
    except OSError as exc:
        out.append(f"{type(exc).__name__} after {(time.monotonic() - t) * 1000:.0f} ms")
print(json.dumps(out))
"""


def _have(tool: str) -> bool:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


def skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, iptables)")
    missing = [t for t in ROOT_TOOLS if not _have(t)]
    if missing:
        pytest.skip(
            f"missing tools: {', '.join(missing)} (apt-get install openssh-server "
            "iptables iproute2)"
        )


def connect_times(ns: str | None, host: str, port: int, count: int = 5) -> list[float | str]:
    """TCP connect times from inside namespace `ns` (None: from the host)."""
    argv = [sys.executable, "-c", CONNECT_PROBE, host, str(port), str(count)]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    result: list[float | str] = json.loads(out.stdout)
    return result


_USER_PYTHONPATH: dict[str, str] = {}


def user_pythonpath(user: str, python: str) -> str:
    """A PYTHONPATH from which `user` can import lotdeploy and its dependencies.

    The checkout and its .venv may sit where an unprivileged user cannot read (under /root,
    say); then both are copied, once per run, into a world-readable temporary directory.
    """
    if user in _USER_PYTHONPATH:
        return _USER_PYTHONPATH[user]
    direct = os.pathsep.join([str(PROJECT), *site.getsitepackages()])
    probe = [
        "runuser",
        "-u",
        user,
        "--",
        "env",
        f"PYTHONPATH={direct}",
        python,
        "-c",
        "import lotdeploy.cli.lab, amqtt, yaml",
    ]
    if subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0:
        _USER_PYTHONPATH[user] = direct
        return direct
    copy = Path(tempfile.mkdtemp(prefix="lotdeploy-usertest-"))
    atexit.register(shutil.rmtree, copy, True)
    shutil.copytree(
        PROJECT / "lotdeploy",
        copy / "src" / "lotdeploy",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for index, packages in enumerate(site.getsitepackages()):
        shutil.copytree(
            packages,
            copy / f"site{index}",
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "lotdeploy*"),
        )
    subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True, timeout=120)
    paths = [
        str(copy / "src"),
        *(str(copy / f"site{i}") for i in range(len(site.getsitepackages()))),
    ]
    _USER_PYTHONPATH[user] = os.pathsep.join(paths)
    return _USER_PYTHONPATH[user]


def lab_cli(
    lab_dir: Path,
    *args: str,
    user: str | None = None,
    timeout: float = 120,
    python: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m lotdeploy.lab ARGS --dir DIR`, optionally as another user (runuser)."""
    argv = [python or sys.executable, "-m", "lotdeploy.lab", *args, "--dir", str(lab_dir)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), *site.getsitepackages()])
    if user:
        pythonpath = user_pythonpath(user, python or sys.executable)
        argv = ["runuser", "-u", user, "--", "env", f"PYTHONPATH={pythonpath}", *argv]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(lab_dir.parent),
        check=False,
    )


def ssh_node(
    lab_dir: Path,
    node: str,
    command: str,
    user: str | None = None,
    timeout: float = 30,
    python: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return lab_cli(lab_dir, "ssh", node, command, user=user, timeout=timeout, python=python)


def live_processes(pids: list[int]) -> list[int]:
    """Pids that run (zombies waiting for PID 1 to reap them do not count)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def leftovers(lab_dir: Path, uid: int | None = None) -> list[str]:
    """Everything of the lab in `lab_dir` still on the machine (empty after a good down)."""
    lab_id = labstate.lab_id_for(lab_dir)
    found: list[str] = []
    if os.geteuid() == 0:
        found += [f"namespace {n}" for n in netns.existing_namespaces(lab_id)]
        found += [f"link {n}" for n in netns.existing_links(lab_id)]
        rules = subprocess.run(
            ["iptables", "-w", "10", "-S"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
        found += [f"rule {r}" for r in rules.splitlines() if f"lotdeploy-lab-{lab_id}" in r]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {m}" for m in mounts.splitlines() if str(lab_dir.resolve()) in m]
    needle = str(lab_dir.resolve())
    procs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd and ("sshd" in cmd or "lotdeploy.lab." in cmd):
            procs.append(int(entry.name))
    found += [f"process {p}" for p in live_processes(procs)]
    if lab_dir.exists() and any(lab_dir.iterdir()):
        found.append(f"files {sorted(p.name for p in lab_dir.iterdir())}")
    return found


def wait_gone(lab_dir: Path, timeout: float = 10.0) -> list[str]:
    """Leftovers after a bounded wait (killed processes take a moment to go)."""
    deadline = time.monotonic() + timeout
    left = leftovers(lab_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(lab_dir)
    return left


def ensure_test_user() -> str:
    """The unprivileged user of the non-root test (.ci/run runs as root and creates it)."""
    if subprocess.run(["id", TEST_USER], capture_output=True, check=False).returncode != 0:
        if not _have("useradd"):
            pytest.skip("no useradd to create the unprivileged test user")
        subprocess.run(["useradd", "-m", TEST_USER], check=True, timeout=30)
    return TEST_USER


def python_for(user: str) -> str:
    """An interpreter `user` may run: ours, else the system's of the same version (the venv's
    packages come in through PYTHONPATH; the venv's base may sit under a private /root)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (sys.executable, f"/usr/bin/python{version}"):
        ok = subprocess.run(
            ["runuser", "-u", user, "--", candidate, "-c", "pass"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if ok.returncode == 0:
            return candidate
    pytest.skip(f"no Python {version} that {user} can run")


def lab_pid(lab_dir: Path, role: str) -> int:
    return labstate.require(lab_dir).pids[role]


def write_self_signed(tls_dir: Path, ip: str) -> None:
    """server.crt/server.key/ca.crt for `ip` (self-signed; enough to open the TLS listener)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tls_dir / "server.crt").write_bytes(pem)
    (tls_dir / "ca.crt").write_bytes(pem)
    (tls_dir / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

"""The OpenSSH transport: the `ssh` command, one control master per node.

Two uses:

* the Ansible transport's command channel: Ansible delivers the files, and lotdeploy's own
  steps (capabilities, users, routes, drift, doctor) reach the node through this transport,
  built from exactly the options the generated inventory gives Ansible
  (`lotdeploy.transport.sshopts`): strict host keys against the site's known_hosts, the same
  user, port, key and jump. No paramiko on this path. The master is lotdeploy's child and
  stops with it (lotdeploy.guard);
* `transport: openssh`, everything over OpenSSH (files too, each `put` one command), with
  the master **kept between commands** for `LOTDEPLOY_SSH_PERSIST` seconds of idleness
  (default 60; 0: closed at the end of each command), as Ansible's ControlPersist does: the
  next command's connection costs no SSH handshake (about six round trips a node). The
  master then outlives lotdeploy by design: an idle connection authenticated as the site's
  SSH user, reachable only through a socket in a 0700 directory of this user (which holds
  the key anyway) and named by a digest of every option (a master is reused only for the
  same user, host, port, key, known_hosts and jump). `ssh -O exit` or the timeout ends it.

Every `run`, `put`, `get` is one multiplexed `ssh` over the master, and `forward` asks the
master for a local forward (`-O forward -L 127.0.0.1:PORT:HOST:PORT`) and cancels it
afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lotdeploy.errors import LotdeployError
from lotdeploy.guard import guarded
from lotdeploy.secret import scrub
from lotdeploy.transport.base import (
    COMMAND_TIMEOUT,
    MAX_OUTPUT_BYTES,
    HostKeyError,
    RunResult,
    Transport,
    TransportError,
    output_overflow,
)
from lotdeploy.transport.ssh import _tail, command_label
from lotdeploy.transport.sshopts import SshOptions

if TYPE_CHECKING:
    from lotdeploy.transport import TransportKind

_HOST_KEY_WORDS = ("host key verification failed", "remote host identification has changed")
#: Seconds an idle master of `transport: openssh` is kept (0: closed with each command).
PERSIST_ENV = "LOTDEPLOY_SSH_PERSIST"
DEFAULT_PERSIST = 60
#: ports tried for one forward: the free port picked may be taken before the master binds it
FORWARD_PORT_TRIES = 5


def bounded_run(
    argv: list[str], data: bytes, timeout: float, max_output: int
) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run(argv, input=data, capture_output=True, timeout=timeout), keeping at
    most `max_output` bytes of each stream: past that the process is killed and the result
    has `stdout=None`. subprocess.run would hold whatever the node sends."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed(stdin: Any) -> None:
        with contextlib.suppress(OSError):  # the process may end without reading it all
            stdin.write(data)
        with contextlib.suppress(OSError):
            stdin.close()

    writer = threading.Thread(target=feed, args=(proc.stdin,), daemon=True)
    writer.start()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    kept = {out_fd: bytearray(), err_fd: bytearray()}
    deadline = time.monotonic() + timeout
    overflow = False
    with selectors.DefaultSelector() as selector:
        for stream in (proc.stdout, proc.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map() and not overflow:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(argv, timeout)
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif len(kept[key.fd]) + len(chunk) > max_output:
                    overflow = True
                    proc.kill()
                    break
                else:
                    kept[key.fd] += chunk
    try:
        status = proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    writer.join(1.0)
    if overflow:
        return subprocess.CompletedProcess(argv, status, None, None)
    return subprocess.CompletedProcess(argv, status, bytes(kept[out_fd]), bytes(kept[err_fd]))


class OpenSshTransport(Transport):
    def __init__(
        self,
        node: str,
        options: SshOptions,
        *,
        accept_new_host_keys: bool = False,
        connect_timeout: float = 10.0,
        persist: int = 0,
    ) -> None:
        self.node = node
        self.options = options
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = connect_timeout
        #: seconds the master is kept after the last use (0: lotdeploy's child, closed)
        self.persist = persist
        self._dir: Path | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self._forwards: list[str] = []
        self._shared: Path | None = None  # the persistent master's socket, once it works
        self._gone = False  # the persistent master was lost mid-command (see _lost)
        self._last_used: float | None = None  # when the last call or forward ended
        self._connecting = threading.Lock()

    @property
    def _socket(self) -> str:
        if self.persist:
            return str(self._shared or self._shared_socket())
        assert self._dir is not None
        return str(self._dir / "m")

    def _base(self, master: bool = False) -> list[str]:
        argv = self.options.argv()
        host = argv.pop()
        extra = ["-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}"]
        if self.accept_new_host_keys:
            extra = ["-o", "StrictHostKeyChecking=accept-new", *extra]  # first value wins
        control = ["-o", f"ControlPath={self._socket}"]
        if self.persist and master:  # kept `persist` seconds idle, in the background; a
            # connection that died (a node gone) is noticed within 45 s
            control += ["-M", "-N", "-f", "-o", f"ControlPersist={self.persist}s"]
            control += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
        elif self.persist:  # through the master only: where it is gone, ssh must not dial
            # the node itself (a command would run on a new connection unnoticed)
            control += ["-o", "ControlMaster=no", "-o", "ProxyCommand=/bin/false"]
        elif master:
            control += ["-M", "-N", "-o", "ControlPersist=no"]
        else:
            control += ["-o", "ControlMaster=no"]
        return [argv[0], *extra, *control, *argv[1:], host]

    def _shared_socket(self) -> Path:
        """The persistent master's socket: in this user's private directory, named by a
        digest of every option and of the known_hosts file's content (another key, user or
        host key list never shares a master: a key taken out of known_hosts takes effect at
        once)."""
        digest = hashlib.sha256(
            "\0".join([*self.options.argv(), str(self.accept_new_host_keys)]).encode()
        )
        with contextlib.suppress(OSError):
            digest.update(Path(self.options.known_hosts).read_bytes()[: 1 << 20])
        return control_directory() / digest.hexdigest()[:16]

    def _fail(self, cause: str) -> TransportError:
        """The ssh transport's words for a host key (changed, or not in the file), so an
        operator reads the same whichever transport met it."""
        text = scrub(cause)
        lower = text.lower()
        if not any(w in lower for w in _HOST_KEY_WORDS):
            return TransportError(self.node, text)
        known = self.options.known_hosts
        if "has changed" in lower or "identification has changed" in lower:
            said = f"does not match known_hosts {known}: refusing to connect"
        else:
            missing = "" if Path(known).exists() else " (the file does not exist)"
            said = (
                f"is not in known_hosts {known}{missing}; add it, or run with "
                "--accept-new-host-keys"
            )
        return HostKeyError(self.node, f"host key for {self.options.host} {said} ({text})")

    def connect(self) -> None:
        if shutil.which("ssh") is None:  # the default transport: say what to do, no traceback
            raise self._fail(
                "the ssh command is not installed (Debian package openssh-client): install "
                "it, or choose `transport: ssh` (fabric/paramiko) in the site or --transport ssh"
            )
        self._gone = False
        if self.persist:
            self._connect_shared()
            return
        if self._master is not None and self._master.poll() is None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="ld-os-", dir="/tmp"))
        self._master = subprocess.Popen(
            guarded(self._base(master=True)),  # the master stops with lotdeploy
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.connect_timeout + 2
        while time.monotonic() < deadline:
            if self._master.poll() is not None:
                err = (self._master.stderr.read() if self._master.stderr else b"").decode(
                    errors="replace"
                )
                self._cleanup()
                where = f"{self.options.host}:{self.options.port}"
                raise self._fail(f"cannot connect to {where}: {_tail(err) or 'ssh exited'}")
            sock = self._socket
            if Path(sock).exists() and _mux(sock, "check", timeout=5).returncode == 0:
                return
            time.sleep(0.02)
        self._cleanup()
        raise self._fail(
            f"cannot connect to {self.options.host}:{self.options.port}: timed out after "
            f"{self.connect_timeout:g} s"
        )

    def _connect_shared(self) -> None:
        """A master kept from an earlier command is used as it is (`-O check`: no round
        trip); otherwise one is started in the background (`-f`: it forks once
        authenticated; its stderr, and a jump host's ProxyCommand's, go to a file, never to
        a pipe this process would wait on). A socket whose master is gone is removed first."""
        with self._connecting:
            if self._shared is None:
                self._start_shared()
                self._last_used = time.monotonic()  # idle from here, for _require

    def _start_shared(self) -> None:
        path = self._shared_socket()
        self._shared = path
        if path.exists():
            if self._master_alive(path):
                return
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        where = f"{self.options.host}:{self.options.port}"
        with tempfile.TemporaryFile() as log:
            try:
                proc = subprocess.run(
                    self._base(master=True),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    timeout=self.connect_timeout + 5,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                self._shared = None
                raise self._fail(
                    f"cannot connect to {where}: timed out after {self.connect_timeout:g} s"
                ) from None
            log.seek(0)
            err = log.read(MAX_OUTPUT_BYTES).decode(errors="replace")
        if proc.returncode != 0 or not self._master_alive(path):
            self._shared = None
            raise self._fail(f"cannot connect to {where}: {_tail(err) or 'ssh failed'}")

    def _master_alive(self, path: Path) -> bool:
        try:
            return _mux(path, "check", timeout=10).returncode == 0
        except subprocess.TimeoutExpired:  # alive, maybe, but not answering: not usable
            raise self._fail(f"the SSH master at {path} does not answer") from None

    def _lost(self, what: str) -> TransportError:
        """A persistent master gone mid-command: this command is an error (never run again
        unnoticed), and so is every later call until connect() or close() (the transport
        contract: no silent new connection; a caller that only reads may choose a new one,
        as verify does)."""
        self._shared = None
        self._gone = True
        return self._fail(f"{what}the connection to {self.options.host} was lost")

    def _require(self) -> None:
        """The connection of every call: the one this transport had, else an error. One
        exception: a kept master that ended by its own idle timeout (ControlPersist: no
        channel for `persist` seconds, e.g. while apply waits for the operator's yes) is
        started again, since nothing was running on it; the master is asked only when this
        transport has been idle that long."""
        if self._gone:
            raise self._fail(f"the connection to {self.options.host} was lost")
        idle = time.monotonic() - self._last_used if self._last_used is not None else 0.0
        shared = self._shared
        long_idle = shared is not None and not self._forwards and idle >= max(self.persist - 1, 0)
        if long_idle and shared is not None and not self._master_alive(shared):
            with self._connecting:
                self._shared = None
        self.connect()

    def _ssh(
        self, remote: str, *, timeout: float, data: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        if self.persist:
            self._require()
        elif self._master is None or self._master.poll() is not None:
            if self._master is not None:
                raise self._fail(f"the connection to {self.options.host} was lost")
            self.connect()
        try:
            proc = bounded_run([*self._base(), remote], data or b"", timeout, MAX_OUTPUT_BYTES)
        except subprocess.TimeoutExpired:
            raise self._fail(
                f"`{command_label(remote)}` did not finish within {timeout:g} s"
            ) from None
        finally:
            self._last_used = time.monotonic()
        if proc.stdout is None:  # bounded_run's mark: more output than allowed
            raise self._fail(output_overflow(remote))
        shared = self._shared if self.persist and proc.returncode == 255 else None
        if shared is not None and not self._master_alive(shared):
            raise self._lost(f"`{command_label(remote)}`: ")
        return proc

    def run(
        self,
        command: str,
        *,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        input: bytes | None = None,
    ) -> RunResult:
        proc = self._ssh(command, timeout=timeout, data=input)
        result = RunResult(
            command,
            proc.returncode,
            scrub(proc.stdout.decode(errors="replace")),
            scrub(proc.stderr.decode(errors="replace")),
        )
        if proc.returncode == 255:
            raise self._fail(f"`{command_label(command)}`: ssh failed: {_tail(result.stderr)}")
        if check and not result.ok:
            tail = _tail(result.stderr) or "no output on stderr"
            raise self._fail(
                f"`{command_label(command)}` exited with status {result.exit_status}: {tail}"
            )
        return result

    def put(self, data: bytes, path: str, mode: int) -> None:
        """Write atomically: `mktemp` creates the temporary beside `path` owner-only and
        exclusively (an unguessable name, never a file or link planted there), the data and
        then `mode` go in, sync, rename over `path` (`mv -T`: never into a directory)."""
        script = (
            'umask 077; t=$(mktemp "$(dirname -- "$1")/.$(basename -- "$1").lotdeploy-XXXXXXXX'
            '.tmp") || exit $?; if cat > "$t" && chmod "$2" "$t" && sync "$t" && '
            'mv -Tf "$t" "$1"; then exit 0; fi; s=$?; rm -f "$t"; exit $s'
        )
        args = shlex.join(["put", path, f"{mode:04o}"])
        proc = self._ssh(f"sh -c {shlex.quote(script)} {args}", timeout=COMMAND_TIMEOUT, data=data)
        if proc.returncode != 0:
            tail = _tail(proc.stderr.decode(errors="replace"))
            raise self._fail(f"cannot write {path}: {tail or f'status {proc.returncode}'}")

    def get(self, path: str, max_bytes: int = 16 * 1024 * 1024) -> bytes | None:
        p = shlex.quote(path)
        script = (
            f"if [ ! -e {p} ]; then exit 3; fi; if [ ! -f {p} ]; then exit 4; fi; "
            f"head -c {max_bytes + 1} {p}"
        )
        proc = self._ssh(f"sh -c {shlex.quote(script)}", timeout=COMMAND_TIMEOUT)
        if proc.returncode == 3:
            return None
        if proc.returncode == 4:
            raise self._fail(f"cannot read {path}: it is not a regular file")
        if proc.returncode != 0:
            tail = _tail(proc.stderr.decode(errors="replace"))
            raise self._fail(f"cannot read {path}: {tail or f'status {proc.returncode}'}")
        if len(proc.stdout) > max_bytes:
            raise self._fail(f"{path} is more than the {max_bytes} bytes allowed")
        return proc.stdout

    @contextlib.contextmanager
    def _forward(self, remote_host: str, remote_port: int) -> Iterator[int]:
        if self._master is None or self.persist:
            self._require()

        def ask(spec: str) -> subprocess.CompletedProcess[bytes]:
            return _mux(self._socket, "forward", "-L", spec, timeout=10)

        # The master binds the port itself, so it is picked free beforehand; between the
        # two, another connection (any process's, or another node's forward picking the
        # same number) may take it: the master then says "Port forwarding failed" and
        # another port is tried (a local bind: nothing reached the node).
        for _ in range(FORWARD_PORT_TRIES):
            port = _free_port()
            spec = f"127.0.0.1:{port}:{remote_host}:{remote_port}"
            proc = ask(spec)
            if proc.returncode != 0 and self.persist and not self._master_alive(Path(self._socket)):
                raise self._lost(f"forward to {remote_host}:{remote_port}: ")
            if proc.returncode == 0 or b"forwarding failed" not in proc.stderr:
                break
        if proc.returncode != 0:
            tail = _tail(proc.stderr.decode(errors="replace"))
            raise self._fail(f"cannot forward to {remote_host}:{remote_port}: {tail}")
        self._forwards.append(spec)
        try:
            yield port
        finally:
            self._cancel(spec)
            self._last_used = time.monotonic()

    def _cancel(self, spec: str) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _mux(self._socket, "cancel", "-L", spec, timeout=5)
        with contextlib.suppress(ValueError):
            self._forwards.remove(spec)

    def forward(self, remote_host: str, remote_port: int) -> contextlib.AbstractContextManager[int]:
        return self._forward(remote_host, remote_port)

    def close(self) -> None:
        """Cancel this transport's forwards and end its master (a persistent one stays for
        the next command: the point of it)."""
        if self.persist:
            for spec in list(self._forwards):
                self._cancel(spec)
            self._shared = None
            self._gone = False
            return
        if self._master is None:
            return
        for spec in list(self._forwards):
            self._cancel(spec)
        exit_master(Path(self._socket))
        self._cleanup()

    def _cleanup(self) -> None:
        if self._master is not None:
            if self._master.poll() is None:
                self._master.terminate()
                try:
                    self._master.wait(5)
                except subprocess.TimeoutExpired:
                    self._master.kill()
                    self._master.wait(5)
            if self._master.stderr is not None:
                self._master.stderr.close()
        self._master = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def control_directory() -> Path:
    """This user's directory of persistent masters: `$XDG_RUNTIME_DIR/lotdeploy-ssh`, else
    (unset, or too long a path for a socket) `/tmp/lotdeploy-ssh-UID`; made 0700, and
    refused unless it is a real directory of this user that no one else may enter (a
    socket there is a logged-in connection)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and _own_private(Path(runtime)) else Path("/tmp")
    # a socket path has at most 107 bytes: this directory, "/lotdeploy-ssh/" (15), the
    # name (16) and the 17 ssh adds while it makes the socket
    if len(os.fsencode(str(base))) + 15 + 16 + 17 > 107:
        base = Path("/tmp")
    path = base / ("lotdeploy-ssh" if base != Path("/tmp") else f"lotdeploy-ssh-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise LotdeployError(
            f"refusing {path} for SSH control sockets: it must be a directory of this user "
            "that no one else may open (mode 0700)"
        )
    return path


def _free_port() -> int:
    """A port of 127.0.0.1 free now (for the master to bind right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _mux(path: Path | str, *words: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """One control command to the master at socket `path` (`ssh -O check|forward|cancel|
    exit ...`): answered by the local master, no round trip to the node."""
    return subprocess.run(
        ["ssh", "-o", f"ControlPath={path}", "-O", *words, "lotdeploy"],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def exit_master(path: Path) -> None:
    """`ssh -O exit` the master at socket `path` (5 s at most; gone already: nothing)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        _mux(path, "exit", timeout=5)


def exit_masters(directory: Path) -> None:
    """Every master whose socket is in `directory`, ended."""
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        exit_master(path)


def _own_private(path: Path) -> bool:
    """A directory of this user that no one else may write to (else another user could
    swap what lies in it)."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def persist_seconds() -> int:
    """`LOTDEPLOY_SSH_PERSIST` (seconds an idle master is kept), DEFAULT_PERSIST unset."""
    text = os.environ.get(PERSIST_ENV, "").strip()
    if not text:
        return DEFAULT_PERSIST
    if not text.isdigit() or int(text) > 86400:
        raise LotdeployError(
            f"{PERSIST_ENV} must be whole seconds from 0 to 86400, not {text[:40]!r}"
        )
    return int(text)


def transport_kind() -> TransportKind:
    """`transport: openssh`: everything over the `ssh` command with the options the
    inventory gives Ansible, the master kept between commands (PERSIST_ENV)."""
    from lotdeploy.model import Node, Site
    from lotdeploy.transport import TransportKind
    from lotdeploy.transport.base import TransportFactory
    from lotdeploy.transport.sshopts import ssh_options

    def factory(site: Site, accept_new_host_keys: bool) -> TransportFactory:
        persist = persist_seconds()

        def make(node: Node) -> Transport:
            return OpenSshTransport(
                node.name,
                ssh_options(site, node),
                accept_new_host_keys=accept_new_host_keys,
                persist=persist,
            )

        return make

    return TransportKind("openssh", factory)

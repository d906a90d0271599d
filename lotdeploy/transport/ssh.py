"""The SSH transport: one fabric `Connection` per node, strict host key checking always.

fabric (like paramiko's SSHClient) accepts unknown host keys by default; here every
connection, the jump host's included, loads exactly one known_hosts file and refuses a key
that is missing (unless `accept_new_host_keys`, OpenSSH's accept-new) or different (always).
The precedence of settings is decided here, not inside fabric: the spec's values, then the
ssh config for the host (~/.ssh/config and /etc/ssh/ssh_config, or one explicit file), then
the built-in defaults. Every wait is bounded; every failure is a `TransportError` whose text
names the node, the host and the cause in words, with anything from the node scrubbed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote, RemoteShell
from invoke.exceptions import CommandTimedOut, ThreadException
from paramiko.ssh_exception import NoValidConnectionsError

from lotdeploy.fsutil import UnreadableFile, read_prefix
from lotdeploy.model import Node, Site, SshTarget
from lotdeploy.secret import scrub
from lotdeploy.transport import TransportKind
from lotdeploy.transport.base import (
    COMMAND_TIMEOUT,
    MAX_OUTPUT_BYTES,
    HostKeyError,
    RunResult,
    Transport,
    TransportError,
    TransportFactory,
    command_label,
    output_overflow,
)
from lotdeploy.transport.sshopts import (
    Hop,
    SshSettingsError,
    load_ssh_config,
    local_path,
    resolve,
)

# paramiko logs handshake failures and lost sockets at ERROR, with tracebacks; through the
# CLI's stderr handler (or Python's last resort) they would reach the user beside the one
# line that says the same. Every such failure reaches the user as a TransportError.
_PARAMIKO_LOG = logging.getLogger("paramiko")
_PARAMIKO_LOG.addHandler(logging.NullHandler())
_PARAMIKO_LOG.propagate = False

#: Bound of one SFTP request (a dead link otherwise blocks a read for ever).
SFTP_TIMEOUT = COMMAND_TIMEOUT
#: Bound of joining a forward's threads on close.
FORWARD_JOIN = 2.0
_KNOWN_HOSTS_LOCK = threading.Lock()


class _UnknownHostKey(paramiko.SSHException):
    """RejectPolicy's refusal, marked so it is told apart from other SSH errors."""

    def __init__(self, name: str, key: paramiko.PKey) -> None:
        super().__init__(f"{name} not in known_hosts")
        self.name = name
        self.key = key


class _KnownHostsWriteError(paramiko.SSHException):
    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class StrictHostKeyPolicy(paramiko.RejectPolicy):
    """Refuse an unknown host key; with `accept_new`, append it to known_hosts instead.

    A key that differs from the known one never reaches this policy: paramiko raises
    BadHostKeyException for it, whatever the policy.
    """

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if not self.accept_new:
            raise _UnknownHostKey(hostname, key)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            with _KNOWN_HOSTS_LOCK:
                fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a") as fh:
                    if fh.tell() > 0 and not _ends_with_newline(self.known_hosts):
                        line = "\n" + line
                    fh.write(line)
        except OSError as exc:
            raise _KnownHostsWriteError(
                f"cannot add the host key of {hostname} to {self.known_hosts}: "
                f"{exc.strerror or exc}"
            ) from None
        client.get_host_keys().add(hostname, key.get_name(), key)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _tail(text: str, lines: int = 3, chars: int = 400) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    tail = " | ".join(kept)
    return scrub(tail[-chars:]) if tail else ""


def _os_cause(exc: BaseException) -> str:
    """An OS-level error in words ("Connection refused", "No route to host")."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.strerror:
            return exc.strerror
        if exc.errno is not None:
            return os.strerror(exc.errno)
    return scrub(str(exc)) or type(exc).__name__


class SshTransport(Transport):
    """One node over SSH (fabric): one connection, opened once, reused by every step."""

    def __init__(
        self,
        node: str,
        target: SshTarget,
        *,
        accept_new_host_keys: bool = False,
        connect_timeout: float = 10.0,
        ssh_config: Path | None = None,
        base_dir: Path | None = None,
    ) -> None:
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.node = node
        self.target = target
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = float(connect_timeout)
        self.ssh_config_path = ssh_config
        self.base_dir = base_dir
        self._lock = threading.RLock()
        self._conn: Connection | None = None
        self._gateway: Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._forwards: set[_Forward] = set()
        self.hop: Hop | None = None
        self.jump_hop: Hop | None = None
        self.known_hosts: Path | None = None

    @classmethod
    def for_node(
        cls,
        node: Node,
        *,
        accept_new_host_keys: bool = False,
        connect_timeout: float = 10.0,
        ssh_config: Path | None = None,
        base_dir: Path | None = None,
    ) -> SshTransport:
        """The transport of a resolved node; relative key/known_hosts paths start at
        `base_dir` (the site's `base_dir`, the site file's directory), else the cwd."""
        return cls(
            node.name,
            node.ssh,
            accept_new_host_keys=accept_new_host_keys,
            connect_timeout=connect_timeout,
            ssh_config=ssh_config,
            base_dir=base_dir,
        )

    # -- connecting -------------------------------------------------------------------------

    def _fail(self, cause: str) -> TransportError:
        """Every message passes through scrub: commands and node output included."""
        return TransportError(self.node, scrub(cause))

    def _local(self, path: Path | str) -> Path:
        return local_path(path, self.base_dir)

    def _resolve(self) -> tuple[Hop, Hop | None, str | None, Path]:
        """Decide host, port, user, jump and known_hosts (sshopts.resolve: spec > ssh config
        > defaults, the same for every transport)."""
        try:
            found = resolve(self.target, load_ssh_config(self.ssh_config_path), self.base_dir)
        except SshSettingsError as exc:
            raise self._fail(exc.cause) from None
        return found.hop, found.jump, found.proxy_command, found.known_hosts

    def _auth_kwargs(self, hop: Hop) -> dict[str, Any]:
        """The spec's key alone (no agent, no default keys), else ssh config keys + agent."""
        kwargs: dict[str, Any] = {
            "timeout": self.connect_timeout,
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
            "channel_timeout": self.connect_timeout,
        }
        if self.target.key is not None:
            path = self._local(self.target.key)
            try:  # a regular file (fsutil's rule: a FIFO named as the key never hangs)
                read_prefix(path, 0)
            except UnreadableFile as exc:
                raise self._fail(f"{path}: {exc.about('the key')}") from None
            try:
                kwargs["pkey"] = paramiko.PKey.from_path(str(path))
            except (paramiko.PasswordRequiredException, TypeError) as exc:
                if isinstance(exc, TypeError) and "password" not in str(exc).lower():
                    raise self._fail(f"the key {path} is not a usable private key") from None
                raise self._fail(
                    f"the key {path} is encrypted: key passphrases are not supported (use an "
                    "unencrypted key file readable only by you, or an ssh-agent and no `key`)"
                ) from None
            except OSError as exc:
                raise self._fail(f"cannot read the key {path}: {_os_cause(exc)}") from None
            except (paramiko.SSHException, ValueError) as exc:
                raise self._fail(f"the key {path} is not a usable private key ({exc})") from None
            kwargs.update(look_for_keys=False, allow_agent=False)
        else:
            if hop.key_files:
                kwargs["key_filename"] = list(hop.key_files)
            kwargs.update(look_for_keys=True, allow_agent=True)
        return kwargs

    def _connection(
        self,
        hop: Hop,
        gateway: Connection | str | None,
        policy: StrictHostKeyPolicy,
        known_hosts: Path,
    ) -> Connection:
        # An empty SSHConfig and lazy: precedence is decided in _resolve, not again by fabric
        # (whose ProxyJump gateways would accept any host key), and no ~/.fabric.yaml applies.
        config = Config(
            ssh_config=paramiko.SSHConfig(),
            lazy=True,
            overrides={"runners": {"remote": _BoundedRemote, "remote_shell": RemoteShell}},
        )
        conn = Connection(
            hop.host,
            user=hop.user,
            port=hop.port,
            config=config,
            gateway=gateway if gateway is not None else False,
            connect_kwargs=self._auth_kwargs(hop),
            forward_agent=False,
        )
        conn.connect_timeout = None  # fabric int()s it; the float bound is in connect_kwargs
        if known_hosts.is_file():
            try:
                conn.client.load_host_keys(str(known_hosts))
            except (OSError, UnicodeDecodeError) as exc:
                cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise self._fail(f"cannot read known_hosts {known_hosts}: {cause}") from None
        conn.client.set_missing_host_key_policy(policy)
        return conn

    def connect(self) -> None:
        """Open the connection (and the jump host's first); idempotent; bounded in time."""
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return
            self._close_quietly()
            hop, jump_hop, proxy_command, known_hosts = self._resolve()
            self.hop, self.jump_hop, self.known_hosts = hop, jump_hop, known_hosts
            policy = StrictHostKeyPolicy(known_hosts, self.accept_new_host_keys)
            gateway: Connection | str | None = proxy_command
            if jump_hop is not None:
                self._gateway = self._connection(jump_hop, None, policy, known_hosts)
                self._open(self._gateway, jump_hop, known_hosts, jump=None)
                gateway = self._gateway
            self._conn = self._connection(hop, gateway, policy, known_hosts)
            self._open(self._conn, hop, known_hosts, jump=jump_hop)
            transport = self._conn.client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)

    def _open(self, conn: Connection, hop: Hop, known_hosts: Path, jump: Hop | None) -> None:
        """conn.open(), every failure turned into a TransportError naming host and cause."""
        is_jump = conn is self._gateway
        what = f"jump host {hop.label}" if is_jump else hop.label
        via = f" via jump host {jump.label}" if jump is not None else ""
        prefix = f"jump host {hop.label}: " if is_jump else ""
        try:
            if conn.gateway is None or conn.gateway is False:
                # our own socket, so TCP_NODELAY holds from the first byte: without it every
                # small packet behind an unacknowledged one waits a round trip (Nagle)
                conn.connect_kwargs["sock"] = _tcp(hop.host, hop.port, self.connect_timeout)
            conn.open()
            return
        except _UnknownHostKey as exc:
            error: TransportError = HostKeyError(
                self.node,
                f"{prefix}host key for {exc.name} is not in known_hosts {known_hosts}"
                + ("" if known_hosts.exists() else " (the file does not exist)")
                + f"; add it, or run with --accept-new-host-keys (the server offered "
                f"{exc.key.get_name()} {exc.key.fingerprint})",
            )
        except paramiko.BadHostKeyException as exc:
            error = HostKeyError(
                self.node,
                f"{prefix}host key for {hop.known_hosts_name} does not match known_hosts "
                f"{known_hosts}: refusing to connect (the server offered {exc.key.get_name()} "
                f"{exc.key.fingerprint}, known_hosts has {exc.expected_key.get_name()} "
                f"{exc.expected_key.fingerprint})",
            )
        except _KnownHostsWriteError as exc:
            error = self._fail(exc.cause)
        except paramiko.PasswordRequiredException:
            error = self._fail(
                f"cannot log in to {what} as {hop.user}: a key is encrypted and key "
                "passphrases are not supported"
            )
        except paramiko.AuthenticationException as exc:
            key = f" with key {self._local(self.target.key)}" if self.target.key else ""
            error = self._fail(
                f"authentication to {what}{via} as {hop.user}{key} failed ({scrub(str(exc))})"
            )
        except NoValidConnectionsError as exc:
            causes = sorted({_os_cause(e) for e in exc.errors.values()})
            error = self._fail(f"cannot connect to {what}{via}: {', '.join(causes)}")
        except paramiko.ChannelException as exc:
            error = self._fail(
                f"jump host {jump.label if jump else '?'} cannot reach {hop.label}: "
                f"{scrub(exc.text or str(exc))}"
            )
        except TimeoutError:
            error = self._fail(
                f"cannot connect to {what}{via}: timed out after {self.connect_timeout:g} s"
            )
        except EOFError:
            error = self._fail(f"{what}{via} closed the connection during the SSH handshake")
        except paramiko.SSHException as exc:
            text = scrub(str(exc))
            if "banner" in text.lower():
                text = f"no SSH server answered within {self.connect_timeout:g} s ({text})"
            error = self._fail(f"cannot connect to {what}{via}: {text}")
        except OSError as exc:
            error = self._fail(f"cannot connect to {what}{via}: {_os_cause(exc)}")
        except Exception as exc:  # never a traceback for something the network did
            error = self._fail(
                f"cannot connect to {what}{via}: {type(exc).__name__}: {scrub(str(exc))}"
            )
        self._close_quietly()
        raise error

    def _require(self) -> Connection:
        """The open connection (connecting on first use); a lost one is an error, not a
        silent reconnect (a command must not run twice)."""
        if self._conn is None:
            self.connect()
        conn = self._conn
        assert conn is not None
        if not conn.is_connected:
            raise self._fail(f"the connection to {self._label()} was lost")
        return conn

    def _label(self) -> str:
        return self.hop.label if self.hop else f"{self.target.host}:{self.target.port}"

    # -- commands ---------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        input: bytes | None = None,
    ) -> RunResult:
        """Run `command` (bounded by `timeout`), output hidden; stdin empty, or `input`."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        conn = self._require()
        label = command_label(command)
        if input is not None:
            return self._checked(self._exec_with_input(conn, command, input, timeout), check)
        started = time.monotonic()
        try:
            result = conn.run(
                command, hide=True, warn=True, timeout=timeout, in_stream=False, pty=False
            )
        except CommandTimedOut:
            raise self._fail(f"`{label}` did not finish within {timeout:g} s") from None
        except (paramiko.SSHException, OSError, EOFError, ThreadException) as exc:
            raise self._fail(
                f"`{label}` failed: the connection to {self._label()} broke ({_os_cause(exc)})"
            ) from None
        if getattr(result, "output_overflow", False):
            raise self._fail(output_overflow(command))
        if result.exited == -1 and time.monotonic() - started >= timeout:
            # invoke's timer closed the channel but was still running its callback when the
            # command ended, so it reported no timeout: the clock says what happened
            raise self._fail(f"`{label}` did not finish within {timeout:g} s")
        if result.exited == -1 and not conn.is_connected:
            raise self._fail(f"`{label}`: the connection to {self._label()} was lost")
        run = RunResult(
            command=command,
            exit_status=int(result.exited),
            stdout=scrub(result.stdout),
            stderr=scrub(result.stderr),
        )
        return self._checked(run, check)

    def _checked(self, run: RunResult, check: bool) -> RunResult:
        if check and not run.ok:
            tail = _tail(run.stderr) or "no output on stderr"
            label = command_label(run.command)
            raise self._fail(f"`{label}` exited with status {run.exit_status}: {tail}")
        return run

    def _exec_with_input(
        self, conn: Connection, command: str, data: bytes, timeout: float
    ) -> RunResult:
        """One exec channel that gets `data` on its stdin (then EOF): what fabric's runner
        cannot do for bytes. Output bounded (MAX_OUTPUT_BYTES a stream), time bounded."""
        label = command_label(command)
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._fail(f"`{label}`: the connection to {self._label()} was lost")
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
            try:
                channel.settimeout(max(deadline - time.monotonic(), 0.1))
                channel.exec_command(command)
                channel.sendall(data)
                channel.shutdown_write()
                while True:
                    if channel.recv_ready():
                        out += channel.recv(65536)
                    elif channel.recv_stderr_ready():
                        err += channel.recv_stderr(65536)
                    elif channel.exit_status_ready():
                        break
                    else:
                        select.select([channel], [], [], 0.05)
                    if len(out) > MAX_OUTPUT_BYTES or len(err) > MAX_OUTPUT_BYTES:
                        raise self._fail(output_overflow(command))
                    if time.monotonic() > deadline:
                        raise self._fail(f"`{label}` did not finish within {timeout:g} s")
                while channel.recv_ready():  # what came with the exit status
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                status = channel.recv_exit_status()
            finally:
                channel.close()
        except TransportError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._fail(
                f"`{label}` failed: the connection to {self._label()} broke ({_os_cause(exc)})"
            ) from None
        return RunResult(
            command=command,
            exit_status=status,
            stdout=scrub(out.decode(errors="replace")),
            stderr=scrub(err.decode(errors="replace")),
        )

    # -- files ------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        conn = self._require()
        if self._sftp is None:
            try:
                self._sftp = conn.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self._fail(f"cannot open SFTP on {self._label()}: {_os_cause(exc)}") from None
            self._sftp.get_channel().settimeout(SFTP_TIMEOUT)
        return self._sftp

    def put(self, data: bytes, path: str, mode: int) -> None:
        """Write atomically: a temporary file beside `path`, then renamed over `path`. The
        temporary is *created* owner-only and exclusively (`_create_private`: never a
        moment readable by others, never through a file or link planted at its name), and
        gets `mode` before any byte is written. The owner of a file replaced is kept where
        the login may set it (root)."""
        sftp = self._sftp_client()
        target = PurePosixPath(path)
        tmp = str(target.with_name(f".{target.name}.lotdeploy-{secrets.token_hex(4)}.tmp"))
        created = False
        try:
            with _create_private(sftp, tmp) as fh:
                created = True
                fh.chmod(mode)
                fh.set_pipelined(True)  # fast over latency, but write errors go unseen:
                fh.write(data)
            written = sftp.stat(tmp).st_size  # so confirm, as putfo(confirm=True) does
            if written != len(data):
                raise OSError(f"wrote {written} of {len(data)} bytes")
            with contextlib.suppress(OSError):
                old = sftp.stat(path)
                if old.st_uid is not None and old.st_gid is not None:
                    with contextlib.suppress(OSError):
                        sftp.chown(tmp, old.st_uid, old.st_gid)
            sftp.posix_rename(tmp, path)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if created:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    sftp.remove(tmp)
            raise self._fail(
                f"cannot write {path}: {self._file_cause(exc, path, len(data))}"
            ) from None

    def _file_cause(self, exc: BaseException, path: str, size: int) -> str:
        """The cause in words. OpenSSH's SFTP server reports ENOSPC, EROFS, EISDIR... all as
        "Failure"; then a bounded probe on the node asks the OS for its words."""
        if isinstance(exc, TimeoutError):
            return f"no answer within {SFTP_TIMEOUT:g} s"
        if isinstance(exc, EOFError | paramiko.SSHException):
            return f"the connection to {self._label()} broke ({scrub(str(exc)) or 'EOF'})"
        if isinstance(exc, OSError) and exc.errno is not None:
            return os.strerror(exc.errno)
        if self._conn is None or not self._conn.is_connected:
            return f"the connection to {self._label()} was lost"
        return self._probe_write(path, size) or f"the SFTP server reported {scrub(str(exc))!r}"

    def _probe_write(self, path: str, size: int) -> str | None:
        target = PurePosixPath(path)
        probe = str(target.with_name(f".{target.name}.lotdeploy-probe-{secrets.token_hex(4)}"))
        script = (
            'if [ -d "$2" ]; then echo "x: Is a directory" >&2; exit 1; fi; '
            'head -c "$3" /dev/zero > "$1"; s=$?; rm -f "$1"; exit $s'
        )
        args = " ".join(shlex.quote(a) for a in ("probe", probe, path, str(max(size, 1))))
        command = f"sh -c {shlex.quote(script)} {args}"
        try:
            result = self.run(command, timeout=min(COMMAND_TIMEOUT, 30.0), check=False)
        except TransportError:
            return None
        if result.ok:
            return None
        last = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return last[-1].rsplit(": ", 1)[-1].strip() if last else None

    def get(self, path: str, max_bytes: int = 16 * 1024 * 1024) -> bytes | None:
        """The file's bytes; None when it does not exist; an error beyond `max_bytes`."""
        sftp = self._sftp_client()
        try:
            attrs = sftp.stat(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise self._fail(f"cannot read {path}: {self._read_cause(exc)}") from None
        except (EOFError, paramiko.SSHException) as exc:
            raise self._fail(f"cannot read {path}: {self._read_cause(exc)}") from None
        if attrs.st_mode is not None and not stat.S_ISREG(attrs.st_mode):
            kind = "a directory" if stat.S_ISDIR(attrs.st_mode) else "not a regular file"
            raise self._fail(f"cannot read {path}: it is {kind}")
        if attrs.st_size is not None and attrs.st_size > max_bytes:
            raise self._fail(f"{path} is {attrs.st_size} bytes, more than the {max_bytes} allowed")
        try:
            with sftp.open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise self._fail(f"cannot read {path}: {self._read_cause(exc)}") from None
        except (EOFError, paramiko.SSHException) as exc:
            raise self._fail(f"cannot read {path}: {self._read_cause(exc)}") from None
        if len(data) > max_bytes:
            raise self._fail(f"{path} is more than the {max_bytes} bytes allowed")
        return bytes(data)

    def _read_cause(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {SFTP_TIMEOUT:g} s"
        if isinstance(exc, OSError) and exc.errno is not None:
            return os.strerror(exc.errno)
        if isinstance(exc, EOFError | paramiko.SSHException):
            return f"the connection to {self._label()} broke ({scrub(str(exc)) or 'EOF'})"
        return f"the SFTP server reported {scrub(str(exc))!r}"

    # -- forwards ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _forward(self, remote_host: str, remote_port: int) -> Iterator[int]:
        conn = self._require()
        transport = conn.client.get_transport()
        assert transport is not None
        dest = f"{remote_host}:{remote_port}"
        # One channel first: "nothing listens there" is a clear error here, not an EOF the
        # caller's client would have to explain; the first connection then takes that
        # channel instead of opening another (one round trip, not two).
        try:
            first = transport.open_channel(
                "direct-tcpip",
                (remote_host, remote_port),
                ("127.0.0.1", 0),
                timeout=self.connect_timeout,
            )
        except paramiko.ChannelException as exc:
            raise self._fail(
                f"cannot forward to {dest} (as seen from the node): {scrub(exc.text or str(exc))}"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._fail(f"cannot forward to {dest}: {_os_cause(exc)}") from None
        forward = _Forward(transport, remote_host, remote_port, self.connect_timeout, first)
        with self._lock:
            self._forwards.add(forward)
        try:
            yield forward.port
        finally:
            forward.stop()
            with self._lock:
                self._forwards.discard(forward)

    def forward(self, remote_host: str, remote_port: int) -> contextlib.AbstractContextManager[int]:
        """A port on 127.0.0.1 reaching `remote_host:remote_port` from the node's side. The
        listener is bound (port 0, so no race for a number) before the context is entered."""
        return self._forward(remote_host, remote_port)

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close every forward, SFTP, the connection and the jump host's; idempotent."""
        with self._lock:
            self._close_quietly()

    def _close_quietly(self) -> None:
        for forward in list(self._forwards):
            forward.stop()
        self._forwards.clear()
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        for conn in (self._conn, self._gateway):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.client.close()
                with contextlib.suppress(Exception):
                    conn.close()
        self._conn = None
        self._gateway = None


def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to host:port (every address tried, bounded), with TCP_NODELAY: an
    SSH session is a conversation of small packets, each of which Nagle's algorithm would
    hold for the acknowledgement of the one before (a round trip each)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _BoundedRemote(Remote):
    """fabric's remote runner, keeping at most MAX_OUTPUT_BYTES of each output stream.

    invoke keeps all of a command's output in memory (and joins it all again for every
    chunk, for its watchers). Past the bound this runner stops reading and closes the
    channel, which ends the command; the result says so (`output_overflow`)."""

    overflow = False

    def _handle_output(self, buffer_: list[str], hide: bool, output: Any, reader: Any) -> None:
        kept = 0
        for data in self.read_proc_output(reader):
            kept += len(data)
            if kept > MAX_OUTPUT_BYTES:
                self.overflow = True
                with contextlib.suppress(Exception):
                    self.channel.close()
                return
            buffer_.append(data)  # no watchers, so nothing to respond to

    def generate_result(self, **kwargs: Any) -> Any:
        result = super().generate_result(**kwargs)
        result.output_overflow = self.overflow
        return result


def _create_private(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPFile:
    """Open a new file for writing whose permissions are owner-only from its creation.

    paramiko's `SFTPClient.open` sends no permissions, so the server creates the file with
    its default (0666 less its umask: 0644, readable by every user of the node) until a
    chmod follows. SFTP's OPEN carries the permissions to create with (OpenSSH's
    sftp-server passes them to open(2)), and EXCL refuses a name that is already there.
    This is `open(path, "xb")` with those attributes (paramiko's own request, one round
    trip, like `open`).
    """
    from paramiko.sftp import (
        CMD_HANDLE,
        CMD_OPEN,
        SFTP_FLAG_CREATE,
        SFTP_FLAG_EXCL,
        SFTP_FLAG_WRITE,
        SFTPError,
    )

    attributes = paramiko.SFTPAttributes()
    attributes.st_mode = 0o600
    flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
    kind, message = sftp._request(CMD_OPEN, path, flags, attributes)
    if kind != CMD_HANDLE or message is None:
        raise SFTPError("Expected handle")
    return paramiko.SFTPFile(sftp, message.get_binary(), "wb", -1)


class _Forward:
    """A local listener on 127.0.0.1 whose connections each become a direct-tcpip channel."""

    def __init__(
        self,
        transport: paramiko.Transport,
        host: str,
        port: int,
        timeout: float,
        first: paramiko.Channel | None = None,
    ) -> None:
        self.transport = transport
        #: a channel opened already (the check that something listens): the first
        #: connection's, so it costs no round trip of its own
        self.first = first
        self.dest = (host, port)
        self.timeout = timeout
        self.stopping = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        acceptor = threading.Thread(target=self._accept, name=f"forward-{self.port}", daemon=True)
        self.threads.append(acceptor)
        acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            first, self.first = self.first, None
            try:
                if first is not None and not first.closed:
                    channel = first
                else:
                    channel = self.transport.open_channel(
                        "direct-tcpip", self.dest, peer, timeout=self.timeout
                    )
            except (paramiko.SSHException, OSError, EOFError):
                client.close()
                continue
            with self._lock:
                if self.stopping.is_set():
                    client.close()
                    channel.close()
                    return
                self.sockets.append(client)
                pump = threading.Thread(
                    target=self._pump,
                    args=(client, channel),
                    name=f"forward-{self.port}-pump",
                    daemon=True,
                )
                self.threads.append(pump)
                pump.start()  # inside the lock: `stop` never joins a thread not started

    def _pump(self, client: socket.socket, channel: paramiko.Channel) -> None:
        """Copy bytes both ways until either side closes or the forward stops."""
        try:
            while not self.stopping.is_set():
                ready, _, _ = select.select([client, channel], [], [], 0.2)
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
        except (OSError, ValueError, EOFError, paramiko.SSHException):
            pass  # ValueError: `stop` closed the socket of a pump that did not end in time
        finally:
            with contextlib.suppress(Exception):
                channel.close()
            with contextlib.suppress(OSError):
                client.close()

    def stop(self) -> None:
        """Close the listener and end every tunnel; join the threads (bounded).

        Each tunnel's pump closes its own channel and socket; this only wakes it (a socket
        shut down reads as closed). paramiko's `Channel.close()` closes the pipe that a
        reader of the channel waits on, and that reader's next `recv()` then reads one byte
        from the closed descriptor, which another thread may have reused by then for
        another connection: that connection loses a byte of its stream (seen as admin
        sessions "closed by peer" mid-command). So a channel is only ever closed by the
        thread that reads it. A pump that does not end in time has its socket closed here,
        as before (its channel ends with the connection)."""
        self.stopping.set()
        if self.first is not None:  # never used: no reader
            with contextlib.suppress(Exception):
                self.first.close()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self.threads)
        deadline = time.monotonic() + FORWARD_JOIN
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if any(t.is_alive() for t in threads if t is not threading.current_thread()):
                for sock in self.sockets:
                    with contextlib.suppress(OSError):
                        sock.close()


def transport_kind() -> TransportKind:
    """`transport: ssh`: fabric/paramiko, strict host keys, one connection per node and
    command; files go over each node's own connection."""

    def factory(site: Site, accept_new_host_keys: bool) -> TransportFactory:
        def make(node: Node) -> Transport:
            return SshTransport.for_node(
                node, accept_new_host_keys=accept_new_host_keys, base_dir=site.base_dir
            )

        return make

    return TransportKind("ssh", factory)

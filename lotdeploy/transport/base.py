"""The transport interface: everything apply, verify, drift and doctor do on a node.

Kept small on purpose (as pyinfra keeps its connectors): connect, run a command, put and
get a file, forward a local port to a port on the node, close. Every call is bounded in
time, every failure is a `TransportError` naming the node and the cause, and nothing here
ever prints or logs a secret (file contents are bytes the caller owns; commands carry no
secret: secrets travel as file contents or over the broker's command channel).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lotdeploy.errors import NodeError

if TYPE_CHECKING:
    from lotdeploy.model import Node

#: Default bound of one remote command, in seconds.
COMMAND_TIMEOUT = 60.0
#: What a remote command may write, per stream (stdout, stderr): every command lotdeploy
#: runs prints a few lines. Beyond this the command is stopped and its step fails: a node
#: (or a reload command) that floods its output must not cost the controller memory.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024


def output_overflow(command: str) -> str:
    """The one wording of that failure."""
    return (
        f"`{command_label(command)}` wrote more than {MAX_OUTPUT_BYTES // (1 << 20)} MiB of "
        "output; it was stopped"
    )


def command_label(command: str) -> str:
    """The first word(s) of a command, for messages: never the whole (long) command."""
    words = command.split()
    if not words:
        return "(empty command)"
    label = words[0][:40]
    if len(words) > 1 and len(words[1]) <= 24 and words[1][:1] not in "'\"":
        label += " " + words[1]
        words = words[1:]
    return label + (" …" if len(words) > 1 else "")


class TransportError(NodeError):
    """A node could not be reached, or a step on it failed (names the node and the cause)."""


class HostKeyError(TransportError):
    """The node's host key is unknown or does not match known_hosts: never connected."""


@dataclass(frozen=True)
class RunResult:
    """What a remote command did. Output is text the node produced; it is scrubbed of known
    secrets before it is shown anywhere."""

    command: str
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Transport(abc.ABC):
    """One node, one connection, reused for every step of a run."""

    #: the node's name, for every message
    node: str

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection (strict host key checking); idempotent."""

    @abc.abstractmethod
    def run(
        self,
        command: str,
        *,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        input: bytes | None = None,
    ) -> RunResult:
        """Run a shell command on the node. With `check`, a non-zero exit raises
        TransportError naming the node, the command and the node's stderr. `input`: bytes
        the command reads on its stdin (a release streamed over the same exec: no separate
        upload, no extra round trips); without it stdin is empty."""

    @abc.abstractmethod
    def put(self, data: bytes, path: str, mode: int) -> None:
        """Write `data` to `path` on the node with `mode` (no directory is created here)."""

    @abc.abstractmethod
    def get(self, path: str, max_bytes: int = 16 * 1024 * 1024) -> bytes | None:
        """The file at `path` on the node, None when it does not exist; more than
        `max_bytes` is an error."""

    @abc.abstractmethod
    def forward(self, remote_host: str, remote_port: int) -> contextlib.AbstractContextManager[int]:
        """A local port on 127.0.0.1 that reaches `remote_host:remote_port` as seen from the
        node; listening when the context is entered (bounded wait)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection and every forward; idempotent."""

    def __enter__(self) -> Transport:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def opened(transport: Transport) -> Iterator[Transport]:
    """Connect, yield, always close."""
    try:
        transport.connect()
        yield transport
    finally:
        transport.close()


#: How a command reaches each node: node -> its Transport (lotdeploy.transport.chosen makes
#: one; a run wraps it in lotdeploy.node.session.Sessions so every phase shares it).
TransportFactory = Callable[["Node"], Transport]

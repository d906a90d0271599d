"""One error type per layer. The CLI prints any LotdeployError as a clean message, exit 1.

Anything a user can cause (bad spec, wrong passphrase, unreachable node) must raise one of
these, never let a raw exception escape: a traceback is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One located message about an input file, printed as `file:line:col: severity: msg`."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


class LotdeployError(Exception):
    """Base of every error a user can cause; its text is safe to print (no secrets)."""


class SpecError(LotdeployError):
    """The site spec is invalid; carries every diagnostic of the file, not just the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class LotSyntaxError(LotdeployError):
    """LOT text does not parse; printed as `FILE:LINE:COL: message`."""

    def __init__(self, filename: str, line: int, column: int, message: str) -> None:
        self.filename = filename
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{filename}:{line}:{column}: {message}")


class CompileError(LotdeployError):
    """The compiler produced something it refuses to ship (e.g. parse-back mismatch)."""


class SecretStoreError(LotdeployError):
    """The workspace secret store cannot be opened, decrypted or written."""


class WorkspaceError(LotdeployError):
    """The workspace directory or its state is unusable."""


class PkiError(LotdeployError):
    """Certificate authority, certificate or rotation problem."""


class NodeError(LotdeployError):
    """Something failed on a node (transport level); always names the node."""

    def __init__(self, node: str, cause: str) -> None:
        self.node = node
        self.cause = cause
        super().__init__(f"node {node}: {cause}")


class BrokerError(LotdeployError):
    """The broker's command channel failed or refused; always names the node/broker.

    `lost`: the session had connected and its connection then ended (closed by the broker
    or on the way), as opposed to a refusal or a timeout on a live connection: a reader may
    try once more on a new session."""

    def __init__(self, node: str, cause: str, *, lost: bool = False) -> None:
        self.node = node
        self.cause = cause
        self.lost = lost
        super().__init__(f"broker {node}: {cause}")


class LabError(LotdeployError):
    """The lab cannot be brought up, changed or torn down."""

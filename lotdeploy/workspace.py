"""The site's workspace (`.lotdeploy/` beside the site file): secret store, PKI, state.

The secret store is one file, `secrets.enc`, encrypted at rest with AES-256-GCM under a key
derived by scrypt from the operator's passphrase. The header (format, KDF parameters, salt)
is authenticated as associated data, so tampering with any byte is detected. The file is
written atomically with mode 0600; a wrong passphrase or a damaged file is an error that
says what to do, and nothing is ever overwritten after a failed open.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import stat
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lotdeploy.errors import SecretStoreError, WorkspaceError
from lotdeploy.fsutil import (
    LockBusy,
    LockHeld,
    UnreadableFile,
    atomic_write,
    break_lock,
    exclusive_lock,
    make_dirs,
    parse_json,
    read_json,
    read_regular_file,
)
from lotdeploy.secret import MIN_SCRUB_LENGTH, Secret

PASSPHRASE_ENV = "LOTDEPLOY_PASSPHRASE"
STORE_FORMAT = "lotdeploy-secret-store"
STORE_VERSION = 1
# scrypt cost: ~0.1 s on a small machine; stored in the header so it can grow later.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
#: What a store's header may ask for, checked before any work: at most 2**17 * 8 * 128 B =
#: 128 MiB and about a second. A header outside this (edited, or from a hostile backup)
#: would otherwise cost minutes and gigabytes, or crash the KDF.
SCRYPT_N_RANGE = (2**14, 2**17)
SCRYPT_R_RANGE = (1, 8)
SCRYPT_P_RANGE = (1, 4)

#: A store holds a few passwords and keys: kilobytes. Nothing bigger is read.
STORE_MAX_BYTES = 64 * 1024 * 1024

#: How long a second writing run waits for the workspace before giving up; the environment
#: variable LOCK_WAIT_ENV sets another wait (0 to 3600 s: CI that should fail at once).
LOCK_TIMEOUT = 10.0
LOCK_WAIT_ENV = "LOTDEPLOY_LOCK_WAIT"


def lock_wait() -> float:
    """The wait for a busy workspace: LOTDEPLOY_LOCK_WAIT if it is a number of seconds."""
    text = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not text:
        return LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise WorkspaceError(f"{LOCK_WAIT_ENV}={text[:20]!r}: not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise WorkspaceError(f"{LOCK_WAIT_ENV}: must be from 0 to 3600 seconds")
    return value


PassphraseProvider = Callable[[bool], Secret]
#: Asks the operator: (prompt text, ask twice to confirm) -> what was typed. The CLI has one.
PassphrasePrompt = Callable[[str, bool], str]


def passphrase_from_environment(creating: bool, prompt: PassphrasePrompt | None = None) -> Secret:
    """LOTDEPLOY_PASSPHRASE, else `prompt` on a terminal, else a clear error."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return Secret(value)
    if prompt is not None and sys.stdin.isatty():
        text = "New workspace passphrase" if creating else "Workspace passphrase"
        entered = prompt(text, creating)
        if entered:
            return Secret(entered)
    raise SecretStoreError(
        f"the workspace secret store needs a passphrase: set {PASSPHRASE_ENV} "
        "or run on a terminal to be prompted"
    )


def _derive_key(passphrase: Secret, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt  # not needed by `validate`

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.reveal().encode())


@dataclass
class SecretStore:
    """Named secrets of one site. Values are Secrets in memory; `save()` re-encrypts."""

    path: Path
    _passphrase: Secret = field(repr=False)
    #: plain values, so never shown: the store's repr lists only how many it holds
    _values: dict[str, str] = field(default_factory=dict, repr=False)
    _salt: bytes = field(default=b"", repr=False)

    def __repr__(self) -> str:
        return f"SecretStore({str(self.path)!r}, {len(self._values)} secrets (sensitive))"

    @classmethod
    def open(
        cls,
        path: Path,
        passphrase: Secret,
        create: bool = True,
        hint: str = f"check {PASSPHRASE_ENV}",
    ) -> SecretStore:
        """Open the store at `path`; `hint` says where a wrong passphrase came from."""
        if not path.exists():
            if not create:
                raise SecretStoreError(
                    f"{path}: no secret store yet (run `lotdeploy render` first)"
                )
            if len(passphrase.reveal()) < MIN_SCRUB_LENGTH:
                raise SecretStoreError(
                    f"a new workspace passphrase needs at least {MIN_SCRUB_LENGTH} characters"
                )
            return cls(path, passphrase, {}, os.urandom(16))
        try:
            doc = read_json(path, STORE_MAX_BYTES)
        except UnreadableFile as exc:
            if exc.reason.startswith("cannot read"):
                raise SecretStoreError(f"{path}: {exc.about('the secret store')}") from None
            raise SecretStoreError(
                f"{path}: the secret store is damaged or truncated ({exc.reason}); restore it "
                "from a backup (nothing was changed)"
            ) from None
        try:
            header = doc["header"]
            if header.get("format") != STORE_FORMAT or header.get("version") != STORE_VERSION:
                raise ValueError("unknown format")
            kdf = header["kdf"]
            salt = base64.b64decode(kdf["salt"], validate=True)
            nonce = base64.b64decode(doc["nonce"], validate=True)
            ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
            n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
            if not _kdf_parameters_safe(kdf, n, r, p):
                raise ValueError("KDF parameters out of range")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SecretStoreError(
                f"{path}: the secret store is damaged or truncated; restore it from a backup "
                "(nothing was changed)"
            ) from None
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aad = _canonical(header)
        key = _derive_key(passphrase, salt, n, r, p)
        try:
            plaintext = AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise SecretStoreError(
                f"{path}: wrong passphrase, or the secret store was tampered with "
                f"({hint}; nothing was changed)"
            ) from None
        try:
            values = parse_json(plaintext)
            if not isinstance(values, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in values.items()
            ):
                raise ValueError
        except (ValueError, UnreadableFile):
            raise SecretStoreError(f"{path}: the secret store content is malformed") from None
        return cls(path, passphrase, values, salt)

    def get(self, name: str) -> Secret | None:
        value = self._values.get(name)
        return None if value is None else Secret(value)

    def set(self, name: str, value: Secret) -> None:
        self._values[name] = value.reveal()

    def delete(self, name: str) -> None:
        self._values.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._values)

    def get_or_create(self, name: str, factory: Callable[[], Secret]) -> Secret:
        """Return the stored secret, generating, storing and saving it on first use."""
        existing = self.get(name)
        if existing is not None:
            return existing
        value = factory()
        self.set(name, value)
        self.save()
        return value

    def save(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        header = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "kdf": {
                "name": "scrypt",
                "n": SCRYPT_N,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
                "salt": base64.b64encode(self._salt).decode(),
            },
            "cipher": "AES-256-GCM",
        }
        key = _derive_key(self._passphrase, self._salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        nonce = os.urandom(12)
        plaintext = json.dumps(self._values, sort_keys=True).encode()
        ciphertext = AESGCM(key).encrypt(nonce, plaintext, _canonical(header))
        doc = {
            "header": header,
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode(),
        }
        try:
            atomic_write(self.path, json.dumps(doc, indent=1) + "\n", mode=0o600)
        except OSError as exc:
            raise SecretStoreError(
                f"{self.path}: cannot write the secret store: {exc.strerror}"
            ) from None


def _kdf_parameters_safe(kdf: dict[str, Any], n: int, r: int, p: int) -> bool:
    if kdf.get("name") != "scrypt" or any(type(kdf.get(k)) is not int for k in "nrp"):
        return False
    low, high = SCRYPT_N_RANGE
    return (
        low <= n <= high
        and n & (n - 1) == 0
        and SCRYPT_R_RANGE[0] <= r <= SCRYPT_R_RANGE[1]
        and SCRYPT_P_RANGE[0] <= p <= SCRYPT_P_RANGE[1]
    )


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Workspace:
    """Where lotdeploy keeps what it knows about one site between runs."""

    root: Path
    passphrase_provider: PassphraseProvider = passphrase_from_environment
    _store: SecretStore | None = None
    _lock_depth: int = 0
    #: The state document of the transaction this run has open (lotdeploy.state), if any;
    #: set and read only while holding `state_lock`.
    open_state: Any = None
    #: Serialises state transactions between threads of one run (apply's node workers).
    state_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def for_site(
        cls,
        site_file: Path,
        override: Path | None = None,
        passphrase_provider: PassphraseProvider = passphrase_from_environment,
    ) -> Workspace:
        root = override if override is not None else Path(site_file).resolve().parent / ".lotdeploy"
        return cls(Path(root), passphrase_provider)

    @property
    def secrets_path(self) -> Path:
        return self.root / "secrets.enc"

    @property
    def id_path(self) -> Path:
        return self.root / "workspace-id"

    def identity(self, create: bool = False) -> str:
        """The workspace's own random id, given once (with `create`; "" if it has none yet):
        a saved plan carries it and applies only in the workspace it was made in."""
        path = self.id_path
        if not path.exists() and not path.is_symlink():
            if not create:
                return ""
            self.ensure()
            # written whole beside it, then linked into place (create-if-absent, atomic): a
            # crash or a full disk never leaves an empty id, and of two runs one id wins
            fd, tmp = tempfile.mkstemp(
                prefix=f".{path.name}.lotdeploy-", suffix=".tmp", dir=self.root
            )
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(uuid.uuid4().hex + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, path)
            except FileExistsError:
                pass  # another run gave it one at the same moment: read that
            except OSError as exc:
                raise WorkspaceError(f"{path}: cannot create: {exc.strerror}") from None
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        try:
            text = read_regular_file(path, 256).decode("ascii", "replace").strip()
        except UnreadableFile as exc:
            raise WorkspaceError(f"{path}: {exc.reason}") from None
        if not re.fullmatch(r"[0-9a-f]{32}", text):
            raise WorkspaceError(
                f"{path}: the workspace id is damaged (32 hex digits expected); remove the file "
                "to give the workspace a new one (saved plans made before then are refused)"
            )
        return text

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def ensure(self) -> None:
        """Create the workspace directory (0700), or check the one that is there.

        An existing directory is never changed: one that other users can enter, or that
        belongs to someone else, is refused (it would hold this site's secrets).
        """
        try:
            if not self.root.exists():
                make_dirs(self.root, 0o700)
            info = self.root.stat()
        except OSError as exc:
            raise WorkspaceError(f"{self.root}: cannot use the workspace: {exc.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise WorkspaceError(f"{self.root}: the workspace is not a directory")
        if info.st_uid != os.geteuid():
            raise WorkspaceError(
                f"{self.root}: the workspace belongs to another user; use your own --workspace"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise WorkspaceError(
                f"{self.root}: the workspace is open to other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o}) and would hold this site's secrets: "
                "`chmod 700` it, or choose a new directory with --workspace"
            )
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise WorkspaceError(f"{self.root}: workspace is not writable")

    @contextmanager
    def lock(self, purpose: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the workspace for one writing command (render, certs, creds, later apply).

        An advisory `flock` on `.lotdeploy/lock`: the kernel drops it when the process ends,
        so a crashed run never leaves a stale lock. A second run waits up to `timeout`
        seconds, then says who holds it. Re-entrant within one run: a command that holds
        the workspace may call code that takes it again (a state transaction).
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.ensure()
        path = self.root / "lock"
        timeout = lock_wait() if timeout is None else timeout
        with ExitStack() as held:
            try:  # only taking the lock is translated; errors of the command pass through
                held.enter_context(exclusive_lock(path, purpose, timeout))
            except LockBusy as busy:
                unlock = (
                    f"; if that run hangs: lotdeploy force-unlock {busy.lock_id} SITE"
                    if busy.lock_id
                    else ""
                )
                raise WorkspaceError(
                    f"{self.root} is in use by another lotdeploy run "
                    f"({busy.holder or 'unknown'}); try again when it has finished{unlock}"
                ) from None
            except OSError as exc:
                raise WorkspaceError(f"{path}: cannot use the lock: {exc.strerror}") from None
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def force_unlock(self, lock_id: str, force: bool = False) -> str:
        """Break the workspace lock recorded with `lock_id`; the record that was removed.
        A holder that is alive is refused unless `force` (fsutil.break_lock)."""
        path = self.root / "lock"
        try:
            return break_lock(path, lock_id, force)
        except LockHeld as held:
            raise WorkspaceError(
                f"{path}: the lock is held right now by a running process ({held.holder}): "
                "breaking it would let another run work beside that one; nothing was "
                "removed. Stop that run (or wait for it), or pass --force if it hangs"
            ) from None
        except FileNotFoundError:
            raise WorkspaceError(f"{path}: there is no lock to remove") from None
        except LockBusy:
            raise WorkspaceError(
                f"{path}: the lock file is unreadable; remove it by hand"
            ) from None
        except ValueError as exc:
            raise WorkspaceError(
                f"{path}: the lock is held as {str(exc) or 'unknown'}, not with ID {lock_id}; "
                "nothing was removed"
            ) from None
        except OSError as exc:
            raise WorkspaceError(f"{path}: cannot remove the lock: {exc.strerror}") from None

    def secrets(self) -> SecretStore:
        """Open (or create) the secret store, asking for the passphrase once per run."""
        if self._store is None:
            self.ensure()
            creating = not self.secrets_path.exists()
            passphrase = self.passphrase_provider(creating)
            hint = (
                f"check {PASSPHRASE_ENV}"
                if os.environ.get(PASSPHRASE_ENV)
                else "check the passphrase given"
            )
            self._store = SecretStore.open(self.secrets_path, passphrase, hint=hint)
        return self._store

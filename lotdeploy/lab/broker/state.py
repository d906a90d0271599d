"""What a lab broker keeps across restarts with `--state-dir`: routes, users, secrets.

One JSON file (`state.json`, mode 0600) written atomically after every change, so a crash
leaves the previous or the new state, never a torn file. User passwords are stored as salted
PBKDF2 hashes; secrets (`-setSecret`) must be usable later, so they are stored as given: the
file is readable by the broker's user only. The admin user is not stored: it always comes from
the command line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lotdeploy.fsutil import atomic_write
from lotdeploy.secret import Secret

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_VERSION = 1
PBKDF2_ITERATIONS = 20_000  # a lab: enough to not store plain text, cheap for reconnect storms


def hash_password(password: Secret, salt: bytes | None = None) -> str:
    """`pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.reveal().encode(), salt, PBKDF2_ITERATIONS)
    return f"pbkdf2-sha256${PBKDF2_ITERATIONS}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2-sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


@dataclass
class BrokerState:
    """Routes (name -> LOT text, in insertion order), users (name -> hash), secrets."""

    routes: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "routes": self.routes,
                "users": self.users,
                "secrets": {k: v.reveal() for k, v in self.secrets.items()},
            },
            indent=2,
            sort_keys=False,
        )

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        doc: Any = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError("unsupported state file version")
        routes = {str(k): str(v) for k, v in (doc.get("routes") or {}).items()}
        users = {str(k): str(v) for k, v in (doc.get("users") or {}).items()}
        secrets = {str(k): Secret(str(v)) for k, v in (doc.get("secrets") or {}).items()}
        return cls(routes, users, secrets)


class StateStore:
    """Loads and saves BrokerState in a directory; a None directory keeps state in memory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @property
    def path(self) -> Path | None:
        return self.directory / STATE_FILE if self.directory else None

    def load(self) -> BrokerState:
        path = self.path
        if path is None or not path.exists():
            return BrokerState()
        return BrokerState.from_json(path.read_text())

    def save(self, state: BrokerState) -> None:
        path = self.path
        if path is None:
            return
        atomic_write(path, state.to_json(), mode=0o600, durable=False)

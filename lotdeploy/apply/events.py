"""What an apply reports while it runs: one event per node step, with its timing.

The engine only calls a `Reporter`; the CLI decides how events look (a live table for
people, JSON lines for machines). Events carry names, steps and words, never a secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["start", "ok", "skip", "fail"]


@dataclass(frozen=True)
class Event:
    node: str
    step: str  # connect, upload, switch, tls, reload, users, routes, retire, done
    status: Status
    detail: str = ""
    seconds: float | None = None
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "event": "step",
            "node": self.node,
            "step": self.step,
            "status": self.status,
            "at": round(self.at, 3),
        }
        if self.detail:
            doc["detail"] = self.detail
        if self.seconds is not None:
            doc["seconds"] = round(self.seconds, 3)
        return doc


Reporter = Callable[[Event], None]


def silent(event: Event) -> None:
    """A reporter that drops everything (tests, library use)."""

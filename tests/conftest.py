"""Shared fixtures: site files in a temp dir, a passphrase, running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_PASSPHRASE = "correct horse battery staple for tests"


@pytest.fixture
def write_site(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "site.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LOTDEPLOY_PASSPHRASE", TEST_PASSPHRASE)
    return TEST_PASSPHRASE


def run_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `lotdeploy` in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "LOTDEPLOY_PASSPHRASE"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lotdeploy", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        input=input,
        timeout=120,
    )

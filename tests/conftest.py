"""Shared fixtures: site files in a temp dir, a passphrase, running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# -- a failed case shows what its labs' brokers and sshds said ---------------------------------

#: lines of a lab log that say why a connection ended or a node misbehaved (never a payload)
_LAB_LOG_MARKS = (
    "WARNING",
    "ERROR",
    "dropped",
    "ended",
    "take-over",
    "Unhandled",
    "fatal",
    "error:",
    "reset",
    "Broken pipe",
    "Timeout",
    "MaxStartups",
)
#: marked lines that are no news: connections that closed before a CONNECT (TLS checks, probes)
_LAB_LOG_NOISE = ("No data", "Failed to init")
_LAB_LOG_WINDOW = 180.0  # seconds before the failure
_LAB_LOG_LINES = 25  # per log file


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failed case, add the recent marked lines of every lab log under the run's temp
    directory to its report: a connection dropped on CI is then explained by the log of the
    lab that dropped it (labs and their logs are gone once the module tears them down)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        text = _recent_lab_logs(item.config)
        if text:
            title = f"lab logs (marked lines, last {_LAB_LOG_WINDOW:.0f} s)"
            report.sections.append((title, text))


def _recent_lab_logs(config: pytest.Config) -> str:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return ""
    try:
        base = factory.getbasetemp()
    except OSError:
        return ""
    since = time.time() - _LAB_LOG_WINDOW
    parts: list[str] = []
    for log in sorted([*base.glob("**/nodes/*/broker.log"), *base.glob("**/nodes/*/sshd.log")]):
        try:
            if log.stat().st_mtime < since:
                continue
            lines = log.read_text(errors="replace").splitlines()[-2000:]
        except OSError:
            continue
        marked = [
            line[:300]
            for line in lines
            if any(m in line for m in _LAB_LOG_MARKS) and not any(n in line for n in _LAB_LOG_NOISE)
        ]
        if marked:
            parts.append(f"--- {log.relative_to(base)}")
            parts += marked[-_LAB_LOG_LINES:]
    return "\n".join(parts)

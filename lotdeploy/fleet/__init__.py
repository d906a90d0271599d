"""Fleets: a directory of sites, run as one.

A fleet is a directory whose subdirectories each hold one site (`FLEET/<name>/site.yaml`;
settings several sites share live in a file each site names with `extends:`). Each site
keeps its own workspace (`.lotdeploy/` beside its site file), so sites never share a lock,
a state or a secret.

`run_fleet` runs one lotdeploy subcommand on every site, at most `parallel` at once, each as
its own process of the real CLI (`python -m lotdeploy SUBCOMMAND SITE --json ...`): the
sites are independent, a crash or a hang of one (bounded by `site_timeout`) is that site's
failure, and every subcommand works here the day it exists (plan, apply, verify, drift,
audit...) with nothing to add but, optionally, a line of summary (`SUMMARIES`). Each site's
output is kept under `FLEET/.lotdeploy-fleet/runs/<run>/`; the result is one table and one
exit status (`fleet_status`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lotdeploy.errors import LotdeployError
from lotdeploy.exitstatus import ExitStatus
from lotdeploy.secret import scrub

SITE_FILES = ("site.yaml", "site.yml")
#: Where a fleet keeps its runs' outputs (one directory per run, the last KEEP_RUNS kept).
RUNS_DIR = ".lotdeploy-fleet/runs"
KEEP_RUNS = 20
#: Default bound of one site's run, in seconds.
SITE_TIMEOUT = 3600.0


@dataclass(frozen=True)
class FleetSite:
    name: str  # the directory's name
    site_file: Path


def is_fleet(path: Path) -> bool:
    """A directory (not a site file): what the CLI runs as a fleet."""
    return path.is_dir()


def discover(fleet_dir: Path, only: Iterable[str] = ()) -> list[FleetSite]:
    """The fleet's sites, by directory name; LotdeployError when there is none, or when
    `only` names one that is not there."""
    if not fleet_dir.is_dir():
        raise LotdeployError(f"{fleet_dir}: not a directory of sites")
    found = []
    for child in sorted(fleet_dir.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        for name in SITE_FILES:
            if (child / name).is_file():
                found.append(FleetSite(child.name, (child / name).absolute()))
                break
    if not found:
        raise LotdeployError(
            f"{fleet_dir}: holds no site (a fleet is a directory of sites: "
            f"{fleet_dir}/<name>/site.yaml)"
        )
    wanted = [w for word in only for w in word.split(",") if w]
    if wanted:
        names = {s.name for s in found}
        unknown = sorted(set(wanted) - names)
        if unknown:
            raise LotdeployError(
                f"no site {', '.join(unknown)} in {fleet_dir} (sites: {', '.join(sorted(names))})"
            )
        found = [s for s in found if s.name in wanted]
    return found


@dataclass
class SiteRun:
    """One site's run of the subcommand."""

    site: str
    argv: list[str]
    status: int | None = None
    seconds: float = 0.0
    summary: str = ""
    stdout: Path | None = None
    stderr: Path | None = None
    document: Any = None  # the --json output, parsed (a document, or the last JSON line)

    @property
    def meaning(self) -> str:
        return {0: "ok", 1: "error", 2: "changes", 70: "internal", 130: "interrupted"}.get(
            self.status if self.status is not None else -1, "failed"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "exit_status": self.status,
            "result": self.meaning,
            "seconds": round(self.seconds, 3),
            "summary": scrub(self.summary),
            "output": str(self.stdout) if self.stdout else None,
        }


def fleet_status(runs: list[SiteRun]) -> int:
    """One exit status for the fleet: an interruption or a bug wins, then any error, then
    changes/drift/findings (2), else 0."""
    codes = {r.status if r.status is not None else ExitStatus.ERROR for r in runs}
    for code in (ExitStatus.INTERRUPTED, ExitStatus.INTERNAL):
        if code in codes:
            return int(code)
    if codes - {ExitStatus.OK, ExitStatus.CHANGES}:
        return int(ExitStatus.ERROR)
    return int(ExitStatus.CHANGES) if ExitStatus.CHANGES in codes else int(ExitStatus.OK)


def _last_json(text: str) -> Any:
    """The --json output: one document, or (event streams) the last line that is one."""
    text = text.strip()
    if not text:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(text)
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    return None


def _summary_plan(doc: dict[str, Any]) -> str:
    changes = doc.get("changes") or []
    actions: dict[str, int] = {}
    for change in changes:
        action = str(change.get("action", "?"))
        actions[action] = actions.get(action, 0) + 1
    if not changes:
        return "no changes"
    return ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))


def _summary_apply(doc: dict[str, Any]) -> str:
    if isinstance(doc.get("rollout"), dict):
        rollout = doc["rollout"]
        return f"rollout {rollout.get('status')}: {len(rollout.get('waves') or [])} wave(s)"
    changed, failed = doc.get("changed") or [], doc.get("failed") or []
    text = f"{len(changed)} node(s) changed" if changed else "no changes"
    return text + (f", failed: {', '.join(map(str, failed))}" if failed else "")


def _summary_verify(doc: dict[str, Any]) -> str:
    counts = doc.get("counts") or {}
    failed = doc.get("failed_nodes") or []
    text = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("pass", "fail", "inconclusive"))
    return text + (f"; blame: {', '.join(map(str, failed))}" if failed else "")


def _summary_drift(doc: dict[str, Any]) -> str:
    nodes = doc.get("nodes") or {}
    drifted = sorted(n for n, v in nodes.items() if isinstance(v, dict) and v.get("findings"))
    errors = sorted(n for n, v in nodes.items() if isinstance(v, dict) and v.get("error"))
    text = f"drift on {', '.join(drifted)}" if drifted else "clean"
    return text + (f"; unreadable: {', '.join(errors)}" if errors else "")


def _summary_any(doc: dict[str, Any]) -> str:
    """A subcommand without its own line (audit, when it lands): its findings, if named."""
    for key in ("findings", "problems", "changes"):
        if isinstance(doc.get(key), list):
            return f"{len(doc[key])} {key}" if doc[key] else f"no {key}"
    return ""


#: One line per site, from the subcommand's --json output. A subcommand missing here still
#: runs; its line says what the exit status means.
SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "plan": _summary_plan,
    "apply": _summary_apply,
    "verify": _summary_verify,
    "drift": _summary_drift,
}


def summarise(command: str, run: SiteRun, stderr_text: str) -> str:
    doc = run.document
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return str(doc["error"].get("message", "error"))
    if isinstance(doc, dict):
        with contextlib.suppress(Exception):  # a site's odd output is never the fleet's crash
            line = SUMMARIES.get(command, _summary_any)(doc)
            if line:
                return line
    errors = [line for line in stderr_text.splitlines() if "error" in line.lower()]
    if errors:
        return errors[-1].removeprefix("lotdeploy: error: ")
    return run.meaning


class FleetRunner:
    """Runs one subcommand over the sites, bounded in parallelism and in time per site;
    `stop()` (SIGTERM, Ctrl-C) ends the children it started, by their process groups."""

    def __init__(self, fleet_dir: Path, parallel: int = 4, site_timeout: float = SITE_TIMEOUT):
        if parallel < 1:
            raise LotdeployError("--parallel must be at least 1")
        self.fleet_dir = fleet_dir
        self.parallel = parallel
        self.site_timeout = site_timeout
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run_dir(self, command: str) -> Path:
        """A new directory for this run's outputs (old runs beyond KEEP_RUNS removed)."""
        runs = self.fleet_dir / RUNS_DIR
        runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = runs / f"{stamp}-{command}-{os.getpid()}"
        target.mkdir(mode=0o700)
        for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-KEEP_RUNS]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def run(
        self,
        command: str,
        sites: list[FleetSite],
        args: list[str],
        *,
        site_args: Callable[[FleetSite], list[str]] | None = None,
        on_done: Callable[[SiteRun], None] | None = None,
        json_output: bool = True,
        out_dir: Path | None = None,
    ) -> list[SiteRun]:
        """`lotdeploy COMMAND SITE [--json] ARGS` for every site; the runs in site order."""
        out_dir = out_dir or self.run_dir(command)

        def one(site: FleetSite) -> SiteRun:
            target = site_args(site) if site_args else [str(site.site_file)]
            argv = [sys.executable, "-m", "lotdeploy", command, *target, *args]
            if json_output and "--json" not in argv:
                argv.append("--json")
            run = SiteRun(site.name, argv[2:])
            run.stdout, run.stderr = out_dir / f"{site.name}.out", out_dir / f"{site.name}.err"
            if self._stopping.is_set():
                run.status, run.summary = int(ExitStatus.INTERRUPTED), "not started"
                return run
            started = time.monotonic()
            run.status = self._spawn(argv, run.stdout, run.stderr)
            run.seconds = time.monotonic() - started
            out, err = _tail(run.stdout), _tail(run.stderr)
            run.document = _last_json(out)
            run.summary = (
                f"no answer within {self.site_timeout:g} s: stopped"
                if run.status == -int(signal.SIGKILL)
                else summarise(command, run, err)
            )
            if run.status is not None and run.status < 0:
                stopped = self._stopping.is_set()
                run.status = int(ExitStatus.INTERRUPTED if stopped else ExitStatus.ERROR)
            if on_done is not None:
                on_done(run)
            return run

        with ThreadPoolExecutor(max_workers=min(self.parallel, max(len(sites), 1))) as pool:
            try:
                return list(pool.map(one, sites))
            except BaseException:  # Ctrl-C, SIGTERM: end the children before waiting for them
                self.stop()
                raise

    def _spawn(self, argv: list[str], out: Path, err: Path) -> int:
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                # the caller's directory: relative paths among the options mean what they say
                start_new_session=True,  # its own process group: stop() ends it and its children
            )
            with self._lock:
                self._children.add(child)
            try:
                return child.wait(timeout=self.site_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(child, signal.SIGKILL)
                child.wait(timeout=30)
                return -int(signal.SIGKILL)
            finally:
                with self._lock:
                    self._children.discard(child)

    def stop(self, grace: float = 10.0) -> None:
        """End every running site: SIGTERM to each process group, SIGKILL after `grace`."""
        self._stopping.set()
        with self._lock:
            children = list(self._children)
        for child in children:
            _kill_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(child, signal.SIGKILL)


def _kill_group(child: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


@dataclass
class FleetResult:
    command: str
    runs: list[SiteRun] = field(default_factory=list)
    output_dir: Path | None = None

    @property
    def status(self) -> int:
        return fleet_status(self.runs)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_status": self.status,
            "output": str(self.output_dir) if self.output_dir else None,
            "sites": [r.to_json() for r in self.runs],
        }

    def table(self) -> str:
        """One line per site, then the fleet's line."""
        width = max([len("site"), *(len(r.site) for r in self.runs)])
        lines = [f"{'site':<{width}}  {'result':<11} {'exit':>4} {'seconds':>8}  summary"]
        for r in self.runs:
            lines.append(
                f"{r.site:<{width}}  {r.meaning:<11} {r.status if r.status is not None else '-':>4}"
                f" {r.seconds:>8.1f}  {scrub(r.summary)}"
            )
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.meaning] = counts.get(r.meaning, 0) + 1
        said = ", ".join(f"{n} {m}" for m, n in sorted(counts.items()))
        lines.append(
            f"fleet {self.command}: {len(self.runs)} site(s): {said}; exit {self.status}"
            + (f"; outputs in {self.output_dir}" if self.output_dir else "")
        )
        return "\n".join(lines) + "\n"


#: How much of a site's output the fleet keeps in memory: its end (the summary document is
#: the last JSON line, the cause of a failure the last lines of stderr).
OUTPUT_TAIL = 16 << 20


def _tail(path: Path) -> str:
    """The last OUTPUT_TAIL bytes of a site's output file (it stays whole on disk)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - OUTPUT_TAIL))
            return fh.read(OUTPUT_TAIL).decode("utf-8", errors="replace")
    except OSError:
        return ""

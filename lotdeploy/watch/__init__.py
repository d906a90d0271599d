"""`lotdeploy watch SITE|FLEET_DIR`: keep sites as they were applied, around the clock.

Each site gets a cycle every `interval` seconds (plus up to `jitter` of random delay, so a
fleet's sites do not all hit their nodes at once; at most `parallel` sites at a time):

1. **drift** (`lotdeploy drift SITE --json`): each node read live, as apply's refresh reads it;
2. with `--heal`, when a node drifted: an offline plan first, which must show no change (a
   site edited but not applied is the operator's to apply, never the watcher's), then a
   refreshed plan saved to a file, whose site digest and state serial must be the offline
   plan's (so it holds only the drift's restores), then `lotdeploy apply PLANFILE`: exactly
   that plan, refused by apply itself if anything moved in between;
3. **verify** (`lotdeploy verify SITE --json`): every route and link proven.

Every step is the real CLI in a process of its own (lotdeploy.fleet.FleetRunner: its own
process group, bounded in time), so a node or broker that is gone costs one failed cycle,
and the next cycle finds it back. Results become Prometheus metrics (`/metrics`, on
loopback unless told otherwise) and one JSON event per line. SIGTERM or Ctrl-C stops the
loop: the steps under way are ended, the HTTP server closed, exit 0.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from lotdeploy.fleet import FleetRunner, FleetSite, SiteRun
from lotdeploy.fsutil import UnreadableFile, read_json
from lotdeploy.secret import dumps, scrub

#: The heal's saved plan is read back with this cap (a plan of a few hundred nodes is MBs).
PLAN_FILE_CAP = 256 << 20

#: Bound of one step (drift, plan, apply, verify) of one site, in seconds.
STEP_TIMEOUT = 900.0

UNIT_FILE = Path(__file__).resolve().parent / "lotdeploy-watch@.service"


@dataclass
class SiteHealth:
    """What the last cycles found for one site: the metrics' source."""

    site: str
    links: dict[tuple[str, str], tuple[bool, float | None]] = field(default_factory=dict)
    drift: dict[str, int] = field(default_factory=dict)  # node -> findings
    unreadable: set[str] = field(default_factory=set)
    cert_days: dict[str, int] = field(default_factory=dict)
    up: bool = False
    last_success: float | None = None
    last_cycle_seconds: float = 0.0
    cycles: dict[str, int] = field(default_factory=dict)  # result -> count
    heals: dict[str, int] = field(default_factory=dict)  # result -> count


class Watcher:
    """The reconcile loop over `sites` (see the module docstring)."""

    def __init__(
        self,
        sites: list[FleetSite],
        base: Path,
        *,
        interval: float = 60.0,
        jitter: float = 0.1,
        parallel: int = 4,
        heal: bool = False,
        out: TextIO,
        extra_args: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sites = sites
        self.interval = interval
        self.jitter = jitter
        self.parallel = parallel
        self.heal = heal
        self.out = out
        self.extra_args = extra_args or []
        self.clock = clock
        self.runner = FleetRunner(base, parallel, STEP_TIMEOUT)
        self.health = {s.name: SiteHealth(s.name) for s in sites}
        self.stopping = threading.Event()
        self._out_lock = threading.Lock()
        self._health_lock = threading.Lock()

    # -- events ----------------------------------------------------------------------------

    def event(self, kind: str, site: str | None = None, **data: Any) -> None:
        """One JSON line: time, event, site, details (scrubbed of every known secret)."""
        doc = {"ts": round(time.time(), 3), "event": kind, **({"site": site} if site else {})}
        doc.update(data)
        with self._out_lock, contextlib.suppress(OSError, ValueError):
            self.out.write(dumps(doc) + "\n")
            self.out.flush()

    # -- the loop --------------------------------------------------------------------------

    def run(self, once: bool = False) -> None:
        """Cycle every site until stop() (or once each with `once`)."""
        self.event(
            "start", sites=[s.name for s in self.sites], interval=self.interval, heal=self.heal
        )
        due = {
            s.name: self.clock() + random.uniform(0, self.jitter * self.interval)
            for s in self.sites
        }
        if once:
            due = dict.fromkeys(due, self.clock())
        running: set[str] = set()
        done_once: set[str] = set()
        lock = threading.Lock()
        by_name = {s.name: s for s in self.sites}

        def cycle(name: str) -> None:
            try:
                self.cycle(by_name[name])
            except Exception as exc:  # a bug in one cycle never ends the watcher
                self.event("error", name, detail=scrub(f"{type(exc).__name__}: {exc}"))
            finally:
                with lock:
                    running.discard(name)
                    done_once.add(name)
                    due[name] = (
                        self.clock()
                        + self.interval
                        + random.uniform(0, self.jitter * self.interval)
                    )

        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            while not self.stopping.is_set():
                now = self.clock()
                with lock:
                    if once and len(done_once) == len(self.sites):
                        break
                    ready = sorted(
                        (n for n, at in due.items() if at <= now and n not in running),
                        key=lambda n: due[n],
                    )
                    if once:
                        ready = [n for n in ready if n not in done_once]
                    for name in ready[: max(0, self.parallel - len(running))]:
                        running.add(name)
                        pool.submit(cycle, name)
                    pending = [at for n, at in due.items() if n not in running]
                wait = min([*pending, now + 1.0]) - now
                self.stopping.wait(max(0.05, min(wait, 1.0)))
            if self.stopping.is_set():
                self.runner.stop()
        self.event("stop")

    def stop(self) -> None:
        self.stopping.set()
        self.runner.stop()

    # -- one site's cycle -------------------------------------------------------------------

    def _step(self, command: str, site: FleetSite, args: list[str], **kw: Any) -> SiteRun:
        out_dir = site.site_file.parent / ".lotdeploy" / "watch"
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        runs = self.runner.run(command, [site], args, out_dir=out_dir, **kw)
        return runs[0]

    def cycle(self, site: FleetSite) -> None:
        started = self.clock()
        drift = self._step("drift", site, self.extra_args)
        drifted, unreadable = self._read_drift(site.name, drift)
        self.event(
            "drift",
            site.name,
            exit_status=drift.status,
            drifted=sorted(drifted),
            unreadable=sorted(unreadable),
            detail=drift.summary,
        )
        healed = None
        if drifted and self.heal and not self.stopping.is_set():
            healed = self._heal(site)
            if healed:
                drift = self._step("drift", site, self.extra_args)
                drifted, unreadable = self._read_drift(site.name, drift)
                self.event(
                    "drift",
                    site.name,
                    exit_status=drift.status,
                    drifted=sorted(drifted),
                    unreadable=sorted(unreadable),
                    detail=drift.summary,
                    after="heal",
                )
        verify = self._step("verify", site, self.extra_args) if not self.stopping.is_set() else None
        verified = self._read_verify(site.name, verify)
        ok = drift.status == 0 and verified
        with self._health_lock:
            health = self.health[site.name]
            health.up = ok
            health.last_cycle_seconds = self.clock() - started
            result = "ok" if ok else ("drift" if drift.status == 2 else "fail")
            health.cycles[result] = health.cycles.get(result, 0) + 1
            if ok:
                health.last_success = time.time()
        self.event(
            "cycle",
            site.name,
            result=result,
            seconds=round(self.clock() - started, 3),
            healed=healed,
        )

    def _read_drift(self, name: str, run: SiteRun) -> tuple[set[str], set[str]]:
        doc = run.document if isinstance(run.document, dict) else {}
        nodes = doc.get("nodes") if isinstance(doc.get("nodes"), dict) else {}
        drift = {}
        unreadable = set()
        for node, found in (nodes or {}).items():
            if not isinstance(found, dict):
                continue
            drift[str(node)] = len(found.get("findings") or [])
            if found.get("error"):
                unreadable.add(str(node))
        with self._health_lock:
            health = self.health[name]
            health.drift = drift
            health.unreadable = unreadable
        return {n for n, count in drift.items() if count}, unreadable

    def _read_verify(self, name: str, run: SiteRun | None) -> bool:
        doc = run.document if run is not None and isinstance(run.document, dict) else {}
        links: dict[tuple[str, str], tuple[bool, float | None]] = {}
        cert_days: dict[str, int] = {}
        for check in doc.get("checks") or []:
            if not isinstance(check, dict):
                continue
            subject = str(check.get("subject", ""))
            if check.get("kind") == "link" and " → " in subject:
                source, target = subject.split(" → ", 1)
                latency = check.get("latency_ms")
                links[(source, target)] = (
                    check.get("status") == "pass",
                    float(latency) / 1000 if isinstance(latency, int | float) else None,
                )
            if check.get("kind") == "tls" and isinstance(check.get("days_left"), int):
                cert_days[subject] = int(check["days_left"])
        with self._health_lock:
            health = self.health[name]
            health.links = links
            health.cert_days = cert_days or health.cert_days
        ok = run is not None and run.status == 0
        if run is not None:
            self.event(
                "verify",
                name,
                exit_status=run.status,
                detail=run.summary,
                failed_links=sorted(f"{a} → {b}" for (a, b), (up, _) in links.items() if not up),
            )
        return ok

    def _heal(self, site: FleetSite) -> bool:
        """Apply what restores the drift, and nothing else (see the module docstring)."""
        offline = self._step("plan", site, [])
        doc = offline.document if isinstance(offline.document, dict) else {}
        if offline.status != 0 or doc.get("changes"):
            self._healed(
                site.name,
                "skipped",
                "the site has changes not applied yet (or no "
                "plan could be made): heal restores drift only, apply the site "
                "yourself"
                if offline.status == 0
                else f"plan failed: {offline.summary}",
            )
            return False
        plan_file = site.site_file.parent / ".lotdeploy" / "watch" / "heal.plan"
        with contextlib.suppress(FileNotFoundError):
            plan_file.unlink()  # never the previous cycle's plan
        refreshed = self._step("plan", site, ["--refresh", "--out", str(plan_file)])
        try:
            if refreshed.status not in (0, 2):
                raise UnreadableFile("no plan was made")
            saved = read_json(plan_file, PLAN_FILE_CAP)
            if not isinstance(saved, dict):
                raise UnreadableFile("is not a plan document")
        except (OSError, UnreadableFile):
            self._healed(site.name, "failed", f"refreshed plan failed: {refreshed.summary}")
            return False
        same = all(saved.get(k) == doc.get(k) for k in ("site_digest", "state_serial"))
        if not same:
            self._healed(site.name, "skipped", "the site or its state moved between the plans")
            return False
        applied = self._step("apply", site, [], site_args=lambda s: [str(plan_file)])
        ok = applied.status == 0
        self._healed(
            site.name,
            "ok" if ok else "failed",
            applied.summary,
            changes=len(saved.get("changes") or []),
        )
        return ok

    def _healed(self, name: str, result: str, detail: str, **data: Any) -> None:
        with self._health_lock:
            heals = self.health[name].heals
            heals[result] = heals.get(result, 0) + 1
        self.event("heal", name, result=result, detail=detail, **data)

    # -- metrics ----------------------------------------------------------------------------

    def metrics(self) -> str:
        """The Prometheus text exposition of every site's last findings."""
        with self._health_lock:
            sites = [self.health[s.name] for s in self.sites]
            families: list[tuple[str, str, str, list[tuple[dict[str, str], float]]]] = [
                (
                    "lotdeploy_watch_link_up",
                    "gauge",
                    "1 if the link carried every probe exactly once in the last verify.",
                    [
                        ({"site": h.site, "source": a, "target": b}, 1.0 if up else 0.0)
                        for h in sites
                        for (a, b), (up, _) in sorted(h.links.items())
                    ],
                ),
                (
                    "lotdeploy_watch_link_latency_seconds",
                    "gauge",
                    "Median probe latency of the link in the last verify.",
                    [
                        ({"site": h.site, "source": a, "target": b}, lat)
                        for h in sites
                        for (a, b), (_, lat) in sorted(h.links.items())
                        if lat is not None
                    ],
                ),
                (
                    "lotdeploy_watch_node_drift",
                    "gauge",
                    "1 if the node no longer runs what was applied (last drift read).",
                    [
                        ({"site": h.site, "node": n}, 1.0 if c else 0.0)
                        for h in sites
                        for n, c in sorted(h.drift.items())
                    ],
                ),
                (
                    "lotdeploy_watch_node_drift_findings",
                    "gauge",
                    "How many things differ on the node (routes, files, users).",
                    [
                        ({"site": h.site, "node": n}, float(c))
                        for h in sites
                        for n, c in sorted(h.drift.items())
                    ],
                ),
                (
                    "lotdeploy_watch_node_readable",
                    "gauge",
                    "0 if the last drift read could not reach the node.",
                    [
                        ({"site": h.site, "node": n}, 0.0 if n in h.unreadable else 1.0)
                        for h in sites
                        for n in sorted(h.drift)
                    ],
                ),
                (
                    "lotdeploy_watch_node_certificate_expiry_days",
                    "gauge",
                    "Days until the node's broker certificate expires (as served, last verify).",
                    [
                        ({"site": h.site, "node": n}, float(d))
                        for h in sites
                        for n, d in sorted(h.cert_days.items())
                    ],
                ),
                (
                    "lotdeploy_watch_site_up",
                    "gauge",
                    "1 if the site's last cycle found no drift and verify passed.",
                    [({"site": h.site}, 1.0 if h.up else 0.0) for h in sites],
                ),
                (
                    "lotdeploy_watch_site_last_success_timestamp_seconds",
                    "gauge",
                    "Unix time of the site's last cycle without drift and with verify passed.",
                    [
                        ({"site": h.site}, h.last_success)
                        for h in sites
                        if h.last_success is not None
                    ],
                ),
                (
                    "lotdeploy_watch_site_cycle_seconds",
                    "gauge",
                    "How long the site's last cycle took.",
                    [({"site": h.site}, h.last_cycle_seconds) for h in sites],
                ),
                (
                    "lotdeploy_watch_cycles_total",
                    "counter",
                    "Cycles run, by result (ok, drift, fail).",
                    [
                        ({"site": h.site, "result": r}, float(n))
                        for h in sites
                        for r, n in sorted(h.cycles.items())
                    ],
                ),
                (
                    "lotdeploy_watch_heals_total",
                    "counter",
                    "Heals tried, by result (ok, failed, skipped).",
                    [
                        ({"site": h.site, "result": r}, float(n))
                        for h in sites
                        for r, n in sorted(h.heals.items())
                    ],
                ),
            ]
        lines = []
        for name, kind, text, samples in families:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{label_text}}} {_sample(value)}")
        return "\n".join(lines) + "\n"


def _sample(value: float) -> str:
    """A sample value at full precision (a Unix timestamp keeps its seconds; `:.6g` would
    round 1731234567 to 1.73123e+09): whole numbers as integers, others as Python's
    shortest round-trip form, both valid in the text exposition format."""
    number = float(value)
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "+Inf" if number > 0 else "-Inf"
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


def _escape(value: str) -> str:
    """A label value in the text exposition format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve_metrics(watcher: Watcher, host: str, port: int) -> ThreadingHTTPServer:
    """`/metrics` on host:port in a daemon thread (the caller shuts it down)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = watcher.metrics().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not events."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server

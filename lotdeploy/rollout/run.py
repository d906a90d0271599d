"""Drive apply wave by wave: apply a wave, gate it, go on, pause, or stop and roll back.

Everything with a side effect is injected: `apply_wave` (apply on a set of nodes; the CLI
passes lotdeploy.apply.engine.apply_plan on a fresh plan), the `Gate` (verify), `restore`
(lotdeploy.rollout.restore.restore_node) and the reporter. What this module decides is
pure: which wave is next, what the gate covers (every node applied so far and its links to
every other deployed node, leaving out the nodes that failed within the budget), whom a
failed check blames, whether the budget holds, and what to restore.

Where the rollout stands lives in the state (`State.rollout`, written through
`StateStore.transaction()` after every wave), so `--pause-after` survives the process and a
killed run is resumed by `apply --continue`: the wave that was under way is applied again
(apply is idempotent) and gated.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lotdeploy.apply.engine import ApplyResult
from lotdeploy.errors import LotdeployError
from lotdeploy.model import Site
from lotdeploy.rollout.gate import Gate, GateProblem, GateResult
from lotdeploy.rollout.restore import RestoreOutcome, safe_error
from lotdeploy.rollout.waves import Wave, wave_index
from lotdeploy.secret import scrub
from lotdeploy.state import NodeRecord, RolloutRecord, StateStore
from lotdeploy.workspace import Workspace

ApplyWave = Callable[[set[str]], ApplyResult]
#: restore(node, record before the rollout) -> outcome (raises on failure)
Restore = Callable[[str, NodeRecord], RestoreOutcome]


class RolloutError(LotdeployError):
    """A rollout cannot start or continue (the reason says what to do)."""


@dataclass(frozen=True)
class RolloutEvent:
    """What the rollout reports: a wave starts or ends, a gate runs, a rollback happens."""

    kind: str  # wave, gate, rollback, restore-gate, pause, done
    wave: str
    status: str  # start, ok, fail, skip
    detail: str = ""
    nodes: tuple[str, ...] = ()
    seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "event": self.kind,
            "wave": self.wave,
            "status": self.status,
            "at": round(time.time(), 3),
        }
        if self.nodes:
            doc["nodes"] = list(self.nodes)
        if self.detail:
            doc["detail"] = scrub(self.detail)
        if self.seconds is not None:
            doc["seconds"] = round(self.seconds, 3)
        doc.update(self.data)
        return doc


RolloutReporter = Callable[[RolloutEvent], None]


def quiet(event: RolloutEvent) -> None:
    """A reporter that drops everything."""


@dataclass
class WaveReport:
    name: str
    nodes: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)  # node -> why (apply or gate)
    gate: GateResult | None = None
    apply_seconds: float = 0.0
    ok: bool = True


@dataclass
class RolloutResult:
    status: str  # complete, paused, failed, rolled-back
    waves: list[WaveReport] = field(default_factory=list)
    reason: str = ""
    rolled_back: list[RestoreOutcome] = field(default_factory=list)
    restore_gate: GateResult | None = None
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("complete", "paused")

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": scrub(self.reason),
            "waves": [
                {
                    "name": w.name,
                    "nodes": list(w.nodes),
                    "ok": w.ok,
                    "failed": {n: scrub(e) for n, e in sorted(w.failed.items())},
                    "apply_seconds": round(w.apply_seconds, 3),
                    "gate": w.gate.to_json() if w.gate else None,
                }
                for w in self.waves
            ],
            "rolled_back": [o.to_json() for o in self.rolled_back],
            "restore_gate": self.restore_gate.to_json() if self.restore_gate else None,
            "hint": self.hint,
        }


# -- pure decisions --------------------------------------------------------------------------


def blame(problems: Iterable[GateProblem], wave: Iterable[str]) -> set[str]:
    """The nodes a failed gate is put on: a node's own check blames that node; a link blames
    its end(s) in the current wave (the change), or both ends when neither is in it."""
    members = set(wave)
    blamed: set[str] = set()
    for problem in problems:
        ends = set(problem.subject)
        in_wave = ends & members
        blamed |= in_wave or ends
    return blamed


def judge(
    wave: Wave, failed: set[str], done_failed: set[str], max_failed_nodes: int | None
) -> str | None:
    """Why the wave fails (None: it holds). `failed` are this wave's blamed nodes."""
    outside = failed - set(wave.nodes)
    if outside:
        return f"nodes outside this wave failed the gate: {', '.join(sorted(outside))}"
    if not wave.allows(len(failed)):
        share = 100 * len(failed) / len(wave.nodes)
        return (
            f"{len(failed)} of {len(wave.nodes)} node(s) failed ({share:.0f}%), over the wave's "
            f"budget of {wave.max_fail_percentage}%: {', '.join(sorted(failed))}"
        )
    total = len(done_failed | failed)
    if max_failed_nodes is not None and total > max_failed_nodes:
        return f"{total} node(s) failed in this rollout, over its budget of {max_failed_nodes}"
    return None


def changed_since(before: NodeRecord, now: NodeRecord) -> bool:
    """Whether the rollout changed the node (what a rollback has to undo)."""
    return (before.release, before.routes, sorted(before.users), before.files) != (
        now.release,
        now.routes,
        sorted(now.users),
        now.files,
    )


def waves_of(record: RolloutRecord) -> list[Wave]:
    return [
        Wave(str(w["name"]), tuple(w["nodes"]), int(w.get("max_fail_percentage", 0)))
        for w in record.waves
    ]


# -- the driver ------------------------------------------------------------------------------


def start_rollout(
    site: Site,
    workspace: Workspace,
    waves: list[Wave],
    pause_after: str | None,
    now: datetime | None = None,
) -> RolloutRecord:
    """Record a new rollout; refused while another one is paused or under way."""
    if pause_after is not None:
        try:
            wave_index(waves, pause_after)
        except ValueError as exc:
            raise RolloutError(f"--pause-after {pause_after}: {exc}") from None
    with StateStore(workspace).transaction() as state:
        if state.rollout is not None and state.rollout.status in ("paused", "running"):
            raise RolloutError(_standing(state.rollout, site))
        record = RolloutRecord(
            id=secrets.token_hex(6),
            site_digest=site.digest(),
            waves=[
                {
                    "name": w.name,
                    "nodes": list(w.nodes),
                    "max_fail_percentage": w.max_fail_percentage,
                }
                for w in waves
            ],
            pause_after=pause_after,
            started_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        )
        state.rollout = record
    return record


def resume_rollout(site: Site, workspace: Workspace, pause_after: str | None) -> RolloutRecord:
    """The paused (or interrupted) rollout, to go on with; refused when there is none or the
    site changed since (its waves were planned from another site)."""
    with StateStore(workspace).transaction() as state:
        record = state.rollout
        if record is None or record.status not in ("paused", "running"):
            raise RolloutError(
                "--continue: no rollout is paused or under way (start one with `lotdeploy "
                "apply SITE --pause-after WAVE`)"
            )
        if record.site_digest != site.digest():
            raise RolloutError(
                "--continue: the site changed since the rollout paused; finish it with the "
                "site as it was, or roll it back (`lotdeploy rollback SITE`) and start again"
            )
        if pause_after is not None:
            try:
                wave_index(waves_of(record), pause_after)
            except ValueError as exc:
                raise RolloutError(f"--pause-after {pause_after}: {exc}") from None
        record.pause_after = pause_after
        record.status = "running"
        return record


def _standing(record: RolloutRecord, site: Site) -> str:
    waves = waves_of(record)
    where = f"after wave {waves[record.done - 1].name}" if record.done else "before its first wave"
    what = "paused" if record.status == "paused" else "was interrupted"
    return (
        f"a rollout {what} {where} ({record.done} of {len(waves)} waves done): "
        f"`lotdeploy apply {site.source} --continue` goes on, `lotdeploy rollback "
        f"{site.source}` undoes it"
    )


def run_rollout(
    site: Site,
    workspace: Workspace,
    record: RolloutRecord,
    apply_wave: ApplyWave,
    gate: Gate,
    restore: Restore,
    report: RolloutReporter = quiet,
    parallelism: int = 10,
) -> RolloutResult:
    """Apply the rollout's waves from where it stands; see the module doc."""
    store = StateStore(workspace)
    waves = waves_of(record)
    result = RolloutResult("complete")
    failed_before = set(record.failed)
    in_rollout = {n for w in waves for n in w.nodes}
    # nodes the rollout leaves out (--limit/--exclude) are not its business: not gated
    outside = {n.name for n in site.nodes} - in_rollout
    for index in range(record.done, len(waves)):
        wave = waves[index]
        with store.transaction() as state:  # what an automatic rollback would restore
            current = state.rollout
            assert current is not None
            for name in wave.nodes:
                if name not in current.before:
                    current.before[name] = state.nodes.get(name, NodeRecord()).to_json()
            before = {n: NodeRecord.from_json(current.before[n], n) for n in wave.nodes}
        report(RolloutEvent("wave", wave.name, "start", nodes=wave.nodes))
        started = time.monotonic()
        applied = apply_wave(set(wave.nodes))
        wave_report = WaveReport(wave.name, wave.nodes, apply_seconds=time.monotonic() - started)
        result.waves.append(wave_report)
        for outcome in applied.failed:
            wave_report.failed[outcome.node] = f"{outcome.failed_step} failed: {outcome.error}"
        report(
            RolloutEvent(
                "wave",
                wave.name,
                "fail" if wave_report.failed else "ok",
                "; ".join(f"{n}: {e}" for n, e in sorted(wave_report.failed.items())),
                wave.nodes,
                wave_report.apply_seconds,
            )
        )
        so_far = {n for w in waves[: index + 1] for n in w.nodes}
        leave_out = failed_before | set(wave_report.failed) | outside
        report(RolloutEvent("gate", wave.name, "start", nodes=tuple(sorted(so_far - leave_out))))
        checked = gate(frozenset(so_far - leave_out), frozenset(leave_out))
        wave_report.gate = checked
        blamed = blame(checked.problems, wave.nodes)
        for problem in checked.problems:
            for name in blamed & set(problem.subject):
                wave_report.failed.setdefault(name, problem.describe())
        report(
            RolloutEvent(
                "gate",
                wave.name,
                "ok" if checked.ok else "fail",
                "; ".join(p.describe() for p in checked.problems[:10]),
                seconds=checked.seconds,
                data={"checked": checked.checked},
            )
        )
        why = judge(wave, set(wave_report.failed), failed_before, policy_budget(site))
        if why is not None:
            wave_report.ok = False
            result.reason = f"wave {wave.name}: {why}"
            return _stop(
                site,
                workspace,
                wave,
                before,
                result,
                gate,
                restore,
                report,
                parallelism,
                so_far_before={n for w in waves[:index] for n in w.nodes} - leave_out,
                leave_out=leave_out,
            )
        failed_before |= set(wave_report.failed)
        with store.transaction() as state:
            current = state.rollout
            assert current is not None
            current.done = index + 1
            current.failed = sorted(failed_before)
            pause = current.pause_after is not None and (
                wave_index(waves, current.pause_after) == index
            )
            if index + 1 == len(waves):
                state.rollout = None
            elif pause:
                current.status = "paused"
        if pause and index + 1 < len(waves):
            result.status = "paused"
            result.hint = (
                f"paused after wave {wave.name} ({index + 1} of {len(waves)}): "
                f"`lotdeploy apply {site.source} --continue` promotes the next wave"
            )
            report(RolloutEvent("pause", wave.name, "ok", result.hint))
            return result
    report(RolloutEvent("done", waves[-1].name if waves else "", "ok"))
    return result


def policy_budget(site: Site) -> int | None:
    return site.rollout.max_failed_nodes


def _stop(
    site: Site,
    workspace: Workspace,
    wave: Wave,
    before: dict[str, NodeRecord],
    result: RolloutResult,
    gate: Gate,
    restore: Restore,
    report: RolloutReporter,
    parallelism: int,
    so_far_before: set[str],
    leave_out: set[str],
) -> RolloutResult:
    """A wave failed: stop; with rollback auto, restore the wave's nodes and gate that."""
    store = StateStore(workspace)
    state = store.read()
    changed = [n for n in wave.nodes if changed_since(before[n], state.nodes.get(n, NodeRecord()))]
    if site.rollout.rollback != "auto":
        with store.transaction() as current:
            if current.rollout is not None:
                current.rollout.status = "failed"
                current.rollout.reason = result.reason
        result.status = "failed"
        limit = ",".join(changed or wave.nodes)
        result.hint = (
            f"rollback is manual: `lotdeploy rollback {site.source} --limit {limit}` puts "
            "the wave's nodes back on their previous release"
        )
        report(RolloutEvent("rollback", wave.name, "skip", result.hint))
        return result
    report(RolloutEvent("rollback", wave.name, "start", nodes=tuple(changed)))
    started = time.monotonic()

    def one(name: str) -> RestoreOutcome:
        try:
            return restore(name, before[name])
        except (LotdeployError, OSError) as exc:
            return RestoreOutcome(
                name, ok=False, to_release=before[name].release, error=safe_error(exc)
            )

    if changed:
        with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(changed)))) as pool:
            result.rolled_back = list(pool.map(one, changed))
    lost = {o.node for o in result.rolled_back if not o.ok}
    report(
        RolloutEvent(
            "rollback",
            wave.name,
            "fail" if lost else "ok",
            "; ".join(
                f"{o.node}: {o.detail}" if o.ok else f"{o.node}: {o.error}"
                for o in result.rolled_back
            )
            or "no node of the wave was changed",
            tuple(changed),
            time.monotonic() - started,
        )
    )
    restored = {o.node for o in result.rolled_back if o.ok}
    scope = frozenset(so_far_before | restored)
    if scope:
        report(RolloutEvent("restore-gate", wave.name, "start", nodes=tuple(sorted(scope))))
        result.restore_gate = gate(scope, frozenset(leave_out | lost))
        report(
            RolloutEvent(
                "restore-gate",
                wave.name,
                "ok" if result.restore_gate.ok else "fail",
                "; ".join(p.describe() for p in result.restore_gate.problems[:10]),
                seconds=result.restore_gate.seconds,
            )
        )
    holds = result.restore_gate is None or result.restore_gate.ok
    with store.transaction() as current:
        if current.rollout is not None:
            if not lost:
                current.rollout = None  # the wave is undone; the next apply starts afresh
            else:
                current.rollout.status = "failed"
                current.rollout.reason = result.reason
    result.status = "rolled-back" if not lost else "failed"
    if lost:
        result.hint = (
            f"{', '.join(sorted(lost))} could not be restored: `lotdeploy rollback "
            f"{site.source} --limit {','.join(sorted(lost))}` once reachable"
        )
    elif not holds:
        result.hint = "the restore did not verify: see the gate's problems above"
    return result

"""Saved plans: `plan --out FILE` (and the workspace's latest plan) applied exactly, or refused.

A saved plan is applied only while it still says what a fresh plan would say: the site
means the same (digest), the state has not moved (serial), and the changes are the same
ones. Otherwise apply refuses and says what moved, as Terraform does with a stale plan.
"""

from __future__ import annotations

from pathlib import Path

from lotdeploy.errors import LotdeployError
from lotdeploy.plan.changes import Change
from lotdeploy.plan.diff import Plan

LATEST = Path("plans") / "latest.json"


class StalePlan(LotdeployError):
    """The saved plan no longer describes what apply would do."""


def _key(change: Change) -> tuple[str, str, str]:
    return (change.key, change.action, change.reason)


def _line(change: Change) -> str:
    where = f" on {change.node}" if change.node else ""
    return f"{change.marker} {change.kind} {change.name}{where}" + (
        f" ({change.reason})" if change.reason else ""
    )


def stale_reasons(saved: Plan, fresh: Plan) -> list[str]:
    """Why `saved` cannot be applied now (empty: it can), in words an operator can act on."""
    reasons = []
    if saved.workspace_id != fresh.workspace_id:
        reasons.append(
            f"the plan was made in another workspace (id {saved.workspace_id or 'none'}), not "
            f"this one (id {fresh.workspace_id or 'none'})"
        )
    if saved.site != fresh.site:
        reasons.append(f"the plan is for site {saved.site}, not {fresh.site}")
    if saved.site_digest != fresh.site_digest:
        reasons.append("the site spec changed since the plan was made")
    if saved.state_serial != fresh.state_serial:
        reasons.append(
            f"the state moved on since the plan was made (serial {saved.state_serial} -> "
            f"{fresh.state_serial}): another apply, render or rotation ran"
        )
    if saved.refreshed and saved.drift != fresh.drift:
        reasons.append("the live nodes changed since the plan was made (plan --refresh)")
    if saved.only != fresh.only:
        reasons.append("the plan was made for other nodes (--limit/--exclude)")
    old = {_key(c): c for c in saved.changes}
    new = {_key(c): c for c in fresh.changes}
    added = [new[k] for k in sorted(set(new) - set(old))]
    gone = [old[k] for k in sorted(set(old) - set(new))]
    if added or gone:
        shown = [f"now also {_line(c)}" for c in added[:3]] + [
            f"no longer {_line(c)}" for c in gone[:3]
        ]
        more = len(added) + len(gone) - len(shown)
        reasons.append(
            "what it would do changed: "
            + "; ".join(shown)
            + (f"; and {more} more" if more > 0 else "")
        )
    if not reasons and saved.digest != _digest(saved, fresh):
        reasons.append(_what_differs(saved, fresh))
    return reasons


def _digest(saved: Plan, fresh: Plan) -> str:
    """The fresh plan's digest, of the kind the saved one carries."""
    from lotdeploy.plan.document import plan_digest, reference_digest

    return reference_digest(fresh) if saved.document == "reference" else plan_digest(fresh)


def _what_differs(saved: Plan, fresh: Plan) -> str:
    """The first change (or node's steps) whose details differ, in words."""
    from lotdeploy.plan.document import change_line

    new = {c.key: c for c in fresh.changes}
    if saved.document != "reference":
        for change in saved.changes:
            other = new.get(change.key)
            if other is None or change_line(change) == change_line(other):
                continue
            was = {a.name: a.after for a in change.shown()}
            now = {a.name: a.after for a in other.shown()}
            diffs = [
                f"{key} {was.get(key)} -> {now.get(key)}"
                for key in sorted(set(was) | set(now))
                if was.get(key) != now.get(key)
            ]
            what = "; ".join(diffs[:3]) or "its payload"
            return f"what it would do changed in detail: {_line(change)}: {what}"
    for name in sorted(set(saved.steps) | set(fresh.steps)):
        if saved.steps.get(name) != fresh.steps.get(name):
            return f"what it would do on node {name} changed (its steps differ)"
    return "what it would do changed in detail (its digest differs from a fresh plan's)"


def require_fresh(saved: Plan, fresh: Plan, source: str) -> None:
    reasons = stale_reasons(saved, fresh)
    if reasons:
        raise StalePlan(
            f"{source}: the saved plan is stale, nothing was applied: {'; '.join(reasons)}. "
            "Run `lotdeploy plan` again, review it, then apply"
        )

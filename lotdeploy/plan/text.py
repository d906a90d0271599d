"""Show a plan to people: one change per line, grouped site → region → node, closing summary.

Sensitive values never reach here (Attr only ever holds "(sensitive)"); as a second line
of defence the CLI passes every output through `scrub`. Colour is plain ANSI (SGR) codes,
so this layer needs no terminal library.
"""

from __future__ import annotations

from collections.abc import Iterator

from lotdeploy import terminal
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.plan.desired import DesiredRoute
from lotdeploy.plan.diff import NodeSteps, Plan, node_change_groups
from lotdeploy.secret import SENSITIVE

_COLOURS = {"create": "green", "update": "yellow", "delete": "red", "replace": "magenta"}


def style(text: str, fg: str | None = None, bold: bool = False) -> str:
    """`text` in colour, by the terminal sanitiser's rule (lotdeploy.terminal.style)."""
    return terminal.style(text, fg, bold)


def _route_line(change: Change) -> str:
    reason = f"({change.reason})" if change.reason else ""
    if change.action == "update":
        moves = [f"{a.name} {a.before} -> {a.after}" for a in change.shown()]
        return "  ".join([*moves, reason] if reason else moves)
    if change.action == "delete" and not change.before and not change.attrs:
        return reason  # a route found on the broker that lotdeploy never applied
    route = change.payload
    if change.action != "delete" and isinstance(route, DesiredRoute) and not change.attrs:
        # The common line, straight from the payload (no attribute tuples built).
        tls = "tls" if route.use_tls else "plain"
        head = (
            f"-> {route.broker_address}:{route.broker_port} {tls}  client {route.client_id}  "
            f"user {route.username}  password {SENSITIVE}  "
            f"validity {route.message_validity_sec}s"
        )
        return head + (f" ({change.reason})" if change.reason else "")
    shown = change.shown()
    values = {a.name: (a.after if change.action != "delete" else a.before) for a in shown}
    tls = "tls" if values.get("USE_TLS") == "true" else "plain"
    return (
        f"-> {values.get('BROKER_ADDRESS')}:{values.get('BROKER_PORT')} {tls}  "
        f"client {values.get('CLIENT_ID')}  user {values.get('USERNAME')}  "
        f"password {values.get('PASSWORD')}  validity {values.get('MESSAGE_VALIDITY_SEC')}s"
        + (f" ({change.reason})" if change.reason else "")
    )


def _attr_text(attr: Attr) -> str:
    if attr.before is not None and attr.before != attr.after:
        return f"{attr.name} {attr.before} -> {attr.after}"
    return f"{attr.name} {attr.after}"


def _line(change: Change, colour: bool) -> str:
    marker = change.marker
    if colour:
        marker = style(marker, fg=_COLOURS[change.action], bold=True)
    if change.kind == "route":
        detail = _route_line(change)
    else:
        shown = "  ".join(_attr_text(a) for a in change.attrs if a.after is not None)
        detail = "  ".join(p for p in (shown, f"({change.reason})" if change.reason else "") if p)
    return f"{marker} {change.kind} {change.name}  {detail}".rstrip()


def _node_lines(changes: list[Change], colour: bool) -> Iterator[str]:
    """`"    " + _line(c, colour)` for each change; a plain route creation (all 999,000 of
    a first 1,000-node plan) made in one f-string from its payload (same text:
    tests/test_fastpaths.py)."""
    for c in changes:
        route = c.payload
        plain = c.kind == "route" and c.action == "create" and type(route) is DesiredRoute
        if colour or not plain or c.attrs:
            yield "    " + _line(c, colour)
            continue
        tls = "tls" if route.use_tls else "plain"
        line = (
            f"    + route {c.name}  -> {route.broker_address}:{route.broker_port} {tls}  "
            f"client {route.client_id}  user {route.username}  password {SENSITIVE}  "
            f"validity {route.message_validity_sec}s"
        )
        yield (f"{line} ({c.reason})" if c.reason else line).rstrip()


def format_text(plan: Plan, colour: bool = False) -> str:
    """The whole plan as one text (what `iter_text` yields, joined)."""
    return "".join(iter_text(plan, colour))


def iter_text(plan: Plan, colour: bool = False) -> Iterator[str]:
    """The plan's text in pieces of whole lines, one piece per node: what the CLI writes as
    it goes. A 1,000-node plan is 999,000 lines (150 MB); made as one list and one string,
    it took four times as long and twice the memory (docs/performance.md)."""
    head = (
        f"lotdeploy plan: site {plan.site} ({plan.node_count} nodes, "
        f"{plan.region_count} region{'s' if plan.region_count != 1 else ''})"
    )
    yield (style(head, bold=True) if colour else head) + "\n" + source_line(plan) + "\n"
    site_level = [c for c in plan.changes if c.node is None]
    if site_level:
        yield f"\nsite {plan.site}\n" + "".join("  " + _line(c, colour) + "\n" for c in site_level)
    shown_region = None
    for region, node, changes in node_change_groups(plan.changes):
        piece = [f"\nregion {region}"] if region != shown_region else []
        shown_region = region
        piece.append(f"  node {node}")
        piece.extend(_node_lines(changes, colour))
        piece.append("")
        yield "\n".join(piece)
    out: list[str] = []
    if plan.drift:
        out.append("")
        out.append("Drift (what the live nodes showed, apart from the changes above):")
        out.extend(
            f"  {node}: {finding}" for node, found in plan.drift.items() for finding in found
        )
    if plan.steps:
        out.append("")
        out.append("On the nodes (what apply does there):")
        width = max(len(name) for name in plan.steps)
        out.extend(
            f"  {name.ljust(width)}  {steps_text(plan.steps[name])}" for name in sorted(plan.steps)
        )
    if plan.warnings:
        out.append("")
        for warning in plan.warnings:
            out.append(("warning: " if not colour else style("warning: ", fg="yellow")) + warning)
    out.append("")
    out.append(summary_line(plan))
    yield "\n".join(out) + "\n"


def source_line(plan: Plan) -> str:
    """What the plan was made from (the header's second line): the recorded state only, or
    the live nodes too."""
    if plan.refreshed and plan.unread:
        return (
            "  refreshed: made against what the live nodes run; could not read "
            f"{', '.join(plan.unread)} (planned from the recorded state)"
        )
    if plan.refreshed:
        return "  refreshed: made against what the live nodes run"
    return (
        "  offline: made from the recorded state; no node was read (`plan --refresh` reads "
        "them; apply reads them before it changes anything)"
    )


def steps_text(steps: NodeSteps) -> str:
    """One node's apply steps in a line: files written, reload, users, routes."""
    parts = []
    if steps.files:
        parts.append("write " + " ".join(steps.files))
    parts.append("reload" if steps.reload else "no reload")
    if steps.users_create:
        parts.append("users +" + " +".join(steps.users_create))
    if steps.users_remove:
        parts.append("users -" + " -".join(steps.users_remove))
    if steps.routes_add or steps.routes_remove:
        replaced = set(steps.routes_add) & set(steps.routes_remove)
        added = len(steps.routes_add) - len(replaced)
        removed = len(steps.routes_remove) - len(replaced)
        parts.append(f"routes +{added} ~{len(replaced)} -{removed}")
    if steps.secrets_set:
        parts.append("secret set again " + " ".join(steps.secrets_set))
    return ", ".join(parts)


def summary_line(plan: Plan) -> str:
    if not plan.changes:
        if plan.steps:
            return (
                f"No changes to the site; apply restores what drifted on {len(plan.steps)} "
                f"node{'s' if len(plan.steps) != 1 else ''}."
            )
        if plan.refreshed and plan.unread:
            return f"No changes on the nodes read; could not read {', '.join(plan.unread)}."
        if plan.refreshed:
            return "No changes. The live nodes run what the site says."
        return "No changes. The site matches the recorded state."
    counts = plan.summary()
    kinds: dict[str, int] = {}
    for change in plan.changes:
        kinds[change.kind] = kinds.get(change.kind, 0) + 1
    detail = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(kinds.items()))
    replace = f", {counts['replace']} to replace" if counts["replace"] else ""
    return (
        f"Plan: {counts['create']} to add, {counts['update']} to change, "
        f"{counts['delete']} to destroy{replace} ({detail})."
    )

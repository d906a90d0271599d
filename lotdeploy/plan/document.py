"""A plan as a document: what `plan --json` prints and `plan --out FILE` saves, read back.

One versioned format for both. It holds no secret value: route passwords appear as the
name of the workspace secret they come from, displayed attributes as "(sensitive)". A plan
records the site digest and the state serial it was made against, so a saved plan can be
refused when either moved since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from lotdeploy.errors import WorkspaceError
from lotdeploy.fsutil import UnreadableFile, atomic_write, read_json, write_output
from lotdeploy.plan.changes import MARKERS, SHOWN, Attr, Change, display, shown_password
from lotdeploy.plan.desired import DesiredRoute
from lotdeploy.plan.diff import NodeSteps, Plan, node_change_groups
from lotdeploy.secret import SENSITIVE, dumps, scrub

PLAN_FORMAT = "lotdeploy-plan"
#: the compact form `plan` keeps as the workspace's latest plan (write_reference)
REFERENCE_FORMAT = "lotdeploy-plan-reference"
PLAN_JSON_FORMAT = 1


def _payload(value: Any, attrs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    if isinstance(value, DesiredRoute):
        attrs = attrs if attrs is not None else value.attrs()
        return {"type": "route", **attrs, "password": {"secret": value.password.name}}
    return None


def _groups(plan: Plan) -> list[list[Change]]:
    """The changes in the order plans show them: the site-level ones (if any), then each
    node's."""
    site_level = [c for c in plan.changes if c.node is None]
    nodes = [group for _, _, group in node_change_groups(plan.changes)]
    return [site_level, *nodes] if site_level else nodes


def _ordered(plan: Plan) -> list[Change]:
    return [c for group in _groups(plan) for c in group]


def _change_document(c: Change) -> dict[str, Any]:
    if c.kind == "route" and c.action == "create" and not c.attrs:
        # The common case (39,800 at 200 nodes), straight from the payload, as route_attrs
        # would show it; its attributes are made once for both fields.
        after = c.payload.attrs()
        attributes = {
            label: {
                "before": None,
                "after": shown_password(after)
                if key == "password_version"
                else display(key, after[key]),
            }
            for key, label in SHOWN
        }
        payload = _payload(c.payload, after)
    else:
        attributes = {a.name: {"before": a.before, "after": a.after} for a in c.shown()}
        payload = _payload(c.payload)
    return {
        "key": c.key,
        "action": c.action,
        "kind": c.kind,
        "name": c.name,
        "node": c.node,
        "region": c.region,
        "reason": c.reason,
        "attributes": attributes,
        "payload": payload,
    }


def _route_create_line(c: Change, route: DesiredRoute) -> str | None:
    """`dumps(_change_document(c))` of a route creation with no shown attributes (the
    common case: 39,800 at 200 nodes), the same text made by string formatting
    (tests/test_fastpaths.py checks the two agree); None for values of other types."""
    port, validity, version = route.broker_port, route.message_validity_sec, route.password_version
    if route.password_secret:  # the rarer form: the encoder writes it
        return None
    if not (
        type(port) is int
        and type(validity) is int
        and type(version) is int
        and type(route.use_tls) is bool
    ):
        return None
    try:
        return _route_create_text(c, route, port, validity, version)
    except TypeError:  # a value that is not a str (the C escaper takes only str)
        return None


def _route_create_text(
    c: Change, route: DesiredRoute, port: int, validity: int, version: int
) -> str:
    e = encode_basestring_ascii
    # None (never for a route) raises TypeError: the caller falls back to the encoder
    node, region = e(c.node), e(c.region)  # type: ignore[arg-type]
    address, client, user = e(route.broker_address), e(route.client_id), e(route.username)
    tls = "true" if route.use_tls else "false"
    return (
        f'{{"key": {e(c.key)}, "action": "create", "kind": "route", "name": {e(c.name)}, '
        f'"node": {node}, "region": {region}, "reason": {e(c.reason)}, '
        f'"attributes": {{"BROKER_ADDRESS": {{"before": null, "after": {address}}}, '
        f'"BROKER_PORT": {{"before": null, "after": "{port}"}}, '
        f'"CLIENT_ID": {{"before": null, "after": {client}}}, '
        f'"USERNAME": {{"before": null, "after": {user}}}, '
        f'"PASSWORD": {{"before": null, "after": {e(SENSITIVE)}}}, '
        f'"MESSAGE_VALIDITY_SEC": {{"before": null, "after": "{validity}"}}, '
        f'"USE_TLS": {{"before": null, "after": "{tls}"}}}}, '
        f'"payload": {{"type": "route", "name": {e(route.name)}, "peer": {e(route.peer)}, '
        f'"peer_region": {e(route.peer_region)}, "link_class": {e(route.link_class)}, '
        f'"broker_address": {address}, "broker_port": {port}, "client_id": {client}, '
        f'"username": {user}, "message_validity_sec": {validity}, "use_tls": {tls}, '
        f'"password_version": {version}, '
        f'"password": {{"secret": {e(route.password.name)}}}}}}}'
    )


#: What _route_create_line writes, in this order (checked at import: a new shown
#: attribute or route field must be added there too).
assert tuple(label for _, label in SHOWN) == (
    "BROKER_ADDRESS",
    "BROKER_PORT",
    "CLIENT_ID",
    "USERNAME",
    "PASSWORD",
    "MESSAGE_VALIDITY_SEC",
    "USE_TLS",
)
assert DesiredRoute._fields == (
    "name",
    "peer",
    "peer_region",
    "link_class",
    "broker_address",
    "broker_port",
    "client_id",
    "username",
    "message_validity_sec",
    "use_tls",
    "password_version",
    "password_secret",
)


def change_line(c: Change) -> str:
    """One change as one line of the plan document."""
    if c.kind == "route" and c.action == "create" and not c.attrs:
        route = c.payload
        if type(route) is DesiredRoute:
            line = _route_create_line(c, route)
            if line is not None:
                return scrub(line)
    return dumps(_change_document(c))


def _head(plan: Plan) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "format_version": PLAN_JSON_FORMAT,
        "site": plan.site,
        "site_digest": plan.site_digest,
        "workspace": plan.workspace_id,
        "state_serial": plan.state_serial,
        "nodes": plan.node_count,
        "regions": plan.region_count,
        "node_regions": plan.regions,
        "site_file": plan.site_file,
        "only": plan.only,
        "refreshed": plan.refreshed,
        "drift": plan.drift,
        "unread": plan.unread,
    }


def _identity(plan: Plan) -> str:
    """What a plan is for, as one line of its digest: site, site digest, workspace, state."""
    return dumps(
        [plan.site, plan.site_digest, plan.workspace_id, plan.state_serial, plan.only],
        sort_keys=True,
    )


def _steps_line(name: str, steps: NodeSteps) -> str:
    return f"{json.dumps(name)}: {dumps(steps.to_json())}"


class _Digest:
    """sha256 over what apply will do, line by line: the plan's identity, every change as
    its document line (payload and attributes included; a reference: key, action, reason)
    and every node's steps. The writer computes it as it writes; a reader recomputes it
    from what it parsed (an edited document no longer matches); apply computes it of the
    fresh plan (a stale one no longer matches)."""

    def __init__(self, kind: str, plan: Plan) -> None:
        self.hash = hashlib.sha256(f"{kind}\n{_identity(plan)}\n".encode())

    def add(self, line: str, end: str = "\n") -> str:
        self.hash.update((line + end).encode())
        return line

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def plan_digest(plan: Plan, in_order: bool = False) -> str:
    """The digest a plan document (`plan --out`, `plan --json`) carries. `in_order`: the
    changes as they stand (a plan read back from its document), else as plans show them."""
    digest = _Digest(PLAN_FORMAT, plan)
    for change in plan.changes if in_order else _ordered(plan):
        digest.add(change_line(change))
    for name, steps in sorted(plan.steps.items()):
        digest.add(_steps_line(name, steps))
    return digest.hexdigest()


def reference_digest(plan: Plan, in_order: bool = False) -> str:
    """The digest the workspace's latest-plan reference carries (`in_order`: as for
    plan_digest). Its rows are hashed as written: each row and a comma."""
    digest = _Digest(REFERENCE_FORMAT, plan)
    for change in plan.changes if in_order else _ordered(plan):
        digest.add(_reference_rows([change]), end=",")
    for name, steps in sorted(plan.steps.items()):
        digest.add(_steps_line(name, steps))
    return digest.hexdigest()


def plan_document(plan: Plan) -> dict[str, Any]:
    return {
        **_head(plan),
        "changes": [_change_document(c) for c in _ordered(plan)],
        "steps": {name: steps.to_json() for name, steps in sorted(plan.steps.items())},
        "warnings": plan.warnings,
        "summary": plan.summary(),
        "digest": plan_digest(plan),
    }


def iter_json(plan: Plan) -> Iterator[str]:
    """The plan document as text, piece by piece: one change and one node's steps per line.

    Equal, as JSON, to `plan_document(plan)`. Written in pieces with the C encoder, so a
    200-node plan (39,800 changes) is neither held twice in memory nor slowed by the pure
    Python encoder that `indent=` needs; one change per line also diffs well in review.
    """
    digest = _Digest(PLAN_FORMAT, plan)
    yield "{\n"
    for key, value in _head(plan).items():
        yield f"  {json.dumps(key)}: {dumps(value, sort_keys=True)},\n"
    yield '  "changes": ['
    separator = "\n    "
    for change in _ordered(plan):
        yield separator + digest.add(change_line(change))
        separator = ",\n    "
    yield "\n  ],\n" if separator != "\n    " else "],\n"
    yield '  "steps": {'
    separator = "\n    "
    for name, steps in sorted(plan.steps.items()):
        yield separator + digest.add(_steps_line(name, steps))
        separator = ",\n    "
    yield "\n  },\n" if separator != "\n    " else "},\n"
    yield f'  "warnings": {dumps(plan.warnings)},\n'
    yield f'  "summary": {dumps(plan.summary())},\n'
    yield f'  "digest": {json.dumps(digest.hexdigest())}\n'
    yield "}\n"


def to_json(plan: Plan) -> str:
    return "".join(iter_json(plan))


def write_plan(plan: Plan, path: Path) -> None:
    """Save the plan document, written piece by piece (a 1,000-node plan's document is
    most of a gigabyte: never held whole in memory)."""
    try:
        write_output(path, iter_json(plan), mode=0o600)
    except OSError as exc:
        raise WorkspaceError(f"{path}: cannot write the plan: {exc.strerror}") from None


#: A saved 1,000-node plan (999,000 changes) is about 0.9 GB; nothing bigger is read.
PLAN_MAX_BYTES = 2 * 1024**3


def read_plan(path: Path) -> Plan:
    """A saved plan, validated; a file that is not one is a clear error (one line naming
    the file; fsutil.read_json: a FIFO or a device is never opened for reading)."""
    try:
        doc = read_json(path, PLAN_MAX_BYTES)
    except UnreadableFile as exc:
        raise WorkspaceError(f"{path}: {exc.about('the plan')}") from None
    try:
        return plan_from_document(doc)
    except EditedPlan:
        raise WorkspaceError(
            f"{path}: the plan was edited after it was saved (its digest does not match what "
            "it says); nothing was applied: plan again and review it"
        ) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise WorkspaceError(f"{path}: not a lotdeploy plan ({scrub(str(exc))[:200]})") from None


def write_reference(plan: Plan, path: Path) -> None:
    """What `plan` keeps for a bare `apply`: the plan's identity, not its payloads.

    Apply re-plans anyway and applies the fresh plan only if it is this one (same site
    digest, state serial, nodes and changes); payloads and display attributes are not
    needed for that, and at 200 nodes they are most of the ~40 MB a full document takes.
    """
    try:
        atomic_write(path, reference_pieces(plan), mode=0o600)
    except OSError as exc:
        raise WorkspaceError(f"{path}: cannot write the plan: {exc.strerror}") from None


def reference_text(plan: Plan) -> str:
    """The reference document's text (what `reference_pieces` yields, joined)."""
    return "".join(reference_pieces(plan))


def reference_pieces(plan: Plan) -> Iterator[str]:
    """The reference document's text in pieces, one per node: `json.dumps(doc,
    separators=(",", ":"))` of the head and the changes as [key, action, reason]. The
    changes (999,000 at 1,000 nodes) are written with the C string encoder, five times
    faster than the encoder walking lists of lists, and never held as one list or one
    string (tests/test_fastpaths.py checks the bytes)."""
    digest = _Digest(REFERENCE_FORMAT, plan)
    doc = {**_head(plan), "format": REFERENCE_FORMAT, "changes": []}
    head = json.dumps(doc, separators=(",", ":"))
    # "changes" is the last key of the head: it ends with its empty list and the brace
    yield head[: -len("[]}")] + "["
    separator = ""
    for group in _groups(plan):
        yield separator + digest.add(_reference_rows(group), end=",")
        separator = ","
    steps = {}
    for name, node_steps in sorted(plan.steps.items()):
        digest.add(_steps_line(name, node_steps))
        steps[name] = node_steps.to_json()
    yield (
        "]," + json.dumps({"steps": steps, "digest": digest.hexdigest()}, separators=(",", ":"))[1:]
    )
    yield "\n"


def _reference_rows(changes: list[Change]) -> str:
    e = encode_basestring_ascii
    try:
        return ",".join([f"[{e(c.key)},{e(c.action)},{e(c.reason)}]" for c in changes])
    except TypeError:  # a value that is not a str: the encoder decides
        return ",".join(
            json.dumps([c.key, c.action, c.reason], separators=(",", ":")) for c in changes
        )


class EditedPlan(ValueError):
    """A plan document whose digest no longer matches what it says: edited after saving."""


def _steps(doc: Any) -> dict[str, NodeSteps]:
    return {
        str(name): NodeSteps(
            str(name),
            files=[str(f) for f in s["files"]],
            routes_remove=[str(r) for r in s["routes_remove"]],
            routes_add=[str(r) for r in s["routes_add"]],
            users_create=[str(u) for u in s["users_create"]],
            users_remove=[str(u) for u in s["users_remove"]],
            reload=bool(s["reload"]),
            files_remove=[[str(p), str(d)] for p, d in s.get("files_remove", [])],
            old_release_dir=None if s.get("old_release_dir") is None else str(s["old_release_dir"]),
            routes_replace={str(k): str(v) for k, v in dict(s.get("routes_replace", {})).items()},
            secrets_set=[str(x) for x in s.get("secrets_set", [])],
        )
        for name, s in dict(doc).items()
    }


def _checked(plan: Plan, doc: dict[str, Any], digest: Any) -> Plan:
    """`plan` (read from `doc`) if the digest it carries is the one of what it says."""
    stored = doc.get("digest")
    if not isinstance(stored, str) or len(stored) != 64:
        raise ValueError("it carries no digest (made by an older lotdeploy: plan again)")
    plan.digest = stored
    plan.document = "reference" if digest is reference_digest else "plan"
    if digest(plan, in_order=True) != stored:
        raise EditedPlan("its digest does not match what it says")
    return plan


def _reference(doc: dict[str, Any]) -> Plan:
    if doc.get("format_version") != PLAN_JSON_FORMAT:
        raise ValueError(f"unknown plan format version {doc.get('format_version')!r}")
    changes = []
    for key, action, reason in doc["changes"]:
        if action not in MARKERS:
            raise ValueError(f"unknown action {action!r}")
        kind, node, name = str(key).split("/", 2)
        changes.append(Change(action, kind, name, node or None, None, str(reason)))
    plan = Plan(
        site=str(doc["site"]),
        site_digest=str(doc["site_digest"]),
        node_count=int(doc["nodes"]),
        region_count=int(doc["regions"]),
        changes=changes,
        regions={str(k): str(v) for k, v in dict(doc["node_regions"]).items()},
        state_serial=int(doc["state_serial"]),
        site_file=str(doc.get("site_file", "")),
        only=None if doc.get("only") is None else [str(n) for n in doc["only"]],
        refreshed=bool(doc.get("refreshed", False)),
        drift={str(k): [str(x) for x in v] for k, v in dict(doc.get("drift", {})).items()},
        steps=_steps(doc.get("steps", {})),
        workspace_id=str(doc.get("workspace", "")),
    )
    return _checked(plan, doc, reference_digest)


def plan_from_document(doc: Any) -> Plan:
    if isinstance(doc, dict) and doc.get("format") == REFERENCE_FORMAT:
        return _reference(doc)
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise ValueError("no lotdeploy plan format marker")
    if doc.get("format_version") != PLAN_JSON_FORMAT:
        raise ValueError(f"unknown plan format version {doc.get('format_version')!r}")
    changes = [_change(c) for c in doc["changes"]]
    steps = _steps(doc["steps"])
    plan = Plan(
        site=str(doc["site"]),
        site_digest=str(doc["site_digest"]),
        node_count=int(doc["nodes"]),
        region_count=int(doc["regions"]),
        changes=changes,
        warnings=[str(w) for w in doc["warnings"]],
        regions={str(k): str(v) for k, v in dict(doc["node_regions"]).items()},
        state_serial=int(doc["state_serial"]),
        steps=steps,
        site_file=str(doc.get("site_file", "")),
        only=None if doc.get("only") is None else [str(n) for n in doc["only"]],
        refreshed=bool(doc.get("refreshed", False)),
        drift={str(k): [str(x) for x in v] for k, v in dict(doc.get("drift", {})).items()},
        workspace_id=str(doc.get("workspace", "")),
    )
    return _checked(plan, doc, plan_digest)


def _change(doc: dict[str, Any]) -> Change:
    action = doc["action"]
    if action not in MARKERS:
        raise ValueError(f"unknown action {action!r}")
    payload = doc.get("payload")
    route = None
    if payload is not None:
        if payload.get("type") != "route":
            raise ValueError("unknown payload type")
        route = DesiredRoute.from_attrs(payload)
        if payload["password"] != {"secret": route.password.name}:
            raise ValueError("route password reference does not match its version")
    change = Change(
        action=action,
        kind=str(doc["kind"]),
        name=str(doc["name"]),
        node=None if doc["node"] is None else str(doc["node"]),
        region=None if doc["region"] is None else str(doc["region"]),
        reason=str(doc["reason"]),
        attrs=tuple(
            Attr(str(name), v["after"], v["before"]) for name, v in dict(doc["attributes"]).items()
        ),
        payload=route,
    )
    if change.key != doc["key"]:
        raise ValueError(f"change key {doc['key']!r} does not match the change")
    return change

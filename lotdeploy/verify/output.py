"""What a verify result looks like outside the process: terminal text (tables and the latency
matrix grouped by region), the Prometheus textfile, and the last result kept in the
workspace (`.lotdeploy/verify/last.json`, for `plan`'s advice).

Builders here are pure (result in, text out); only `write_prometheus` and `save_last` touch
files, atomically. A result holds no secret (reasons are scrubbed when made); every text is
scrubbed once more on the way out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lotdeploy.broker.monitoring import from_payloads
from lotdeploy.fsutil import UnreadableFile, atomic_write, read_json, write_output
from lotdeploy.model import Site
from lotdeploy.secret import scrub
from lotdeploy.verify.result import (
    EXERCISE_KINDS,
    NODE_KINDS,
    Check,
    VerifyResult,
    link_subject,
)
from lotdeploy.workspace import Workspace

LAST_FILE = "last.json"
DASH = "·"


def regions(result: VerifyResult) -> dict[str, list[str]]:
    """region -> its node names, both sorted: the order every matrix and table uses."""
    found: dict[str, list[str]] = {}
    for info in sorted(result.nodes.values(), key=lambda n: (n.region, n.name)):
        found.setdefault(info.region, []).append(info.name)
    return found


def node_rows(result: VerifyResult) -> tuple[list[str], list[list[str]]]:
    """The node table: one row per checked node, a column per node check."""
    by = {(c.subject, c.kind): c for c in result.checks if c.link is None}
    header = ["node", "region", *NODE_KINDS]
    rows = []
    for name in sorted(result.checked, key=lambda n: (result.nodes[n].region, n)):
        row = [name, result.nodes[name].region]
        for kind in NODE_KINDS:
            check = by.get((name, kind))
            if check is None:
                row.append("-")
            elif kind == "tls" and check.days_left is not None:
                row.append(f"{check.status} ({check.days_left} d)")
            else:
                row.append(check.status)
        rows.append(row)
    return header, rows


def link_cell(result: VerifyResult, source: str, target: str) -> str:
    """One matrix cell: the median latency in ms, or why there is none."""
    if source == target:
        return DASH
    checks = [c for c in result.checks if c.subject == link_subject(source, target)]
    if not checks:
        return ""  # not probed (verify was limited to other nodes)
    link = next((c for c in checks if c.kind == "link"), None)
    ok = all(c.ok for c in checks)
    if link is None or link.latency_ms is None:
        return "FAIL" if not ok else "?"
    text = f"{link.latency_ms:.1f}"
    return text if ok else f"{text}!"


def matrix_lines(result: VerifyResult) -> list[str]:
    """The latency matrix, rows = from, columns = to, grouped by region."""
    groups = regions(result)
    order = [(r, n) for r, names in groups.items() for n in names]
    if len(order) < 2 or not result.link_checks():
        return []
    cells = {(s, t): link_cell(result, s, t) for _, s in order for _, t in order}
    width = max(6, *(len(c) for c in cells.values()), *(len(n) for _, n in order))
    rwidth = max(len(r) for r, _ in order)
    nwidth = max(len(n) for _, n in order)
    lead = " " * (rwidth + nwidth + 4)
    head_regions, head_nodes = lead, lead
    for region, names in groups.items():
        span = (width + 2) * len(names)
        head_regions += region.ljust(span)
        head_nodes += "".join(n.rjust(width) + "  " for n in names)
    lines = [head_regions.rstrip(), head_nodes.rstrip()]
    previous = None
    for region, source in order:
        label = region if region != previous else ""
        previous = region
        row = f"{label.ljust(rwidth)}  {source.ljust(nwidth)}  "
        row += "".join(cells[(source, t)].rjust(width) + "  " for _, t in order)
        lines.append(row.rstrip())
    return lines


def problem_lines(result: VerifyResult) -> list[str]:
    """Every check that did not pass (exercises have their own section)."""
    return [
        f"{c.subject}: {c.kind}: {c.status}: {c.reason}"
        for c in result.problems()
        if c.kind not in EXERCISE_KINDS
    ]


def exercise_lines(result: VerifyResult) -> list[str]:
    """The failover rehearsal's and the load probe's checks, passed or not."""
    checks = result.exercise_checks()
    if not checks:
        return []
    return [
        "",
        "Exercises (docs/verify.md):",
        *(f"  {c.subject}: {c.kind}: {c.status}: {c.reason}" for c in checks),
    ]


def summary_line(result: VerifyResult) -> str:
    counts = result.counts()
    links = len(result.link_checks())
    verdict = "all checks passed" if result.ok else "FAILED"
    return (
        f"Verify {verdict}: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['inconclusive']} inconclusive ({len(result.checked)} node(s), {links} link(s), "
        f"{result.seconds:.1f}s)."
    )


def terminal_text(result: VerifyResult) -> Iterator[str]:
    """Everything but the node table (which the CLI draws with its table printer)."""
    matrix = matrix_lines(result)
    if matrix:
        yield ""
        yield (
            f"latency, ms (median of {result.probes_per_link} probes; row: from, column: to; "
            "! = the link failed)"
        )
        yield from matrix
    yield from exercise_lines(result)
    problems = problem_lines(result)
    if problems:
        yield ""
        yield "Failed or inconclusive:"
        yield from (f"  {line}" for line in problems)
    if result.advice:
        yield ""
        yield "Message-validity advice (docs/verify.md):"
        yield from (f"  {a.message}" for a in result.advice)
    yield from monitoring_lines(result)
    yield ""
    yield summary_line(result)


def monitoring_lines(result: VerifyResult) -> Iterator[str]:
    """The cluster monitoring topics brokers published, as published: shown, never judged."""
    if not result.monitoring:
        return
    yield ""
    yield "Cluster monitoring topics, as each broker publishes them (informational, not checked):"
    for node, topics in sorted(result.monitoring.items()):
        for topic, text in sorted(topics.items()):
            yield f"  {node}: {topic}: {text}"


# -- Prometheus --------------------------------------------------------------------------


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(result: VerifyResult) -> str:
    """Prometheus text format for node_exporter's textfile collector: per link up and
    latency, per node certificate expiry and check status, and the run itself."""
    site = _label(result.site)
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{{{labels}}} {value:g}" for labels, value in samples)

    def link_labels(check: Check) -> str:
        pair = check.link
        assert pair is not None
        src, dst = result.nodes[pair[0]], result.nodes[pair[1]]
        return (
            f'site="{site}",source="{_label(src.name)}",target="{_label(dst.name)}",'
            f'source_region="{_label(src.region)}",target_region="{_label(dst.region)}"'
        )

    links = {c.subject: c for c in result.link_checks()}
    link_ok = {
        subject: all(c.ok for c in result.checks if c.subject == subject) for subject in links
    }
    metric(
        "lotdeploy_verify_link_up",
        "gauge",
        "1 if probes crossed the link exactly once and its route is connected.",
        [(link_labels(c), 1.0 if link_ok[s] else 0.0) for s, c in sorted(links.items())],
    )
    metric(
        "lotdeploy_verify_link_latency_seconds",
        "gauge",
        "Median one-way probe latency of the link.",
        [
            (link_labels(c), c.latency_ms / 1000)
            for _, c in sorted(links.items())
            if c.latency_ms is not None
        ],
    )
    metric(
        "lotdeploy_verify_link_probes_lost",
        "gauge",
        "Probes that never arrived.",
        [(link_labels(c), float(c.loss)) for _, c in sorted(links.items()) if c.loss is not None],
    )
    metric(
        "lotdeploy_verify_link_probes_duplicated",
        "gauge",
        "Extra deliveries of probes.",
        [
            (link_labels(c), float(c.duplicates))
            for _, c in sorted(links.items())
            if c.duplicates is not None
        ],
    )
    loads = sorted(
        (c for c in result.checks if c.kind == "load" and c.link), key=lambda c: c.subject
    )
    metric(
        "lotdeploy_verify_load_offered_per_second",
        "gauge",
        "Messages a second each node published in the load probe (verify --load).",
        [(link_labels(c), float(c.rate)) for c in loads if c.rate is not None],
    )
    metric(
        "lotdeploy_verify_load_throughput_per_second",
        "gauge",
        "Messages a second the link delivered under the load probe.",
        [(link_labels(c), float(c.throughput)) for c in loads if c.throughput is not None],
    )
    metric(
        "lotdeploy_verify_load_lost",
        "gauge",
        "Load probe messages that never arrived over the link.",
        [(link_labels(c), float(c.loss)) for c in loads if c.loss is not None],
    )
    metric(
        "lotdeploy_verify_load_duplicated",
        "gauge",
        "Extra deliveries of load probe messages over the link.",
        [(link_labels(c), float(c.duplicates)) for c in loads if c.duplicates is not None],
    )
    metric(
        "lotdeploy_verify_load_delay_seconds",
        "gauge",
        "Delay of load probe messages over the link (median, 95th percentile, maximum).",
        [
            (f'{link_labels(c)},quantile="{q}"', value / 1000)
            for c in loads
            for q, value in (("0.5", c.latency_ms), ("0.95", c.p95_ms), ("1", c.max_ms))
            if value is not None
        ],
    )
    metric(
        "lotdeploy_verify_exercise_ok",
        "gauge",
        "1 if the failover rehearsal's check passed (verify --failover).",
        [
            (f'site="{site}",node="{_label(c.subject)}",check="{c.kind}"', 1.0 if c.ok else 0.0)
            for c in result.exercise_checks()
            if c.kind != "load"
        ],
    )
    metric(
        "lotdeploy_verify_certificate_expiry_days",
        "gauge",
        "Days until the node's broker certificate expires (as served on its TLS port).",
        [
            (f'site="{site}",node="{_label(c.subject)}"', float(c.days_left))
            for c in result.checks
            if c.kind == "tls" and c.days_left is not None
        ],
    )
    metric(
        "lotdeploy_verify_check_ok",
        "gauge",
        "1 if the node check passed.",
        [
            (f'site="{site}",node="{_label(c.subject)}",check="{c.kind}"', 1.0 if c.ok else 0.0)
            for c in result.checks
            if c.link is None and c.kind not in EXERCISE_KINDS
        ],
    )
    monitored = {
        node: from_payloads({t: v.encode() for t, v in topics.items()})
        for node, topics in sorted(result.monitoring.items())
    }
    metric(
        "lotdeploy_verify_broker_cluster_topics",
        "gauge",
        "Cluster monitoring topics the node's broker published ($SYS/broker/cluster/#, "
        "$SYS/Coreflux/Cluster/#); 0: none (informational, never a check).",
        [
            (f'site="{site}",node="{_label(name)}"', float(len(result.monitoring.get(name, {}))))
            for name in sorted(result.checked)
        ],
    )
    metric(
        "lotdeploy_verify_broker_cluster_value",
        "gauge",
        "Each number or boolean in a cluster monitoring topic, as the broker published it.",
        [
            (
                f'site="{site}",node="{_label(node)}",topic="{_label(topic)}",'
                f'field="{_label(name)}"',
                value,
            )
            for node, topics in monitored.items()
            for topic, name, value in topics.samples()
        ],
    )
    metric(
        "lotdeploy_verify_broker_cluster_info",
        "gauge",
        "Each short text in a cluster monitoring topic (a status word, a role), as a label.",
        [
            (
                f'site="{site}",node="{_label(node)}",topic="{_label(topic)}",'
                f'field="{_label(name)}",value="{_label(text)}"',
                1.0,
            )
            for node, topics in monitored.items()
            for topic, name, text in topics.infos()
        ],
    )
    metric(
        "lotdeploy_verify_success",
        "gauge",
        "1 if every check of the last verify passed.",
        [(f'site="{site}"', 1.0 if result.ok else 0.0)],
    )
    metric(
        "lotdeploy_verify_duration_seconds",
        "gauge",
        "Wall time of the last verify.",
        [(f'site="{site}"', round(result.seconds, 3))],
    )
    metric(
        "lotdeploy_verify_last_run_timestamp_seconds",
        "gauge",
        "When the last verify started (Unix time).",
        [(f'site="{site}"', _unix(result.started_at))],
    )
    return scrub("\n".join(out) + "\n")


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def write_prometheus(result: VerifyResult, path: Path) -> None:
    """Atomically (the collector must never read half a file), mode 0644; a path the user
    names, so by fsutil.write_output's rules (a symlink is written through, never replaced)."""
    write_output(path, prometheus_text(result), mode=0o644)


# -- the last result, in the workspace ---------------------------------------------------


def last_path(workspace: Workspace) -> Path:
    return workspace.root / "verify" / LAST_FILE


def save_last(workspace: Workspace, result: VerifyResult) -> Path:
    path = last_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, scrub(json.dumps(result.to_json(), indent=1, sort_keys=True)) + "\n")
    return path


#: A 1,000-node verify records a million links: hundreds of MB. Nothing bigger is read.
LAST_MAX_BYTES = 1024 * 1024 * 1024


class LastUnreadable(Exception):
    """The last result is there but cannot be used; the text says why (one line)."""


def load_last(workspace: Workspace) -> VerifyResult | None:
    """The last saved result, None when there is none; LastUnreadable naming the file when
    it is there and cannot be read (fsutil.read_json: never a hang, never a traceback)."""
    path = last_path(workspace)
    try:
        doc = read_json(path, LAST_MAX_BYTES)
    except UnreadableFile as exc:
        if exc.missing:
            return None
        raise LastUnreadable(f"{path}: {exc.about('the last verify result')}") from None
    try:
        return VerifyResult.from_json(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LastUnreadable(
            f"{path}: the last verify result is damaged ({scrub(str(exc))[:200]})"
        ) from None


def plan_advice(site: Site, workspace: Workspace) -> list[str]:
    """The last verify's advice, for `plan`: every link it measured, judged against the
    validity the site gives the link *now* (a window raised since is no longer advised)."""
    from lotdeploy.verify.advice import advise

    try:
        last = load_last(workspace)
    except LastUnreadable as exc:  # advice only: say so, and plan as usual
        return [f"warning: {exc}; no validity advice (run lotdeploy verify again)"]
    if last is None or last.site != site.name:
        return []
    measured = last.latency()
    lines = []
    for link in site.links:
        latency = measured.get((link.source, link.target))
        if latency is None:
            continue
        found = advise(
            link.source,
            link.target,
            latency,
            link.message_validity_sec,
            last.reconnect_allowance,
        )
        if found is not None:
            lines.append(f"advice (verify {last.run_id}): {found.message}")
    return lines

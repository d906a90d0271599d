"""`verify --report FILE.html`: one self-contained HTML page a person would rather look at.

No script, no external resource (styles inline, the topology an inline SVG): the page opens
from a file, offline, in any browser, and renders the same everywhere. It shows the verdict
and the run's metadata, the nodes with their checks, the latency matrix as a heatmap grouped
by region, the topology by region (links drawn red where a direction failed), every check
that did not pass with its reason, and the message-validity advice. Every value is
HTML-escaped and the page is scrubbed of every known secret.
"""

from __future__ import annotations

import math
import platform
from html import escape

from lotdeploy import __version__
from lotdeploy.secret import scrub
from lotdeploy.verify.output import link_cell, node_rows, regions
from lotdeploy.verify.result import VerifyResult, link_subject

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.ok{background:#2e7d32}.bad{background:#c62828}
table{border-collapse:collapse}td,th{padding:4px 8px;border:1px solid #d8dce3;text-align:left}
th{background:#f3f5f8}.meta td{border:none;padding:1px 12px 1px 0}
.pass{color:#2e7d32}.fail{color:#c62828;font-weight:600}.inconclusive{color:#b26a00}
.heat td.cell{min-width:56px;text-align:center;font-variant-numeric:tabular-nums}
.heat td.self{background:#eceff3;color:#8a93a3}.heat td.failed{background:#7f1d1d;color:#fff}
.problems li{margin:3px 0}.problems code{background:#f3f5f8;padding:0 4px}
svg text{font:12px system-ui,sans-serif}
"""


def _status(status: str) -> str:
    return f'<span class="{escape(status)}">{escape(status)}</span>'


#: Latency (ms) at the hot end of the heatmap's scale (logarithmic from 0).
HEAT_TOP_MS = 300.0


def _heat_color(latency: float) -> str:
    """Green (0 ms) through yellow to orange (HEAT_TOP_MS and beyond), on a log scale:
    the same colour means the same latency in every report."""
    share = min(1.0, math.log1p(latency) / math.log1p(HEAT_TOP_MS))
    hue = round(120 - 95 * share)
    return f"hsl({hue},65%,78%)"


def _meta(result: VerifyResult) -> str:
    counts = result.counts()
    rows = [
        ("site", result.site),
        ("run", result.run_id),
        ("started", result.started_at),
        ("took", f"{result.seconds:.1f} s"),
        ("nodes checked", f"{len(result.checked)} of {len(result.nodes)}"),
        ("links probed", str(len(result.link_checks()))),
        (
            "checks",
            f"{counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['inconclusive']} inconclusive",
        ),
        ("probes", f"{result.probes_per_link} per link, QoS 1, timeout {result.timeout:g} s"),
        ("probe topics", f"{result.topic_prefix.rstrip('/')}/{result.run_id}/#"),
        ("made by", f"lotdeploy {__version__} on {platform.node() or 'this host'}"),
    ]
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _nodes(result: VerifyResult) -> str:
    header, rows = node_rows(result)
    head = "".join(f"<th>{escape(h)}</th>" for h in [*header[:2], "address", *header[2:]])
    lines = []
    for row in rows:
        name = row[0]
        cells = [escape(row[0]), escape(row[1]), escape(result.nodes[name].address)]
        for value in row[2:]:
            word = value.split(" ", 1)[0]
            cells.append(_status(word) + escape(value[len(word) :]) if word != "-" else "-")
        tds = "".join(f"<td>{c}</td>" for c in cells)
        lines.append(f'<tr data-node="{escape(name)}">{tds}</tr>')
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _heatmap(result: VerifyResult) -> str:
    groups = regions(result)
    order = [(r, n) for r, names in groups.items() for n in names]
    reasons = {
        c.subject: c.reason for c in reversed(result.checks) if c.link is not None and not c.ok
    }
    head1 = '<tr><th colspan="2" rowspan="2">from \\ to</th>' + "".join(
        f'<th colspan="{len(names)}">{escape(region)}</th>' for region, names in groups.items()
    )
    head2 = "<tr>" + "".join(f"<th>{escape(n)}</th>" for _, n in order) + "</tr>"
    rows = []
    previous = None
    for region, source in order:
        cells = []
        if region != previous:
            cells.append(f'<th rowspan="{len(groups[region])}">{escape(region)}</th>')
            previous = region
        cells.append(f"<th>{escape(source)}</th>")
        for _, target in order:
            text = link_cell(result, source, target)
            subject = link_subject(source, target)
            if source == target:
                cells.append('<td class="cell self">·</td>')
            elif text == "":
                cells.append('<td class="cell" title="not probed"></td>')
            elif subject in reasons:
                cells.append(
                    f'<td class="cell failed" data-link="{escape(subject)}" '
                    f'title="{escape(reasons[subject])}">{escape(text)}</td>'
                )
            else:
                latency = result.latency().get((source, target), 0.0)
                cells.append(
                    f'<td class="cell" data-link="{escape(subject)}" '
                    f'style="background:{_heat_color(latency)}" '
                    f'title="{escape(subject)}: {latency:g} ms">{escape(text)}</td>'
                )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="heat">{head1}</tr>{head2}{"".join(rows)}</table>'
        "<p>Median one-way latency in ms (rows: from, columns: to); dark red: the link failed "
        "(hover for the reason); ! after a figure: probes arrived but a check failed.</p>"
    )


def _topology(result: VerifyResult) -> str:
    """Regions as boxes side by side, nodes as circles in them, a line per node pair."""
    groups = regions(result)
    box_w, gap, node_r = 220, 40, 16
    rows = max((len(n) for n in groups.values()), default=1)
    height = 70 + rows * 70
    width = max(1, len(groups)) * (box_w + gap)
    where: dict[str, tuple[float, float]] = {}
    parts = []
    for index, (region, names) in enumerate(groups.items()):
        x0 = gap / 2 + index * (box_w + gap)
        parts.append(
            f'<rect x="{x0}" y="10" width="{box_w}" height="{height - 20}" rx="10" '
            f'fill="#f3f5f8" stroke="#c5ccd6"/>'
            f'<text x="{x0 + 12}" y="32" font-weight="bold">{escape(region)}</text>'
        )
        for k, name in enumerate(names):
            x = x0 + box_w / 2 + (35 if k % 2 else -35)
            where[name] = (x, 70 + k * 70)
    bad = {c.link for c in result.problems() if c.link is not None}
    probed = {c.link for c in result.checks if c.link is not None}
    lines = []
    names = sorted(where)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if (a, b) not in probed and (b, a) not in probed:
                continue
            failed = (a, b) in bad or (b, a) in bad
            (x1, y1), (x2, y2) = where[a], where[b]
            colour, w = ("#c62828", 2.5) if failed else ("#66a36b", 1.2)
            lines.append(
                f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
                f'stroke-width="{w}"><title>{escape(a)} ↔ {escape(b)}'
                f"{' (failed)' if failed else ''}</title></line>"
            )
    blamed = result.failed_nodes()
    circles = []
    for name, (x, y) in where.items():
        fill = "#c62828" if name in blamed else "#2e7d32"
        circles.append(
            f'<g data-node="{escape(name)}"><circle cx="{x}" cy="{y}" r="{node_r}" '
            f'fill="{fill}"/><text x="{x}" y="{y + node_r + 14}" text-anchor="middle">'
            f"{escape(name)}</text></g>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="topology by region">'
        f"{''.join(parts)}{''.join(lines)}{''.join(circles)}</svg>"
    )


def _problems(result: VerifyResult) -> str:
    problems = result.problems()
    if not problems:
        return "<p>None: every check passed.</p>"
    items = "".join(
        f'<li data-subject="{escape(c.subject)}"><code>{escape(c.subject)}</code> '
        f"{escape(c.kind)} {_status(c.status)}: {escape(c.reason)}</li>"
        for c in problems
    )
    return f'<ul class="problems">{items}</ul>'


def _advice(result: VerifyResult) -> str:
    if not result.advice:
        return "<p>Every probed link's MESSAGE_VALIDITY_SEC covers its measured latency.</p>"
    items = "".join(f"<li>{escape(a.message)}</li>" for a in result.advice)
    return f"<ul>{items}</ul>"


def html_report(result: VerifyResult) -> str:
    verdict = (
        '<span class="verdict ok">PASS</span>'
        if result.ok
        else '<span class="verdict bad">FAIL</span>'
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lotdeploy verify: {escape(result.site)} ({"pass" if result.ok else "fail"})</title>
<style>{_CSS}</style></head>
<body>
<h1>lotdeploy verify: site {escape(result.site)} {verdict}</h1>
{_meta(result)}
<h2>Failed and inconclusive checks</h2>
{_problems(result)}
<h2>Nodes</h2>
{_nodes(result)}
<h2>Latency matrix</h2>
{_heatmap(result)}
<h2>Topology by region</h2>
{_topology(result)}
<h2>Message-validity advice</h2>
{_advice(result)}
</body></html>
"""
    return scrub(page)

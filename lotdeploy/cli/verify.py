"""`lotdeploy verify`: prove every node and every link, show it, keep it (docs/verify.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lotdeploy.apply.engine import TransportFactory
    from lotdeploy.model import Site
    from lotdeploy.verify.run import Exercise

import click

from lotdeploy.cli.common import bind, load, node_sessions, open_workspace, workspace_option
from lotdeploy.cli.deploy import _options, limit_options, ssh_options
from lotdeploy.exitstatus import ExitStatus


@click.command()
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="The whole result as JSON on stdout.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.5, 300),
    default=5.0,
    show_default=True,
    help="Seconds a probe may take to arrive (also bounds each connect and handshake).",
)
@click.option(
    "--probes",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Probes per link; latency is their median.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a self-contained HTML report (heatmap, topology, every failure) here.",
)
@click.option(
    "--prometheus",
    "prometheus_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write per-link up/latency and certificate expiry for node_exporter's textfile "
    "collector (atomically).",
)
@click.option(
    "--topic-prefix",
    default="lotdeploy/probe/",
    show_default=True,
    help="Topic space of the probes (the run id follows).",
)
@click.option(
    "--reconnect-allowance",
    type=click.FloatRange(0, 3600),
    default=5.0,
    show_default=True,
    help="Seconds your brokers may wait before reconnecting a route (validity advice).",
)
@click.option(
    "--failover",
    "failover_node",
    metavar="NODE",
    help="After the probes, rehearse a failover: stop NODE's broker while messages flow, "
    "prove the others keep delivering, its clients move, and it catches up when back "
    "(lab only unless --confirm-site).",
)
@click.option(
    "--outage",
    type=click.FloatRange(1, 600),
    default=5.0,
    show_default=True,
    help="Seconds the failover keeps NODE's broker down (longer than the link's "
    "MESSAGE_VALIDITY_SEC to see old messages expire).",
)
@click.option(
    "--load",
    "load_rate",
    type=click.FloatRange(1, 5000),
    metavar="RATE",
    help="After the probes, a bounded load probe: every node publishes RATE messages a "
    "second; per link throughput, loss, duplicates, delay (lab and loopback only unless "
    "--confirm-site).",
)
@click.option(
    "--for",
    "load_seconds",
    type=click.FloatRange(1, 300),
    default=10.0,
    show_default=True,
    help="Seconds the load probe publishes.",
)
@click.option(
    "--confirm-site",
    metavar="NAME",
    help="Run --failover or --load on a site that is not a lab: give its name to confirm.",
)
@click.option(
    "--stop-command",
    default="systemctl stop coreflux-broker",
    show_default=True,
    help="--failover outside a lab: how to stop the broker on NODE (run over SSH).",
)
@click.option(
    "--start-command",
    default="systemctl start coreflux-broker",
    show_default=True,
    help="--failover outside a lab: how to start it again.",
)
@_options(limit_options + ssh_options)
def verify(
    site: Path,
    workspace_dir: Path | None,
    as_json: bool,
    timeout: float,
    probes: int,
    report_file: Path | None,
    prometheus_file: Path | None,
    topic_prefix: str,
    reconnect_allowance: float,
    failover_node: str | None,
    outage: float,
    load_rate: float | None,
    load_seconds: float,
    confirm_site: str | None,
    stop_command: str,
    start_command: str,
    limit: tuple[str, ...],
    exclude: tuple[str, ...],
    accept_new_host_keys: bool,
    parallelism: int,
) -> None:
    """Prove every node runs what was applied and every link carries messages.

    Per node: SSH, the release against state, a TLS handshake verifying the site CA and
    the node's names, the broker's routes. Per link (ordered pair): probes published on
    the source arrive on the target exactly once; latency, loss, duplicates. Exit 0 only
    when everything passed, 1 otherwise. With --limit, the chosen nodes' checks and every
    link into or out of them.

    --failover NODE and --load RATE add exercises after the probes (docs/verify.md).

    \b
    Example:
      lotdeploy verify site.yaml --report verify.html
    """
    from lotdeploy.cli.term import print_table
    from lotdeploy.errors import LotdeployError
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.selection import select_nodes
    from lotdeploy.verify import VerifyOptions, run_verify
    from lotdeploy.verify.output import (
        node_rows,
        save_last,
        terminal_text,
        write_prometheus,
    )
    from lotdeploy.verify.report import html_report

    if topic_prefix.strip("/") == "" or any(c in topic_prefix for c in "#+\0"):
        raise click.BadParameter("a topic prefix without wildcards", param_hint="--topic-prefix")
    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)
    bind(loaded, workspace)
    only = select_nodes(loaded.site, limit, exclude)
    transports = node_sessions(loaded.site, accept_new_host_keys)  # closed after the run
    exercises = _exercises(
        loaded.site,
        site,
        transports,
        failover_node,
        outage,
        load_rate,
        load_seconds,
        confirm_site,
        (stop_command, start_command),
        limited=only is not None,
    )
    options = VerifyOptions(
        timeout=timeout,
        probes=probes,
        topic_prefix=topic_prefix if topic_prefix.endswith("/") else topic_prefix + "/",
        parallelism=parallelism,
        reconnect_allowance=reconnect_allowance,
        exercises=exercises,
    )
    with transports:
        result = run_verify(
            loaded.site,
            workspace,
            transports,
            nodes=frozenset(only) if only is not None else None,
            options=options,
        )
    written: list[str] = []
    try:
        save_last(workspace, result)
        if report_file is not None:
            from lotdeploy.fsutil import write_output

            write_output(report_file, html_report(result))
            written.append(f"HTML report: {report_file.resolve()}")
        if prometheus_file is not None:
            write_prometheus(result, prometheus_file)
            written.append(f"Prometheus textfile: {prometheus_file.resolve()}")
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise LotdeployError(
            f"{where}cannot write the verify output: {exc.strerror or exc}"
        ) from None
    if as_json:
        click.echo(dumps(result.to_json()))
    else:
        click.echo(
            f"lotdeploy verify: site {result.site}, run {result.run_id} "
            f"({len(result.checked)} node(s), {len(result.link_checks())} link(s))"
        )
        click.echo("")
        header, rows = node_rows(result)
        if rows:
            print_table(header, rows)
        for line in terminal_text(result):
            click.echo(scrub(line))
        for line in written:
            click.echo(line)
    if not result.ok:
        sys.exit(ExitStatus.ERROR)


def _exercises(
    site: Site,
    site_file: Path,
    transports: TransportFactory,
    failover_node: str | None,
    outage: float,
    load_rate: float | None,
    load_seconds: float,
    confirm_site: str | None,
    commands: tuple[str, str],
    *,
    limited: bool,
) -> tuple[Exercise, ...]:
    """The exercises asked for, each refused (with the way to run it) where it may not run."""
    from lotdeploy.verify.failover import BrokerControl, FailoverPlan, FailoverRun
    from lotdeploy.verify.load import LoadPlan, LoadRun
    from lotdeploy.verify.rehearsal import (
        CommandControl,
        LabControl,
        lab_dir_of,
        require_allowed,
    )

    found: list[Exercise] = []
    if (failover_node or load_rate) and limited:
        raise click.UsageError("--failover and --load need every node: drop --limit/--exclude")
    if load_rate is not None:
        require_allowed("the load probe", site, site_file, ("lab", "loopback"), confirm_site)
        plan = LoadPlan(rate=load_rate, seconds=load_seconds)
        found.append(lambda ctx: LoadRun(plan, ctx).run())
    if failover_node is not None:
        if failover_node not in {n.name for n in site.nodes}:
            known = ", ".join(n.name for n in site.nodes)
            raise click.BadParameter(
                f"no node {failover_node!r} in the site (nodes: {known})", param_hint="--failover"
            )
        if len(site.nodes) < 2:
            raise click.BadParameter("a failover needs a second node", param_hint="--failover")
        require_allowed("a failover rehearsal", site, site_file, ("lab",), confirm_site)
        lab_dir = lab_dir_of(site, site_file)
        control: BrokerControl = (
            LabControl(lab_dir)
            if lab_dir is not None
            else CommandControl(site, transports, commands[0], commands[1])
        )
        failover = FailoverPlan(failover_node, outage=outage)
        found.append(lambda ctx: FailoverRun(failover, control, ctx).run())
    return tuple(found)

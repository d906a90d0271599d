"""`lotdeploy lab broker`: the click command over `lotdeploy.lab.broker.command`.

The broker (amqtt) is imported only when the command runs, so `--help` works without the
`lab` extra and a missing extra is the one clean message. SIGTERM/SIGINT stop it; SIGHUP
reloads TLS; once listening it prints `{"event": "ready", "port": ..., "tls_port": ...}`.
"""

from __future__ import annotations

from pathlib import Path

import click

from lotdeploy.lab.extras import require_lab_extra


@click.command("broker")
@click.option("--bind", required=True, help="Address to listen on (e.g. 127.0.0.2).")
@click.option(
    "--port",
    default=1883,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Plain MQTT port (0: pick a free one, reported on stdout).",
)
@click.option(
    "--tls-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="TLS MQTT port (needs --cert and --key; may appear later + SIGHUP).",
)
@click.option(
    "--tls-bind",
    default=None,
    help="Address of the TLS listener (default: --bind); e.g. plain on 127.0.0.1 for admin, "
    "TLS on the node address for peers.",
)
@click.option("--cert", type=click.Path(path_type=Path), help="Server certificate (PEM).")
@click.option("--key", type=click.Path(path_type=Path), help="Server private key (PEM).")
@click.option(
    "--ca",
    type=click.Path(path_type=Path),
    help="CA bundle used to verify peers of USE_TLS routes (default: system store).",
)
@click.option("--admin-user", default="root", show_default=True)
@click.option(
    "--admin-password-file",
    type=click.Path(path_type=Path),
    help="File holding the admin password (default: the vendor's 'coreflux').",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep routes, users and secrets here across restarts.",
)
@click.option("--node-name", default=None, help="Name used in logs and link announcements.")
@click.option("--allow-anonymous", is_flag=True, help="Accept clients without a user name.")
@click.option(
    "--status-interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds between route status publications.",
)
@click.option(
    "--max-packet-bytes",
    default=1024 * 1024,
    show_default=True,
    type=click.IntRange(1024),
    help="Largest MQTT packet a client may send.",
)
@click.option(
    "--link-backoff-max",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Longest wait between link reconnect attempts.",
)
@click.option(
    "--link-queue-max",
    default=10_000,
    show_default=True,
    type=click.IntRange(1),
    help="Messages queued per unreachable peer before the oldest are dropped.",
)
@click.option(
    "--replies",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="Reply form: json = 2.x JSON envelopes, text = 1.x plain-text lines.",
)
@click.option(
    "--echo-request-id/--no-echo-request-id",
    default=True,
    show_default=True,
    help="Echo a trailing -requestId in replies (2.x); off: strip it, never echo it.",
)
@click.option(
    "--readd",
    type=click.Choice(["reject", "overwrite"]),
    default="reject",
    show_default=True,
    help="Re-adding an existing route name: refuse with 'already exists', or replace it.",
)
@click.option(
    "--route-code-missing",
    default="",
    metavar="KEYS",
    help="Comma-separated optional CLUSTER_CONFIG keys this broker lacks (left out of "
    "-routeCode MQTT_CLUSTER and refused by -addRoute), e.g. USE_TLS.",
)
@click.option(
    "--verbs",
    type=click.Choice(["any", "exact"]),
    default="any",
    show_default=True,
    help="Verb spelling: any = any case and --kebab-case aliases (the vendor's docs); "
    "exact = only as spelled (-listRoutes).",
)
@click.option(
    "--cluster-topics",
    type=click.Choice(["none", "seed", "coreflux"]),
    default="none",
    show_default=True,
    help="Cluster monitoring topics: none, seed = $SYS/broker/cluster/{status,nodes,sync}, "
    "coreflux = $SYS/Coreflux/Cluster/{Role,IsLeader,Leader,Term,Members,Status}.",
)
@click.option(
    "--version-topic/--no-version-topic",
    default=True,
    show_default=True,
    help="Publish $SYS/Coreflux/Version (retained); off: an older build without it.",
)
@click.option(
    "--bad-login-code",
    type=click.Choice(["4", "5"]),
    default="4",
    show_default=True,
    help="CONNACK return code for a wrong user name or password.",
)
@click.option(
    "--secret-store/--no-secret-store",
    default=True,
    show_default=True,
    help="Offer -setSecret/-listSecrets; off: they answer Unknown command.",
)
@click.option(
    "--rights",
    type=click.Choice(["admin-only", "named"]),
    default="admin-only",
    show_default=True,
    help="admin-only: only the admin commands; named: -changeUserSettings and "
    "-listUserGroups exist (AllowedSystemConfiguration grants $SYS reads).",
)
@click.option(
    "--sys-readable/--no-sys-readable",
    default=False,
    show_default=True,
    help="Let every logged-in user subscribe to $SYS (route code and its passwords): a "
    "broker whose rights are set too wide.",
)
@click.option(
    "--plain-links",
    is_flag=True,
    help="Also listen for plain MQTT on the TLS address (--tls-bind), port --port: peers "
    "and clients of a cluster that runs plain-text links, as hand-made ones do.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def broker(
    bind: str,
    port: int,
    tls_port: int | None,
    tls_bind: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    admin_user: str,
    admin_password_file: Path | None,
    state_dir: Path | None,
    node_name: str | None,
    allow_anonymous: bool,
    status_interval: float,
    max_packet_bytes: int,
    link_backoff_max: float,
    link_queue_max: int,
    replies: str,
    echo_request_id: bool,
    readd: str,
    route_code_missing: str,
    verbs: str,
    cluster_topics: str,
    version_topic: bool,
    bad_login_code: str,
    secret_store: bool,
    rights: str,
    sys_readable: bool,
    plain_links: bool,
    log_level: str,
) -> None:
    """Run one Coreflux-compatible lab broker in the foreground.

    SIGTERM stops it cleanly; SIGHUP reloads the TLS files (and opens the TLS listener once
    they exist). What it emulates, and every choice made where the vendor's behaviour is
    unknown: docs/lab-broker.md.

    \b
    Example:
      lotdeploy lab broker --bind 127.0.0.5 --tls-port 8883 --cert server.crt \\
          --key server.key --ca ca.crt --admin-password-file admin.pw --state-dir state/
    """
    if tls_port is not None and not (cert and key):
        raise click.UsageError("--tls-port needs --cert and --key")
    require_lab_extra()
    from lotdeploy.lab.broker.command import read_admin_password, run_broker, setup_logging
    from lotdeploy.lab.broker.dialect import dialect_from_options
    from lotdeploy.lab.broker.server import LabConfig

    dialect = dialect_from_options(
        replies,
        echo_request_id,
        readd,
        route_code_missing,
        verbs=verbs,
        cluster_topics=cluster_topics,
        version_topic=version_topic,
        bad_login_code=int(bad_login_code),
        secret_store=secret_store,
        rights=rights,
        sys_readable=sys_readable,
    )

    setup_logging(log_level)
    config = LabConfig(
        bind=bind,
        port=port,
        tls_port=tls_port,
        tls_bind=tls_bind,
        cert=cert,
        key=key,
        ca=ca,
        admin_user=admin_user,
        admin_password=read_admin_password(admin_password_file),
        state_dir=state_dir,
        node_name=node_name,
        allow_anonymous=allow_anonymous,
        status_interval=status_interval,
        max_packet_bytes=max_packet_bytes,
        link_backoff_max=link_backoff_max,
        link_queue_max=link_queue_max,
        dialect=dialect,
        plain_links=plain_links,
    )
    run_broker(config)
